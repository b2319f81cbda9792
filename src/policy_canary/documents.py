"""Strict YAML/JSON loading with locations: duplicate keys refused, errors carry line:column.

Both spec files and plan files go through here, so a user gets the same precise message
("plan.yaml:12:5: duplicate key 'traffic'") whatever they load.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from policy_canary.errors import InputError

#: Upper bound on nodes materialised from one document (stops alias "billion laughs" bombs).
MAX_NODES = 500_000

_CORE = "tag:yaml.org,2002:"
#: The YAML tags a document may carry (explicitly or by resolution): plain JSON-like data.
#: Anything else (``!!python/object/apply:...``, ``!!set``, ``!!binary``, ``!custom``) is
#: refused rather than silently dropped or turned into something JSON cannot hold.
ALLOWED_TAGS = frozenset(
    _CORE + name for name in ("map", "seq", "str", "int", "float", "bool", "null", "timestamp")
)

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
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        raise error(_unprintable(text, exc, source)) from None
    except yaml.YAMLError as exc:
        raise error(f"{source}: malformed YAML: {exc}") from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise error(_too_deep(source)) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
            raise error(f"{where}: malformed YAML: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise error(f"{source}: malformed YAML: {exc}") from None
        if node is None:
            raise error(f"{source}: the file is empty; expected a mapping of keys to values")
        walker = _Walker(loader, source, error)
        try:
            value = walker.walk(node, ())
        except RecursionError:
            raise error(_too_deep(source)) from None
        return Loaded(value=value, source=source, marks=walker.marks)
    finally:
        loader.dispose()


def _too_deep(source: str) -> str:
    return f"{source}: nested too deeply to read; flatten the document"


def _unprintable(text: str, exc: yaml.reader.ReaderError, source: str) -> str:
    """A located message for a character YAML refuses outright (NUL and other controls)."""
    before = text[: exc.position]
    line = before.count("\n") + 1
    column = exc.position - (before.rfind("\n") + 1) + 1
    char = exc.character if isinstance(exc.character, str) else chr(exc.character)
    return (
        f"{source}:{line}:{column}: the control character {char!r} is not allowed in YAML; "
        "remove it (inside a double-quoted string write it as an escape, e.g. \\x00)"
    )


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
        self._check_tag(node)
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

    def _check_tag(self, node: yaml.Node) -> None:
        if node.tag not in ALLOWED_TAGS:
            tag = node.tag.removeprefix(_CORE)
            shown = f"!!{tag}" if tag != node.tag else tag
            raise self.error(
                f"{self._where(node)}: YAML tag {shown!r} is not allowed; write plain "
                "mappings, lists, strings, numbers, booleans and nulls (quote the text if "
                "it is meant literally)"
            )

    def _scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(f"{self._where(node)}: a key must be a plain scalar")
        self._check_tag(node)
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            raise self.error(f"{self._where(node)}: {exc}") from None
        except ValueError as exc:  # e.g. an integer past Python's 4,300-digit limit
            raise self.error(f"{self._where(node)}: cannot read this number ({exc})") from None


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
    except ValueError as exc:  # e.g. an integer past Python's 4,300-digit limit
        raise error(f"{source}: cannot read a number ({exc})") from None
    except RecursionError:
        raise error(_too_deep(source)) from None


def read_text(
    path: pathlib.Path,
    *,
    limit: int,
    what: str,
    error: type[InputError] = InputError,
    hint: str = "",
) -> str:
    """Read ``path`` as UTF-8 text of at most ``limit`` bytes, or raise ``error`` saying why.

    ``what`` names the kind of file in messages ("spec file", "plan file" ...); ``hint`` is
    appended to the too-large message (e.g. which setting raises the limit).
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such file; check the path of the {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder; give a {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read this {what} ({exc.strerror or exc})") from None
    if len(raw) > limit:
        raise error(f"{path}: the {what} is larger than {limit:,} bytes, the most accepted" + hint)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: not UTF-8 text (byte {exc.start}); save the {what} as UTF-8"
        ) from None


def write_text(path: pathlib.Path, text: str, *, what: str) -> None:
    """Write ``text`` as UTF-8 to ``path``; what the OS refuses is a clear :class:`InputError`."""
    if path.is_dir():
        raise InputError(
            f"{path}: is a folder; give the {what} a file name, e.g. {path / 'x.json'}"
        )
    if not path.parent.is_dir():
        raise InputError(
            f"cannot write the {what} to {path}: folder {str(path.parent)!r} does not exist; "
            "create it first"
        )
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write the {what} to {path}: {exc.strerror or exc}") from None
