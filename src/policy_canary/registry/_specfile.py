"""Reading policy specs from files, and the portable export format of a version."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from policy_canary.canonical import canonical_json
from policy_canary.documents import load_document, read_text
from policy_canary.errors import InvalidSpecError

#: Identifies an exported version file; bump the suffix on an incompatible change.
EXPORT_FORMAT = "policy-canary.version/1"
#: Fields of an export document; ``spec`` and ``id`` are verified, the rest is provenance.
EXPORT_FIELDS = (
    "format", "policy", "id", "number", "parent_id", "author", "message", "created_at", "spec",
)  # fmt: skip
#: Largest version number (the store's INTEGER column).
MAX_VERSION_NUMBER = 2**31 - 1
_DIGEST = re.compile(r"[0-9a-f]{64}")


def read_spec_text(path: Path, *, max_bytes: int, what: str = "spec") -> str:
    """Read a spec (or export) file, allowing 4x ``max_bytes`` of text before canonicalising."""
    # Text may shrink when canonicalised (indentation, comments), so allow some slack here;
    # the canonical size is checked against ``max_bytes`` itself when the spec is registered.
    return read_text(
        path,
        limit=4 * max_bytes,
        what=f"{what} file",
        error=InvalidSpecError,
        hint=" (4 x POLICY_CANARY_MAX_SPEC_BYTES)",
    )


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
    text = read_spec_text(path, max_bytes=max_bytes)
    fmt = "json" if path.suffix.lower() == ".json" else None
    spec = parse_spec(text, source=str(path), fmt=fmt)
    canonical_json(spec)  # validate now so the error names the file's path
    return spec


def dump_export(data: dict[str, Any]) -> str:
    """Render an export document as stable, human-readable JSON."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def check_export(document: Mapping[str, Any], *, source: str) -> None:
    """Refuse an export document with unknown fields or a field of the wrong type.

    Only ``spec`` is covered by the digest ``id``; the other fields describe the version in
    the store it came from (an import numbers the version anew and records the import time),
    but a wrong type is still refused rather than coerced or ignored.
    """
    if document.get("format") != EXPORT_FORMAT:
        raise InvalidSpecError(
            f"{source}: not a policy-canary version export (expected format "
            f"{EXPORT_FORMAT!r}, found {document.get('format')!r})"
        )
    unknown = sorted(set(document) - set(EXPORT_FIELDS))
    if unknown:
        raise InvalidSpecError(
            f"{source}: unknown field(s) {', '.join(map(repr, unknown))}; an export has "
            + ", ".join(EXPORT_FIELDS)
        )
    missing = [k for k in ("policy", "id", "spec") if k not in document]
    if missing:
        raise InvalidSpecError(f"{source}: missing field(s) {', '.join(missing)}")
    for key in ("policy", "author", "message", "created_at"):
        value = document.get(key)
        if key in document and not isinstance(value, str):
            raise InvalidSpecError(f"{source}: {key!r} must be a string, not {_kind(value)}")
    for key in ("id", "parent_id"):
        value = document.get(key)
        if (key == "id" or value is not None) and not (
            isinstance(value, str) and _DIGEST.fullmatch(value)
        ):
            raise InvalidSpecError(
                f"{source}: {key!r} must be a version id (64 lowercase hex characters), "
                f"not {value!r}"
            )
    _check_number(document, source)
    _check_created_at(document, source)


def _check_number(document: Mapping[str, Any], source: str) -> None:
    number = document.get("number")
    if "number" in document and not (
        isinstance(number, int) and not isinstance(number, bool)
        and 1 <= number <= MAX_VERSION_NUMBER
    ):  # fmt: skip
        raise InvalidSpecError(
            f"{source}: 'number' must be a whole number from 1 to {MAX_VERSION_NUMBER:,}, "
            f"not {number!r}"
        )


def _check_created_at(document: Mapping[str, Any], source: str) -> None:
    text = document.get("created_at")
    if text is None:
        return
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise InvalidSpecError(
            f"{source}: 'created_at' must be an ISO 8601 time with a UTC offset "
            f"(e.g. 2026-01-01T00:00:00+00:00), not {text!r}"
        )


def _kind(value: Any) -> str:
    return "null" if value is None else f"{value!r}"[:60] + f" ({type(value).__name__})"
