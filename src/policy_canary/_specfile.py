"""Reading policy specs from files, and the portable export format of a version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from policy_canary._yaml import load_document
from policy_canary.canonical import canonical_json
from policy_canary.errors import InputError, InvalidSpecError

#: Identifies an exported version file; bump the suffix on an incompatible change.
EXPORT_FORMAT = "policy-canary.version/1"


def read_text(path: Path, *, max_bytes: int, what: str = "spec") -> str:
    """Read a UTF-8 file, refusing missing, oversized or non-text files with a clear message."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InvalidSpecError(f"{path}: no such file") from None
    except OSError as exc:
        raise InvalidSpecError(f"{path}: cannot read it ({exc.strerror})") from None
    # Text may shrink when canonicalised, so allow some slack before refusing unread.
    if size > 4 * max_bytes:
        raise InvalidSpecError(
            f"{path}: the file is {size:,} bytes; a {what} may be at most {max_bytes:,} bytes"
        )
    if path.is_dir():
        raise InvalidSpecError(f"{path}: is a folder; give a YAML or JSON file")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSpecError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the {what} as UTF-8"
        ) from None


def parse_spec(text: str, *, source: str, fmt: str | None = None) -> dict[str, Any]:
    """Parse a spec from YAML or JSON text; the top level must be an object."""
    loaded = load_document(text, source=source, error=InvalidSpecError, fmt=fmt)
    if not isinstance(loaded.value, dict):
        kind = "a list" if isinstance(loaded.value, list) else f"{type(loaded.value).__name__}"
        raise InvalidSpecError(
            f"{source}: the top level is {kind}; a policy spec must be a mapping "
            "(e.g. 'prompt: ...', 'tools: [...]')"
        )
    return loaded.value


def load_spec_file(path: Path, *, max_bytes: int) -> dict[str, Any]:
    """Load a spec from a ``.json``, ``.yaml`` or ``.yml`` file."""
    text = read_text(path, max_bytes=max_bytes)
    fmt = "json" if path.suffix.lower() == ".json" else None
    spec = parse_spec(text, source=str(path), fmt=fmt)
    canonical_json(spec)  # validate now so the error names the file's path
    return spec


def write_text(path: Path, text: str, *, what: str) -> None:
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


def dump_export(data: dict[str, Any]) -> str:
    """Render an export document as stable, human-readable JSON."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
