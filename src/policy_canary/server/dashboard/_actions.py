"""The dashboard's form posts: login, logout, the five rollout actions, incident replay.

Every form carries the session's CSRF token (``check_csrf``) and may not come from another
site (``check_same_origin``); actions also need the act permission for the policy, so a
viewer's forged post is refused like the API refuses its token. Each action is the same
library call as the CLI command and the API endpoint of the same name.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from policy_canary.controller import replay
from policy_canary.errors import AuthenticationError, CanaryError, InputError
from policy_canary.server._state import server_state
from policy_canary.server.dashboard._access import (
    CSRF_FIELD,
    Viewer,
    check_csrf,
    check_same_origin,
    current,
    read_form,
    require_act,
    sessions,
)
from policy_canary.server.dashboard._pages import (
    LOGIN_COOKIE,
    context,
    cookie_flags,
    error_page,
    incident_context,
    no_auth_viewer,
    safe_next,
    to_login,
)
from policy_canary.server.dashboard._render import page
from policy_canary.server.dashboard._session import COOKIE

router = APIRouter(include_in_schema=False)

#: The actions, in the order the page offers them.
VERBS = ("pause", "resume", "promote", "rollback", "abort")


@router.post("/login")
async def login(request: Request) -> Response:
    """Exchange a token for a session cookie."""
    try:
        check_same_origin(request)
        form = await read_form(request)
    except CanaryError as error:
        return error_page(request, None, error)
    target = safe_next(form.get("next"))
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not hmac.compare_digest(nonce, form.get("nonce", "")):
        return _login_failed(request, target, "The login form expired; enter the token again.")
    state = server_state(request)
    secret = form.get("token", "").strip()
    try:
        token = await run_in_threadpool(state.tokens.authenticate, secret or None)
    except AuthenticationError as error:
        return _login_failed(request, target, error.message)
    session = sessions(request).open(secret=secret, token=token.name)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, session.id, **cookie_flags(request))
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


def _login_failed(request: Request, target: str, message: str) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = page(
        "login.html",
        context(request, None, nonce=nonce, ended=False, failure=message, next=target),
        status=401,
    )
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, **cookie_flags(request))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session."""
    viewer = current(request)
    if viewer is not None:
        try:
            check_csrf(viewer, (await read_form(request)).get(CSRF_FIELD))
        except CanaryError as error:
            return error_page(request, viewer, error)
        sessions(request).close(viewer.session.id)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def _checked_form(request: Request) -> tuple[Viewer | None, dict[str, str] | Response]:
    """The viewer and their form, once the session, origin and CSRF token are checked."""
    viewer = current(request) or no_auth_viewer(request)
    if viewer is None:
        return None, to_login(request, ended=COOKIE in request.cookies)
    try:
        check_same_origin(request)
        form = await read_form(request)
        check_csrf(viewer, form.get(CSRF_FIELD))
    except CanaryError as error:
        return viewer, error_page(request, viewer, error)
    return viewer, form


@router.post("/policies/{name}/actions/{verb}")
async def act(name: str, verb: str, request: Request) -> Response:
    """Pause, resume, promote, roll back or abort ``name``'s rollout, with a reason."""
    viewer, form = await _checked_form(request)
    if isinstance(form, Response):
        return form
    assert viewer is not None
    try:
        if verb not in VERBS:
            raise InputError(f"unknown action {verb!r}; use one of {', '.join(VERBS)}")
        require_act(viewer, name)
        reason = form.get("reason", "").strip()
        if not reason:
            raise InputError(f"give a reason to {verb}: it is recorded in the audit trail")
        if form.get("confirm") != "yes":
            raise InputError(f"tick the box to confirm that you mean to {verb} {name!r}")
        rollout_id = await run_in_threadpool(
            _perform, request, name, verb, reason, viewer.principal.actor, form.get("full") == "yes"
        )
    except Exception as error:  # every failure becomes a page, never a traceback
        return error_page(request, viewer, error)
    where = f"/rollouts/{quote(rollout_id)}" if rollout_id else f"/policies/{quote(name)}"
    return RedirectResponse(f"{where}?done={verb}", status_code=303)


def _perform(request: Request, name: str, verb: str, reason: str, actor: str, full: bool) -> str:
    """Run the library call; return the rollout it acted on ('' for a restored stable)."""
    state = server_state(request)
    rollouts = state.rollouts
    calls: dict[str, Callable[[], Any]] = {
        "pause": lambda: rollouts.pause(name, reason=reason, actor=actor),
        "resume": lambda: rollouts.resume(name, reason=reason, actor=actor),
        "promote": lambda: rollouts.promote(name, reason=reason, actor=actor, full=full),
        "abort": lambda: rollouts.abort(name, reason=reason, actor=actor),
    }
    if verb == "rollback":
        result = rollouts.rollback(name, reason=reason, actor=actor)
        rolled = result.rollout.id if result.rollout else ""
    else:
        rolled = str(calls[verb]().id)
    state.canary.refresh_now()  # the server's own routing follows at once, as after the API
    return rolled


@router.post("/incidents/{incident_id}/replay")
async def incident_replay(incident_id: str, request: Request) -> Response:
    """Re-run decide() on the incident's stored inputs and show whether it decides the same."""
    viewer, form = await _checked_form(request)
    if isinstance(form, Response):
        return form
    assert viewer is not None

    def run() -> dict[str, Any]:
        found = server_state(request).incidents.get(incident_id)
        result = replay(found.export_document(), source=f"incident {incident_id}")
        return incident_context(found, result.to_dict())

    try:
        data = await run_in_threadpool(run)
    except Exception as error:  # every failure becomes a page, never a traceback
        return error_page(request, viewer, error)
    return page("incident.html", context(request, viewer, **data))
