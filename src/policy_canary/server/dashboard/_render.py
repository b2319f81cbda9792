"""Rendering pages: one Jinja2 environment, autoescaped, and the headers every page carries."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, Undefined, select_autoescape
from markupsafe import Markup
from starlette.responses import HTMLResponse

#: Control characters other than tab and newline never reach a page (they would garble it or,
#: like NUL, make it invalid HTML); each shows as U+FFFD instead.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

#: Scripts and styles come from this server only; plotly sets inline styles on its SVG.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def clean(value: Any) -> Any:
    """``value`` with control characters replaced (text only; escaping happens after).

    Markup (a macro's output, ``tojson``) was built by the templates and is kept as it is.
    """
    if isinstance(value, str) and not isinstance(value, Markup):
        return _CONTROL.sub("\ufffd", value)
    return value


def when(value: Any) -> str:
    """A time as ``2026-12-02 18:05:00 UTC`` (ISO text or datetime; ``—`` for none)."""
    if value is None or value == "":
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime):
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: Any, digits: int = 4) -> str:
    """A measured value with ``digits`` significant digits (``—`` for none, ``∞`` for inf)."""
    if value is None or isinstance(value, Undefined):
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, float) and math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}"


def percent(basis_points: Any) -> str:
    """A traffic share in basis points as a percentage (``12.5%``)."""
    return f"{int(basis_points) / 100:g}%"


def duration(seconds: Any) -> str:
    """Seconds as ``1h05m`` / ``4m10s``."""
    total = int(seconds or 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("policy_canary.server.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        finalize=clean,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, number=number, percent=percent, duration=duration)
    return env


_ENV = _environment()


def page(
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """Render ``template`` with ``context`` into a response with the security headers."""
    body = _ENV.get_template(template).render(**context)
    return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def fragment(template: str, context: Mapping[str, Any]) -> str:
    """Render ``template`` to text (for tests and for composing pages)."""
    return _ENV.get_template(template).render(**context)
