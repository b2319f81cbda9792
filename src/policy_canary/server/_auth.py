"""Who is asking, and may they: bearer tokens checked against the one role table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from policy_canary.errors import AuthenticationError
from policy_canary.server._state import ServerState, server_state
from policy_canary.tokens import Permission, TokenInfo

_bearer = HTTPBearer(auto_error=False, description="A token from 'policy-canary token create'.")


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a token, or (with ``--no-auth`` on loopback) the local user."""

    actor: str
    token: TokenInfo | None

    def authorize(self, permission: Permission, policy: str | None = None) -> None:
        """Raise :class:`PermissionDeniedError` unless the token allows this."""
        if self.token is not None:
            self.token.authorize(permission, policy)

    def authorize_role(self, permission: Permission) -> None:
        """Raise :class:`PermissionDeniedError` unless the token's role has ``permission``."""
        if self.token is not None:
            self.token.authorize_role(permission)

    def allows(self, permission: Permission, policy: str | None = None) -> bool:
        """True when the token allows this (always, without auth)."""
        return self.token is None or self.token.allows(permission, policy)


def cached_principal(state: ServerState, authorization: bytes | None) -> Principal | None:
    """The caller, when knowing them needs no store read: auth is off, or the header names
    an active token this server checked recently. None: let :func:`require` decide (and
    answer any refusal) on the full route."""
    if not state.auth:
        return Principal(actor=state.local_actor, token=None)
    if authorization is None:
        return None
    scheme, _, secret = authorization.decode("latin-1").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        return None
    token = state.token_cache.peek(secret)  # a stale one is re-checked by require()
    if token is None or token.state(state.tokens.clock.now()) != "active":
        return None
    return Principal(actor=token.name, token=token)


async def _authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    state = server_state(request)
    if not state.auth:
        return Principal(actor=state.local_actor, token=None)
    header = request.headers.get("authorization")
    if header is not None and credentials is None:
        raise AuthenticationError("send the token as 'Authorization: Bearer pc_...'")
    secret = credentials.credentials if credentials else None
    token = state.token_cache.get(secret) if secret else None
    if token is None or token.state(state.tokens.clock.now()) != "active":
        try:
            token = await run_in_threadpool(state.tokens.authenticate, secret)
        except BaseException:
            if secret:
                state.token_cache.forget(secret)
            raise
        if secret:
            state.token_cache.put(secret, token)
    return Principal(actor=token.name, token=token)


def require(
    permission: Permission, *, policy_param: str | None = None, per_policy: bool = False
) -> Callable[..., Awaitable[Principal]]:
    """A dependency: authenticate, then check ``permission`` (for the path's policy).

    ``per_policy`` routes check the role here and each policy they touch themselves (a
    batch of events, a bulk evaluation, feedback by decision id).
    """

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> Principal:
        principal = await _authenticate(request, credentials)
        limiter = server_state(request).rate_limiter
        if limiter is not None:
            limiter.take(principal.actor)
        if per_policy:
            principal.authorize_role(permission)
            return principal
        policy = request.path_params.get(policy_param) if policy_param else None
        principal.authorize(permission, policy)
        return principal

    return dependency
