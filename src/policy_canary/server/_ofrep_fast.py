"""The plain case of single-flag OFREP evaluation, answered before FastAPI's routing.

Agents call ``POST /ofrep/v1/evaluate/flags/{key}`` on every request, so its common case
(a token this server authenticated in the last second, a small JSON body, a loaded policy)
is answered here in a few microseconds of Python instead of FastAPI's route matching,
dependency solving and response classes. Only that case: anything else (no token or one not
in the cache, a policy not loaded yet, a body that needs a closer look) goes on to the full
route in ``_ofrep.py`` with the body already read replayed to it, so every refusal and every
error is the full route's own, byte for byte. The success body comes from the same
:class:`~policy_canary.server._ofrep_body.EvaluationBodies` as the full route's.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policy_canary.errors import CanaryError, RateLimitedError
from policy_canary.server._auth import cached_principal
from policy_canary.server._body import parse_json
from policy_canary.server._errors import ofrep_error, problem
from policy_canary.server._state import ServerState
from policy_canary.tokens import Permission

PREFIX = "/ofrep/v1/evaluate/flags/"
_JSON_HEADERS = ((b"content-type", b"application/json"),)


class OfrepFastPath:
    """ASGI middleware: answer plain single-flag evaluations, hand everything else on."""

    def __init__(self, app: ASGIApp, *, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not path.startswith(PREFIX)
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        key = path[len(PREFIX) :]
        headers = self._headers(scope)
        actor = self._actor(key, headers) if key and "/" not in key else None
        if actor is None:
            await self.app(scope, receive, send)
            return
        chunks, complete, other = await self._read(receive, headers)
        if complete and await self._answer(scope, key, actor, b"".join(chunks), headers, send):
            return
        await self.app(scope, _replay(chunks, complete, other, receive), send)

    @staticmethod
    def _headers(scope: Scope) -> dict[bytes, bytes]:
        """The first value of each header (as Starlette's ``headers.get`` reads them)."""
        found: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name not in found:
                found[name] = value
        return found

    def _actor(self, key: str, headers: dict[bytes, bytes]) -> str | None:
        """Who asks, when that needs no store read and they may evaluate ``key``; else None."""
        principal = cached_principal(self.state, headers.get(b"authorization"))
        if principal is None or not principal.allows(Permission.EVALUATE, key):
            return None
        return principal.actor

    async def _read(
        self, receive: Receive, headers: dict[bytes, bytes]
    ) -> tuple[list[bytes], bool, Message | None]:
        """The body's chunks read so far, whether that is all of a plain body (identity
        encoding, within the limit), and a message other than body that ended the reading."""
        limit = self.state.limits.ofrep_body_bytes
        declared = headers.get(b"content-length")
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding not in (b"identity", b"") or (
            declared is not None and (not declared.isdigit() or int(declared) > limit)
        ):
            return [], False, None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                return chunks, False, message
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if size > limit:
                return chunks, False, None
            if not message.get("more_body", False):
                return chunks, True, None

    async def _answer(
        self,
        scope: Scope,
        key: str,
        actor: str,
        body: bytes,
        headers: dict[bytes, bytes],
        send: Send,
    ) -> bool:
        """Evaluate and send; False (nothing sent) when the full route must answer."""
        state = self.state
        gate = state.canary._gates.get(key)  # loaded: no thread, no store
        if gate is None:
            return False
        content_type = headers.get(b"content-type")
        try:
            data = parse_json(body, content_type.decode("latin-1") if content_type else None,
                              optional=True)  # fmt: skip
        except CanaryError:
            return False
        context: Any = data.get("context", {}) if isinstance(data, dict) else None
        if not isinstance(context, dict):
            return False
        unit = context.get("targetingKey")
        if unit is not None and not isinstance(unit, str):
            return False
        limiter = state.rate_limiter
        if limiter is not None:
            try:
                limiter.take(actor)
            except RateLimitedError as error:  # what the full route's dependency answers
                await problem(error)(scope, _no_body, send)
                return True
        try:
            decision = gate.route(unit)
        except CanaryError as error:
            await ofrep_error(error, key)(scope, _no_body, send)
            return True
        state.decisions.add(decision)
        encoded = state.bodies.body(decision)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(encoded)).encode()), *_JSON_HEADERS],
            }
        )
        await send({"type": "http.response.body", "body": encoded})
        return True


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _replay(
    chunks: list[bytes], complete: bool, other: Message | None, receive: Receive
) -> Receive:
    """A ``receive`` that hands on what was read already, then the rest of the request."""
    pending: list[Message] = [other] if other is not None else []
    if chunks or complete:
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": not complete}
        pending.append(body)

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed
