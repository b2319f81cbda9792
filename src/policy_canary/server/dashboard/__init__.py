"""The dashboard: server-rendered pages over the same library calls as the CLI and the API.

``mount(app)`` adds it to a server app: pages at ``/`` (``_pages.py``), form posts with CSRF
checks (``_actions.py``), a change stream for live pages (``_live.py``), the project's script
and style plus plotly.js from the installed ``plotly`` package (``_assets.py``). Logins
exchange a token for a session (``_session.py``, ``_access.py``); charts are drawn from the
decision trace (``_series.py``); page data is assembled in ``_views.py`` and rendered by
autoescaped Jinja2 templates (``_render.py``).
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI

from policy_canary.clock import Clock
from policy_canary.server.dashboard import _actions, _assets, _live, _pages
from policy_canary.server.dashboard._series import Series, build_series
from policy_canary.server.dashboard._session import COOKIE, DEFAULT_LIFETIME, Sessions

__all__ = ["COOKIE", "DEFAULT_LIFETIME", "Series", "Sessions", "build_series", "mount"]


def mount(
    app: FastAPI,
    *,
    clock: Clock,
    session_lifetime: timedelta = DEFAULT_LIFETIME,
    poll_seconds: float = 1.0,
    secure_cookies: bool = False,
) -> None:
    """Serve the dashboard from ``app`` (sessions expire ``session_lifetime`` after login).

    Cookies are ``Secure`` on HTTPS requests, and always with ``secure_cookies`` (behind a
    TLS-terminating proxy that forwards plain HTTP).
    """
    app.state.dashboard_sessions = Sessions(clock=clock, lifetime=session_lifetime)
    app.state.dashboard_poll = poll_seconds
    app.state.dashboard_secure = secure_cookies
    for module in (_assets, _live, _actions, _pages):
        app.include_router(module.router)
