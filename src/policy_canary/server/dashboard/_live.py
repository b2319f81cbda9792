"""Live pages: ``GET /live``, a server-sent event whenever something a page shows changed.

A page subscribes once; on each event the project's script re-fetches the page and swaps its
live region. The signal is a marker of the store's recorded changes (the newest tick of any
decision trace, audit row, alert and delivery update), read every ``poll`` seconds and at once
when the routing watcher sees a transition, so a controller tick that only holds (new
evidence, no transition) moves the charts too. The session is re-checked at every look; when
it ends the stream ends, the browser reconnects, is refused, and the page goes to login.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from policy_canary.server._state import server_state
from policy_canary.server.dashboard._access import current
from policy_canary.store import Store
from policy_canary.store.schema import alert_deliveries, alerts, audit, rollout_ticks

router = APIRouter(include_in_schema=False)


def change_marker(store: Store) -> str:
    """A short text that changes whenever a tick, audit row, alert or delivery is written."""
    with store.read() as conn:
        parts = [
            conn.execute(select(func.max(rollout_ticks.c.id))).scalar(),
            conn.execute(select(func.max(audit.c.id))).scalar(),
            conn.execute(select(func.max(alerts.c.id))).scalar(),
            conn.execute(select(func.max(alert_deliveries.c.updated_at))).scalar(),
        ]
    return "-".join("0" if p is None else str(p).replace(" ", "T") for p in parts)


async def _events(request: Request, poll: float) -> AsyncIterator[bytes]:
    state = server_state(request)
    watch = state.watch
    marker = await run_in_threadpool(change_marker, state.canary.store)
    yield b"retry: 2000\nevent: marker\ndata: " + marker.encode() + b"\n\n"
    loop = asyncio.get_running_loop()
    ends = loop.time() + state.limits.stream_seconds
    idle = 0.0
    while not watch.closed and loop.time() < ends:
        changed = watch.changed
        try:
            await asyncio.wait_for(changed.wait(), poll)
        except TimeoutError:
            idle += poll
        if current(request) is None:
            return  # the session ended: the reconnect is refused and the page logs in again
        try:
            now = await run_in_threadpool(change_marker, state.canary.store)
        except Exception:  # the store is away: say nothing new, look again next time
            continue
        if now != marker:
            marker, idle = now, 0.0
            yield b"event: marker\ndata: " + marker.encode() + b"\n\n"
        elif idle >= state.limits.stream_keepalive:
            idle = 0.0
            yield b": keep-alive\n\n"


@router.get("/live")
async def live(request: Request) -> Response:
    """The change stream of the dashboard (needs a session)."""
    if current(request) is None and server_state(request).auth:
        return Response("log in first", status_code=401, media_type="text/plain")
    poll = float(request.app.state.dashboard_poll)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        _events(request, poll), media_type="text/event-stream", headers=headers
    )
