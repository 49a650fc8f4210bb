"""The README's layout section names every top-level module and folder of the package, so a
newcomer reading it finds every part of the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```\n(pyproxy/\n.*?)```", section, re.S)
    assert match, "README.md's Layout section has no pyproxy/ tree"
    return match.group(1)


def _top_level() -> list[str]:
    names = []
    for path in sorted((ROOT / "pyproxy").iterdir()):
        if path.name.startswith(("_", ".")) and path.name != "__main__.py":
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            names.append(path.name + "/")
        elif path.suffix == ".py":
            names.append(path.name)
    return names


def test_the_readme_layout_names_every_top_level_module_and_folder():
    block = _layout_block()
    missing = [name for name in _top_level()
               if not re.search(rf"(?<![\w/]){re.escape(name)}", block)]
    assert missing == [], f"add these to README.md's Layout section: {missing}"
