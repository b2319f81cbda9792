"""Who is looking at the dashboard, what they may do, and the CSRF check on every form."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import parse_qs

from fastapi import Request

from policy_canary.errors import AuthenticationError, InputError, PermissionDeniedError
from policy_canary.server._auth import Principal
from policy_canary.server._state import ServerState, server_state
from policy_canary.server.dashboard._session import COOKIE, Session, Sessions
from policy_canary.store._audit import default_actor
from policy_canary.tokens import Permission, TokenInfo

#: The form field (and header, for the project's own scripts) that carries the CSRF token.
CSRF_FIELD = "csrf"


@dataclass(frozen=True, slots=True)
class Viewer:
    """A logged-in browser: its session and the token behind it (None without auth)."""

    session: Session
    token: TokenInfo | None

    @property
    def principal(self) -> Principal:
        """The same caller the API sees for this token (the audit actor is its name)."""
        actor = self.token.name if self.token is not None else default_actor()
        return Principal(actor=actor, token=self.token)

    @property
    def role(self) -> str:
        """The token's role (``admin`` for the local user without auth)."""
        return self.token.role.value if self.token is not None else "admin"

    def can_act(self, policy: str | None = None) -> bool:
        """True when this viewer may pause, resume, promote, roll back or abort (``policy``)."""
        return self.principal.allows(Permission.ACT, policy)


def sessions(request: Request) -> Sessions:
    """The app's session table."""
    found = request.app.state.dashboard_sessions
    assert isinstance(found, Sessions), "mount() sets app.state.dashboard_sessions"
    return found


def token_for(state: ServerState, secret: str | None) -> TokenInfo | None:
    """The usable token with this secret (raises :class:`AuthenticationError`); None w/o auth."""
    if not state.auth:
        return None
    if secret is None:
        raise AuthenticationError("the session has no token; log in again")
    token = state.token_cache.get(secret)
    if token is None or token.state(state.tokens.clock.now()) != "active":
        token = state.tokens.authenticate(secret)
        state.token_cache.put(secret, token)
    return token


def current(request: Request) -> Viewer | None:
    """The viewer of this request, or None (no session, expired, or its token is unusable)."""
    table = sessions(request)
    session = table.get(request.cookies.get(COOKIE))
    if session is None:
        return None
    try:
        token = token_for(server_state(request), session.secret)
    except AuthenticationError:
        table.close(session.id)  # a revoked or expired token ends the session
        return None
    return Viewer(session, token)


def check_csrf(viewer: Viewer, submitted: str | None) -> None:
    """Refuse a form whose CSRF token is not this session's (a forged or stale request)."""
    if not submitted or not hmac.compare_digest(submitted, viewer.session.csrf):
        raise PermissionDeniedError(
            "this form's CSRF token is missing or does not belong to your session, so nothing "
            "was done; reload the page and submit the form again"
        )


def check_same_origin(request: Request) -> None:
    """Refuse a cross-site form post (an ``Origin`` naming another site)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return  # no Origin (older browsers, same-origin navigations): the CSRF token decides
    expected = f"{request.url.scheme}://{request.url.netloc}"
    if origin != expected:
        raise PermissionDeniedError(
            f"a form from {origin} may not act on this dashboard ({expected}); nothing was done"
        )


def require_act(viewer: Viewer, policy: str) -> None:
    """Refuse unless this viewer may act on ``policy`` (operators and admins)."""
    viewer.principal.authorize(Permission.ACT, policy)


#: The largest form the dashboard reads (a reason and a few fields).
MAX_FORM_BYTES = 64 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """The posted ``application/x-www-form-urlencoded`` fields (first value of each)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise InputError(f"the form is over {MAX_FORM_BYTES:,} bytes; shorten the reason")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the form is not UTF-8 text") from None
    try:
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=50)
    except ValueError:
        raise InputError("the form has too many fields") from None
    return {key: values[0] for key, values in fields.items()}
