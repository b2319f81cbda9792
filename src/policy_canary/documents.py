"""Strict YAML/JSON loading with locations: duplicate keys refused, errors carry line:column.

Both spec files and plan files go through here, so a user gets the same precise message
("plan.yaml:12:5: duplicate key 'traffic'") whatever they load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from policy_canary.errors import InputError

#: Upper bound on nodes materialised from one document (stops alias "billion laughs" bombs).
MAX_NODES = 500_000

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Loaded:
    """A loaded document and the 1-based (line, column) where each value starts."""

    value: Any
    source: str
    marks: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path) -> str:
        """Return ``source:line:column`` for ``path``, or its nearest located ancestor."""
        while path:
            if path in self.marks:
                line, col = self.marks[path]
                return f"{self.source}:{line}:{col}"
            path = path[:-1]
        line, col = self.marks.get((), (1, 1))
        return f"{self.source}:{line}:{col}"


def load_document(
    text: str, *, source: str, error: type[InputError] = InputError, fmt: str | None = None
) -> Loaded:
    """Parse YAML (or JSON when ``fmt == "json"``) strictly, raising ``error`` with a location."""
    if fmt == "json":
        return Loaded(value=_load_json(text, source=source, error=error), source=source)
    try:
        loader = yaml.SafeLoader(text)  # refuses unprintable characters here already
    except yaml.YAMLError as exc:
        raise error(f"{source}: malformed YAML: {exc}") from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
            raise error(f"{where}: malformed YAML: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise error(f"{source}: malformed YAML: {exc}") from None
        if node is None:
            raise error(f"{source}: the file is empty; expected a mapping of keys to values")
        walker = _Walker(loader, source, error)
        value = walker.walk(node, ())
        return Loaded(value=value, source=source, marks=walker.marks)
    finally:
        loader.dispose()


class _Walker:
    def __init__(self, loader: yaml.SafeLoader, source: str, error: type[InputError]) -> None:
        self.loader = loader
        self.source = source
        self.error = error
        self.marks: dict[Path, tuple[int, int]] = {}
        self.count = 0

    def _where(self, node: yaml.Node) -> str:
        return f"{self.source}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"

    def walk(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.error(f"{self.source}: more than {MAX_NODES} values (alias expansion?)")
        self.marks.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolve YAML merge keys (<<) first
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node)
                if not isinstance(key, str):
                    raise self.error(
                        f"{self._where(key_node)}: key {key!r} is not a string; quote it"
                    )
                if key in result:
                    raise self.error(f"{self._where(key_node)}: duplicate key {key!r}")
                result[key] = self.walk(value_node, (*path, key))
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(f"{self._where(node)}: a key must be a plain scalar")
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.error(f"{self._where(node)}: {exc}") from None


def _load_json(text: str, *, source: str, error: type[InputError]) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise error(f"{source}: duplicate key {key!r}")
            result[key] = value
        return result

    def constant(name: str) -> Any:
        raise error(f"{source}: {name} is not allowed; JSON has no NaN or Infinity")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise error(f"{source}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from None
    except RecursionError:
        raise error(f"{source}: nested too deeply") from None
