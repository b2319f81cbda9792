"""Push and poll: ``GET /api/v1/stream`` (server-sent events) and ``GET /api/v1/routing``.

Both serve the :class:`~policy_canary.server._watch.RoutingWatch` snapshot, never the store,
so a subscriber or a poll costs no database work. Each stream event has ``id:`` = the
routing epoch and comes in two forms, one after the other:

- ``event: routing``: the routing tables (``serving/_wire.py``) for the remote SDK;
- ``event: message`` with ``{"type": "refetchEvaluation", "etag", "lastModified"}``: OFREP's
  change notification (ADR 0008), telling an OpenFeature provider to re-run its bulk
  evaluation.

On connect the current tables are sent at once (after a reconnect they may have moved); a
``refetchEvaluation`` too when ``Last-Event-ID`` names an older epoch. A comment line keeps
idle connections (and the proxies in between) alive.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from policy_canary.errors import CanaryError, NotFoundError, PermissionDeniedError, RateLimitedError
from policy_canary.server._auth import Principal, cached_principal, require
from policy_canary.server._render import dumps, render_json
from policy_canary.server._state import ServerState, server_state
from policy_canary.server._watch import Snapshot
from policy_canary.serving._routing import RouteTable
from policy_canary.serving._wire import routing_json
from policy_canary.tokens import Permission

router = APIRouter(prefix="/api/v1", tags=["routing"])

_POLICY = Query(None, description="Only these policies (repeat the parameter); default: all.")
_SSE_DOC = {
    "responses": {
        "200": {
            "description": "A text/event-stream of routing changes: each event is a "
            "'routing' event (data: the routing document) and, on a change, a 'message' "
            "event (data: OFREP's refetchEvaluation notification).",
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {
                            "event": {"type": "string", "enum": ["routing", "message"]},
                            "id": {"type": "string", "description": "The routing epoch."},
                            "data": {"type": "string", "description": "JSON."},
                            "retry": {"type": "integer"},
                        },
                    }
                }
            },
        }
    }
}


def _scope(principal: Principal, wanted: list[str] | None) -> set[str] | None:
    """The policies this caller may see (None: all); asking for others is refused."""
    token = principal.token
    allowed = set(token.policies) if token is not None and token.policies else None
    if not wanted:
        return allowed
    if allowed is not None and token is not None:
        for name in wanted:
            if name not in allowed:
                raise PermissionDeniedError(
                    f"token {token.name!r} is limited to {', '.join(token.policies)}; it may "
                    f"not read the routing of policy {name!r}"
                )
    return set(wanted)


def _pick(snapshot: Snapshot, scope: set[str] | None, *, strict: bool) -> dict[str, RouteTable]:
    if scope is None:
        return dict(snapshot.tables)
    if strict:
        missing = sorted(scope - set(snapshot.tables))
        if missing:
            raise NotFoundError(
                f"no policy {missing[0]!r} with a stable version; register a version of it "
                "first, or check the name"
            )
    return {name: snapshot.tables[name] for name in sorted(scope) if name in snapshot.tables}


def _etag(snapshot: Snapshot, scope: set[str] | None) -> str:
    names = "*" if scope is None else ",".join(sorted(scope))
    digest = hashlib.sha256(names.encode()).hexdigest()[:12]
    return f'"{snapshot.epoch}-{digest}"'


def _frames(snapshot: Snapshot, scope: set[str] | None, *, refetch: bool) -> bytes:
    tables = _pick(snapshot, scope, strict=False)
    data = dumps(routing_json(snapshot.epoch, tables))
    out = b"id: %d\nevent: routing\ndata: %s\n\n" % (snapshot.epoch, data)
    if refetch:
        note = {"type": "refetchEvaluation", "etag": _etag(snapshot, scope),
                "lastModified": snapshot.at}  # fmt: skip
        out += b"id: %d\nevent: message\ndata: %s\n\n" % (snapshot.epoch, json.dumps(note).encode())
    return out


async def _events(
    state: ServerState, scope: set[str] | None, last_id: str | None
) -> AsyncIterator[bytes]:
    watch = state.watch
    keepalive = state.limits.stream_keepalive
    snapshot = await run_in_threadpool(watch.current)
    yield b"retry: 1000\n" + _frames(
        snapshot, scope, refetch=last_id is not None and last_id != str(snapshot.epoch)
    )
    sent = snapshot.epoch
    loop = asyncio.get_running_loop()
    ends = loop.time() + state.limits.stream_seconds
    while not watch.closed and (left := ends - loop.time()) > 0:
        changed = watch.changed  # taken before the snapshot is read: no change slips between
        now = watch.snapshot
        if now is not None and now.epoch != sent:
            yield _frames(now, scope, refetch=True)
            sent = now.epoch
            continue
        try:
            await asyncio.wait_for(changed.wait(), min(keepalive, left))
        except TimeoutError:
            yield b": keep-alive\n\n"


@router.get(
    "/stream", summary="Routing changes as server-sent events (SDK tables, OFREP refetch)",
    openapi_extra=_SSE_DOC, response_class=StreamingResponse,
)  # fmt: skip
async def stream(
    request: Request,
    policy: list[str] | None = _POLICY,
    last_event_id: str | None = Header(None),
    principal: Principal = Depends(require(Permission.READ)),
) -> Response:
    state = server_state(request)
    scope = _scope(principal, policy)
    if policy:
        _pick(await run_in_threadpool(state.watch.covering, policy), scope, strict=True)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        _events(state, scope, last_event_id), media_type="text/event-stream", headers=headers
    )


@router.get("/routing", summary="The routing tables now (polling; ETag / If-None-Match)")
async def routing(
    request: Request,
    policy: list[str] | None = _POLICY,
    if_none_match: str | None = Header(None),
    principal: Principal = Depends(require(Permission.READ)),
) -> Response:
    # On the event loop: every agent polls this each second, and a loaded snapshot answers
    # it with no I/O, so a trip through the thread pool would be most of its cost.
    state = server_state(request)
    scope = _scope(principal, policy)
    snapshot = state.watch.snapshot
    if snapshot is None or (policy and not set(policy) <= snapshot.tables.keys()):
        snapshot = await run_in_threadpool(state.watch.covering, policy or ())
    tables = _pick(snapshot, scope, strict=bool(policy))
    etag = _etag(snapshot, scope)
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers={"ETag": etag})
    return render_json(routing_json(snapshot.epoch, tables), headers={"ETag": etag})


class RoutingPollFastPath:
    """ASGI middleware: answer an unchanged poll of ``/api/v1/routing`` (a 304) at once.

    Every remote agent polls once a second beside its stream, and nearly every poll finds
    nothing new, so that case is answered here in microseconds instead of FastAPI's route
    matching and dependencies. Only when everything is known without a store read (a
    loaded snapshot, a token this server checked recently, only ``policy`` parameters, an
    ``If-None-Match`` naming the current ETag); anything else, every refusal included, goes
    on to :func:`routing` untouched (a GET has no body to replay).
    """

    def __init__(self, app: ASGIApp, *, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        etag = self._unchanged(scope) if scope["type"] == "http" else None
        if etag is None:
            await self.app(scope, receive, send)
            return
        headers = [(b"etag", etag.encode())]
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _unchanged(self, scope: Scope) -> str | None:
        """The ETag to answer 304 with, or None when the full route must answer."""
        if scope["method"] != "GET" or scope["path"] != "/api/v1/routing" or scope.get("root_path"):
            return None
        authorization = tags = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"if-none-match" and tags is None:
                tags = value
        snapshot = self.state.watch.snapshot
        if tags is None or snapshot is None:
            return None
        principal = cached_principal(self.state, authorization)
        if principal is None or not principal.allows(Permission.READ):
            return None
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if any(key != "policy" for key, _ in query):
            return None
        wanted = [value for _, value in query]
        try:
            allowed = _scope(principal, wanted)
        except CanaryError:
            return None
        if wanted and not set(wanted) <= snapshot.tables.keys():
            return None  # the full route says which policy is unknown
        etag = _etag(snapshot, allowed)
        if etag not in {t.strip() for t in tags.decode("latin-1").split(",")}:
            return None
        limiter = self.state.rate_limiter
        if limiter is not None:
            try:
                limiter.take(principal.actor)
            except RateLimitedError:
                return None  # the full route's dependency refuses it, in its own words
        return etag
