"""Reading policy specs from files, and the portable export format of a version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from policy_canary._files import read_text
from policy_canary._yaml import load_document
from policy_canary.canonical import canonical_json
from policy_canary.errors import InvalidSpecError

#: Identifies an exported version file; bump the suffix on an incompatible change.
EXPORT_FORMAT = "policy-canary.version/1"


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
