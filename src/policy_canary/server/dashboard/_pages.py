"""The dashboard's pages (GET): overview, rollout, policy, incident, alerts, and login."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from policy_canary.alerts import AlertStatus
from policy_canary.controller import Incident
from policy_canary.errors import CanaryError, PermissionDeniedError
from policy_canary.server._errors import STATUS
from policy_canary.server._render import dumps
from policy_canary.server._state import ServerState, server_state
from policy_canary.server.dashboard import _views
from policy_canary.server.dashboard._access import Viewer, current, sessions
from policy_canary.server.dashboard._render import page
from policy_canary.server.dashboard._session import COOKIE

log = logging.getLogger("policy_canary.server.dashboard")

router = APIRouter(include_in_schema=False)

#: The cookie (and form field) that protect the login form itself against login CSRF.
LOGIN_COOKIE = "pc_login"

#: What the page says after an action succeeded (keyed by a fixed code, never user text).
DONE = {
    "pause": "Paused: the candidate holds its current share.",
    "resume": "Resumed.",
    "promote": "Promoted.",
    "rollback": "Rolled back: traffic is back on the stable version.",
    "abort": "Aborted: traffic is back on the stable version.",
}


def cookie_flags(request: Request) -> dict[str, Any]:
    """Session cookie attributes: HttpOnly, SameSite=Strict, Secure behind TLS."""
    secure = request.url.scheme == "https" or bool(request.app.state.dashboard_secure)
    return {"httponly": True, "samesite": "strict", "secure": secure, "path": "/"}


def to_login(request: Request, *, ended: bool) -> RedirectResponse:
    """Send the browser to the login page, back to this page afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    where = f"/login?next={quote(target, safe='')}" + ("&ended=1" if ended else "")
    response = RedirectResponse(where, status_code=303)
    if ended:
        response.delete_cookie(COOKIE, path="/")
    return response


def context(request: Request, viewer: Viewer | None, **extra: Any) -> dict[str, Any]:
    """What every template gets: who is looking, their CSRF token, the notice of an action."""
    done = request.query_params.get("done")
    return {
        "viewer": viewer,
        "csrf": viewer.session.csrf if viewer else "",
        "done": DONE.get(done or ""),
        "path": request.url.path,
        **extra,
    }


def error_page(request: Request, viewer: Viewer | None, error: Exception) -> Response:
    """A failure as a page that says what happened (never a traceback)."""
    if isinstance(error, CanaryError):
        status, message = STATUS.get(error.code, 400), error.message
    else:
        log.exception("dashboard page %s failed", request.url.path, exc_info=error)
        status, message = 500, "the server failed unexpectedly; the error is in its log"
    return page(
        "error.html", context(request, viewer, status=status, message=message), status=status
    )


def no_auth_viewer(request: Request) -> Viewer | None:
    """Without auth (loopback only) every browser is the local user: open a session for it."""
    state = server_state(request)
    if state.auth:
        return None
    session = sessions(request).open(secret=None, token="local")
    return Viewer(session, None)


async def viewed(
    request: Request, build: Callable[[ServerState, Viewer], Mapping[str, Any]], template: str
) -> Response:
    """Render a page for a logged-in viewer, or send them to log in."""
    viewer = current(request)
    fresh = None
    if viewer is None:
        viewer = fresh = no_auth_viewer(request)
        if viewer is None:
            return to_login(request, ended=COOKIE in request.cookies)
    try:
        data = await run_in_threadpool(build, server_state(request), viewer)
        response = page(template, context(request, viewer, **data))
    except Exception as error:  # every failure becomes a page, never a traceback
        return error_page(request, viewer, error)
    if fresh is not None:
        response.set_cookie(COOKIE, fresh.session.id, **cookie_flags(request))
    return response


@router.get("/login")
def login_form(request: Request) -> Response:
    """The login form (a token, exchanged for a session cookie)."""
    nonce = secrets.token_urlsafe(24)
    ended = request.query_params.get("ended") == "1"
    response = page(
        "login.html",
        context(
            request,
            None,
            nonce=nonce,
            ended=ended,
            failure=None,
            next=safe_next(request.query_params.get("next")),
        ),
    )
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, **cookie_flags(request))
    return response


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this site only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/")
async def overview(request: Request) -> Response:
    """Every policy, its stable version and active rollout; live."""

    def build(state: ServerState, viewer: Viewer) -> Mapping[str, Any]:
        return {
            "rows": _views.overview(state),
            "incidents": state.incidents.list(limit=10),
            "live": True,
        }

    return await viewed(request, build, "overview.html")


@router.get("/rollouts/{rollout_id}")
async def rollout(rollout_id: str, request: Request) -> Response:
    """One rollout: stage timeline, guardrail charts, verdicts, trace, plan; live."""

    def build(state: ServerState, viewer: Viewer) -> Mapping[str, Any]:
        view = _views.rollout(state, rollout_id)
        figures = {s.guardrail: s.figure() for s in view.series if s.drawable}
        policy = str(view.status["policy"])
        active = view.status["state"] in ("running", "paused")
        return {
            "view": view,
            "figures": figures,
            "live": True,
            "can_act": viewer.can_act(policy) and active,
            "policy": policy,
        }

    return await viewed(request, build, "rollout.html")


@router.get("/policies/{name}")
async def policy(name: str, request: Request) -> Response:
    """A policy: its versions, a side-by-side diff of any two, its release history."""
    left, right = request.query_params.get("a"), request.query_params.get("b")

    def build(state: ServerState, viewer: Viewer) -> Mapping[str, Any]:
        view = _views.policy(state, name, left, right)
        active = next((r for r in view.rollouts if r["state"] in ("running", "paused")), None)
        return {
            "view": view,
            "active": active,
            "can_act": viewer.can_act(name) and active is not None,
        }

    return await viewed(request, build, "policy.html")


def incident_context(found: Incident, replayed: Mapping[str, Any] | None) -> dict[str, Any]:
    """The incident page's data: the incident, each bundle part as JSON text, the replay."""
    parts = [
        (key, json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str))
        for key, value in sorted(found.bundle.items())
    ]
    return {"incident": found.to_dict(), "parts": parts, "replay": replayed}


@router.get("/incidents/{incident_id}")
async def incident(incident_id: str, request: Request) -> Response:
    """An incident: its summary and everything in its bundle; replay and export."""

    def build(state: ServerState, viewer: Viewer) -> Mapping[str, Any]:
        return incident_context(state.incidents.get(incident_id), None)

    return await viewed(request, build, "incident.html")


@router.get("/incidents/{incident_id}/export")
async def incident_export(incident_id: str, request: Request) -> Response:
    """Download the incident's export document (what ``incident replay`` reads)."""
    viewer = current(request) or no_auth_viewer(request)
    if viewer is None:
        return to_login(request, ended=COOKIE in request.cookies)
    try:
        found = await run_in_threadpool(server_state(request).incidents.get, incident_id)
    except CanaryError as error:
        return error_page(request, viewer, error)
    headers = {
        "Content-Disposition": f'attachment; filename="{found.id}.json"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return Response(dumps(found.export_document()), media_type="application/json", headers=headers)


@router.get("/alerts")
async def alerts(request: Request) -> Response:
    """Alerts: pending, delivered and failed deliveries with their last error."""
    wanted = request.query_params.get("status") or None
    if wanted is not None and wanted not in {s.value for s in AlertStatus}:
        wanted = None

    def build(state: ServerState, viewer: Viewer) -> Mapping[str, Any]:
        return {
            "alerts": _views.alerts(state, wanted),
            "wanted": wanted or "all",
            "choices": ["all", *(s.value for s in AlertStatus)],
        }

    return await viewed(request, build, "alerts.html")


def refuse(request: Request, viewer: Viewer | None, message: str) -> Response:
    """A refused form post as a page (403)."""
    return error_page(request, viewer, PermissionDeniedError(message))
