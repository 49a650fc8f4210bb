"""docs/configuration.md lists exactly the keys the parser accepts, and its examples load.

The key paths come from the parser itself: ``parse.key_paths()`` walks the same Schema
tables that ``Context.fields`` checks every mapping against (an unknown key is an error
there). So adding a key to a schema without a row in the doc fails here, and so does a row
for a key the parser would reject.
"""

from __future__ import annotations

import re
from pathlib import Path

from pyproxy.config import parse
from pyproxy.config.load import load_config

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"

# A table row whose first cell is one key path in backticks: | `routes[].retries.attempts` |
_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.MULTILINE)


def documented_keys() -> list[str]:
    return _ROW.findall(DOC.read_text())


def test_every_key_the_parser_accepts_is_documented() -> None:
    missing = [path for path in parse.key_paths() if path not in set(documented_keys())]
    assert missing == [], ("keys the parser accepts but docs/configuration.md does not "
                           "list (add a table row for each):\n" + "\n".join(missing))


def test_the_doc_lists_no_key_the_parser_rejects() -> None:
    accepted = set(parse.key_paths())
    unknown = [path for path in documented_keys() if path not in accepted]
    assert unknown == [], "docs/configuration.md lists keys the parser rejects:\n" + "\n".join(
        unknown)


def test_each_key_is_documented_once() -> None:
    keys = documented_keys()
    assert sorted({key for key in keys if keys.count(key) > 1}) == []


def test_key_paths_reach_every_schema_of_the_parser() -> None:
    """A Schema the parser uses but key_paths cannot reach (a reader that calls
    ctx.fields without registering its Schema) would hide its keys from this test."""
    reachable: set[int] = set()

    def walk(shape: object) -> None:
        if isinstance(shape, parse.Schema):
            if id(shape) in reachable:
                return
            reachable.add(id(shape))
            for reader in shape.keys.values():
                if reader in parse._SHAPES:
                    walk(parse._SHAPES[reader])
        elif isinstance(shape, (parse._ListShape, parse._MapShape)):
            reader = shape.item if isinstance(shape, parse._ListShape) else shape.value
            if reader in parse._SHAPES:
                walk(parse._SHAPES[reader])

    walk(parse.TOP_LEVEL)
    declared = [shape for shape in [*vars(parse).values(), *parse._SHAPES.values()]
                if isinstance(shape, parse.Schema)]
    assert all(id(schema) in reachable for schema in declared)


def test_the_examples_form_one_valid_config(tmp_path: Path) -> None:
    """Every YAML example of the page, together, is a config that loads without warnings
    (they were written as parts of one: the routes name the services' subsets)."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) >= 5
    path = tmp_path / "examples.yaml"
    path.write_text("\n---\n".join(blocks))
    loaded = load_config([str(path)], env={})
    assert loaded.warnings == ()
    assert [route.name for route in loaded.config.routes] == [
        "testers", "stockmanager", "old-site", "maintenance"]
