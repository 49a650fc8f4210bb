"""Read config files: YAML text → :class:`~pyproxy.config.document.Document` values → the model.

The only module that imports ``yaml``. A path is a file, or a directory whose ``*.yaml`` and
``*.yml`` files are read in name order; every document of every file counts. YAML is
*composed* rather than loaded so each key and list item keeps its line, and every message
can say ``file:line: key.path: what is wrong``.

Problems are reported in two rounds: first everything that keeps a file from being read
(missing paths, YAML syntax, duplicate keys) for all files at once, then, when all files
read cleanly, every problem with their content (``config.assemble``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pyproxy.config.assemble import assemble
from pyproxy.config.document import ConfigInvalid, ConfigIssue, Document, item_path, key_path
from pyproxy.config.model import Config

__all__ = ["ConfigInvalid", "ConfigIssue", "LoadedConfig", "config_files", "load_config",
           "read_documents"]

_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class LoadedConfig:
    """A valid config and where it came from."""

    config: Config
    warnings: tuple[ConfigIssue, ...]
    files: tuple[str, ...]  # the files read, in the order they were merged
    # sha256 over the files' names and bytes: a reload that finds the same digest can be
    # skipped. The environment is not part of it (a process's environment does not change).
    digest: str


def load_config(paths: Sequence[str], env: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read, merge and check the config at ``paths``; ``env`` defaults to ``os.environ``.

    Raises ConfigInvalid with every error found.
    """
    files, documents, digest = read_documents(paths)
    config, warnings = assemble(documents, os.environ if env is None else env)
    return LoadedConfig(config, warnings, tuple(files), digest)


def read_documents(paths: Sequence[str]) -> tuple[list[str], list[Document], str]:
    """The files ``paths`` name and every YAML document in them, with line numbers, and the
    digest of their bytes. Raises ConfigInvalid with every file-level problem at once."""
    files, issues = config_files(paths)
    documents: list[Document] = []
    digest = hashlib.sha256()
    for file in files:
        try:
            data = Path(file).read_bytes()
        except OSError as problem:
            issues.append(ConfigIssue(file, None, "", f"cannot be read: {problem.strerror}"))
            continue
        digest.update(f"{file}\0{len(data)}\0".encode())
        digest.update(data)
        found, problems = _documents(file, data)
        documents += found
        issues += problems
    if issues:
        raise ConfigInvalid(issues)
    return files, documents, digest.hexdigest()


def config_files(paths: Sequence[str]) -> tuple[list[str], list[ConfigIssue]]:
    """The files ``paths`` name, directories expanded; each file once."""
    files: list[str] = []
    issues: list[ConfigIssue] = []
    seen: set[str] = set()
    for given in paths:
        path = Path(given)
        try:
            if path.is_dir():
                # Dotfiles are skipped: editors' lock and backup files can end in .yaml too.
                found = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES
                               and not p.name.startswith(".") and p.is_file())
                if not found:
                    issues.append(ConfigIssue(given, None, "", "no *.yaml or *.yml files in "
                                                               "this directory"))
            elif path.exists():
                found = [path]
            else:
                issues.append(ConfigIssue(given, None, "", "no such file or directory"))
                continue
        except OSError as problem:
            issues.append(ConfigIssue(given, None, "", f"cannot be read: {problem.strerror}"))
            continue
        for file in found:
            real = os.path.realpath(file)
            if real not in seen:  # a file given on its own and through its directory
                seen.add(real)
                files.append(str(file))
    return files, issues


def _documents(file: str, data: bytes) -> tuple[list[Document], list[ConfigIssue]]:
    """Every YAML document of one file, or the reasons it cannot be read."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        line = data.count(b"\n", 0, problem.start) + 1
        return [], [ConfigIssue(file, line, "", "is not UTF-8 text")]
    documents: list[Document] = []
    issues: list[ConfigIssue] = []
    try:
        for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
            converter = _Converter(file)
            value = converter.value(node, "")
            documents.append(Document(file, value, converter.lines))
            issues += converter.issues
    except yaml.YAMLError as problem:
        issues.append(_syntax_issue(file, text, problem))
    except RecursionError:
        # PyYAML composes recursively; so does a merge key ('<<') that refers to itself.
        issues.append(ConfigIssue(file, None, "", "is nested too deeply (or a '<<' merge "
                                                  "refers to itself)"))
    return documents, issues


def _syntax_issue(file: str, text: str, problem: yaml.YAMLError) -> ConfigIssue:
    if isinstance(problem, yaml.MarkedYAMLError):
        message = f"invalid YAML: {problem.problem}"
        if problem.context:
            mark = problem.context_mark
            message += f" ({problem.context}{f' at line {mark.line + 1}' if mark else ''})"
        mark = problem.problem_mark or problem.context_mark
        return ConfigIssue(file, mark.line + 1 if mark else None, "", message)
    if isinstance(problem, yaml.reader.ReaderError):
        line = text.count("\n", 0, problem.position) + 1
        return ConfigIssue(file, line, "", f"invalid YAML: character {chr(problem.character)!r} "
                                           "is not allowed")
    return ConfigIssue(file, None, "", f"invalid YAML: {problem}")


class _Converter:
    """Composed YAML nodes → plain values, remembering the line of each key path.

    Besides what PyYAML's safe loader checks, it refuses duplicate keys (the loader silently
    keeps the last one) and non-scalar keys. An alias yields the value already built for its
    anchor, so the cost stays linear however often an anchor is reused.
    """

    def __init__(self, file: str):
        self.file = file
        self.lines: dict[str, int] = {}
        self.issues: list[ConfigIssue] = []
        self._constructor = yaml.constructor.SafeConstructor()
        self._built: dict[yaml.Node, Any] = {}
        self._building: set[yaml.Node] = set()

    def value(self, node: yaml.Node, path: str) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if node in self._built:
            return self._built[node]
        if node in self._building:
            self._issue(node, path, "an alias refers to a mapping or list that contains it")
            return None
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if node.tag not in ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"):
            self._issue(node, path, f"YAML tag {node.tag} is not supported here")
            return None
        self._building.add(node)
        if isinstance(node, yaml.MappingNode):
            result: Any = self._mapping(node, path)
        else:
            result = [self.value(item, item_path(path, index))
                      for index, item in enumerate(node.value)]
        self._building.discard(node)
        self._built[node] = result
        return result

    def _scalar(self, node: yaml.ScalarNode, path: str) -> Any:
        try:
            return self._constructor.construct_object(node)
        except yaml.MarkedYAMLError as problem:  # an unknown tag
            message = str(problem.problem)
        except Exception:
            kind = node.tag.rsplit(":", 1)[-1]
            message = f"{node.value!r} is not a valid {kind} (quote it if you mean text)"
        self._issue(node, path, message)
        return None

    def _mapping(self, node: yaml.MappingNode, path: str) -> dict[Any, Any]:
        own = {id(key_node) for key_node, _ in node.value}
        # Resolves '<<' merge keys as the loader does: merged entries come first, so the
        # mapping's own keys override them. Only a key written twice is a mistake.
        self._constructor.flatten_mapping(node)
        result: dict[Any, Any] = {}
        own_lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._issue(key_node, path, "keys must be plain strings, not lists or mappings")
                continue
            key = self._scalar(key_node, path)
            child = key_path(path, key)
            line = key_node.start_mark.line + 1
            if id(key_node) in own:
                if key in own_lines:
                    self._issue(key_node, child, f"duplicate key {key!r} (first at line "
                                                 f"{own_lines[key]})")
                    continue
                own_lines[key] = line
            self.lines[child] = line
            result[key] = self.value(value_node, child)
        return result

    def _issue(self, node: yaml.Node, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, node.start_mark.line + 1, path, message))
