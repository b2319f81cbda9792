"""JSON responses spelled like the CLI's ``--json`` (sorted keys, UTF-8, datetimes as text)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response


def dumps(data: Any) -> bytes:
    """Encode ``data`` the way ``policy-canary ... --json`` does (without the indentation)."""
    return json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")


def render_json(
    data: Any,
    *,
    status: int = 200,
    media_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A JSON response."""
    return Response(dumps(data), status_code=status, media_type=media_type, headers=headers)
