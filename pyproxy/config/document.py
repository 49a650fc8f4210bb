"""The config as read from files, before it is checked: documents and located issues.

``config.load`` turns YAML text into :class:`Document` values (plain dicts, lists and
scalars, plus the line of each key path); ``config.parse`` (native blocks) and
``config.compat`` (mesh manifests) read them and report each problem as a
:class:`ConfigIssue` that says ``file:line: key.path: what is wrong``. Both sides import
this module and neither imports the other; ``config.assemble`` is where they meet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ConfigInvalid",
    "ConfigIssue",
    "Document",
    "Severity",
    "describe",
    "item_path",
    "key_path",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in the config, located by file, line and key path."""

    file: str
    line: int | None
    path: str  # key path such as "routes[0].backends[1].weight"; "" for the file as a whole
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: warning: {what}" if self.severity == "warning" else f"{where}: {what}"


class ConfigInvalid(Exception):
    """The config has errors: ``issues`` holds all of them, ``warnings`` any warnings."""

    def __init__(self, issues: Iterable[ConfigIssue], warnings: Iterable[ConfigIssue] = ()):
        self.issues = tuple(issues)
        self.warnings = tuple(warnings)
        super().__init__("\n".join(str(issue) for issue in self.issues))


def key_path(parent: str, key: object) -> str:
    """The path of ``key`` inside the mapping at ``parent``: ``routes[0].name``."""
    return f"{parent}.{key}" if parent else str(key)


def item_path(parent: str, index: int) -> str:
    """The path of item ``index`` of the list at ``parent``: ``routes[0]``."""
    return f"{parent}[{index}]"


@dataclass(frozen=True)
class Document:
    """One YAML document as plain values, with the line of each key path (for messages)."""

    source: str  # the file it came from
    # Whatever the YAML held: a mapping for any usable document, but the readers check that
    # themselves, so the type says what it really is (untrusted plain values).
    value: Any
    lines: Mapping[str, int] = field(default_factory=dict)

    def line(self, path: str) -> int | None:
        """The line of ``path``, else of its nearest ancestor that has one."""
        while path not in self.lines:
            if not path:
                return None
            cut = path.rfind("[") if path.endswith("]") else path.rfind(".")
            path = path[:max(cut, 0)]
        return self.lines[path]

    def issue(self, path: str, message: str, severity: Severity = "error") -> ConfigIssue:
        """An issue about ``path`` in this document, with its line."""
        return ConfigIssue(self.source, self.line(path), path, message, severity)


def describe(value: object) -> str:
    """A value as the user wrote it, for "got ..." in messages (one wording everywhere)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"a {type(value).__name__}"  # YAML timestamps and binary
