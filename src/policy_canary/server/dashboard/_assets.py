"""The dashboard's script and style, and plotly.js, served from the installed packages.

plotly.js comes from the ``plotly`` package's own bundle (``plotly/package_data``): found on
disk without importing plotly, read once, served with a long cache lifetime. Nothing is
fetched at run time and no third-party code lives in this repository.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import Response

router = APIRouter(include_in_schema=False)

_OWN = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
PLOTLY = "plotly.min.js"


def plotly_path() -> Path | None:
    """Where the installed plotly package keeps its bundled plotly.js, if it is installed."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "package_data" / PLOTLY
    return path if path.is_file() else None


@cache
def _asset(name: str) -> tuple[bytes, str] | None:
    if name == PLOTLY:
        path = plotly_path()
        body = path.read_bytes() if path is not None else None
    elif name in _OWN:
        files = importlib.resources.files("policy_canary.server.dashboard") / "static"
        body = (files / name).read_bytes()
    else:
        body = None
    if body is None:
        return None
    return body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


@router.get("/static/{name}")
def asset(name: str, request: Request) -> Response:
    """One static file (no login needed: none of them holds data)."""
    found = _asset(name)
    if found is None:
        detail = "plotly is not installed (pip install plotly)" if name == PLOTLY else "no file"
        return Response(detail, status_code=404, media_type="text/plain")
    body, etag = found
    headers = {
        "ETag": etag,
        "Cache-Control": "public, max-age=3600",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    media = "text/javascript" if name == PLOTLY else _OWN[name]
    return Response(body, media_type=media, headers=headers)
