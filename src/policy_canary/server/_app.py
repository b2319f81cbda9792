"""Building the FastAPI app around one :class:`~policy_canary.Canary` (direct mode)."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from policy_canary import __version__
from policy_canary.controller import Incidents
from policy_canary.errors import TooLargeError
from policy_canary.registry import Registry
from policy_canary.server import (
    _api_events,
    _api_metrics,
    _api_ops,
    _api_otlp,
    _api_policies,
    _api_rollouts,
    _ofrep,
    _stream,
)
from policy_canary.server._controller import ServedController
from policy_canary.server._errors import install, problem
from policy_canary.server._idempotency import Idempotency
from policy_canary.server._ofrep_fast import OfrepFastPath
from policy_canary.server._state import Limits, ServerState
from policy_canary.server.dashboard import mount
from policy_canary.serving import Canary
from policy_canary.telemetry import ReleaseCollector, metrics_registry
from policy_canary.tokens import Tokens

OPENAPI_URL = "/api/v1/openapi.json"


class _ContentLengthCap:
    """Refuse any request that declares a body larger than the largest endpoint limit."""

    def __init__(self, app: ASGIApp, *, most: int) -> None:
        self.app = app
        self.most = most

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > self.most:
                    error = TooLargeError(
                        f"the request body is over the server's limit of {self.most:,} bytes"
                    )
                    await problem(error)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _end_streams_on_signal(end: Callable[[], None]) -> None:
    """Run ``end`` on SIGTERM/SIGINT before the handler uvicorn installed (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)

        def handler(number: int, frame: FrameType | None, previous: Any = previous) -> None:
            end()
            if callable(previous):
                previous(number, frame)

        signal.signal(sig, handler)


def create_app(
    canary: Canary,
    *,
    auth: bool = True,
    limits: Limits | None = None,
    close_canary: bool = False,
    open_metrics: bool = False,
    dashboard: bool = True,
    end_streams_on_signal: bool = False,
    controller: ServedController | None = None,
) -> FastAPI:
    """The HTTP API and OFREP over ``canary`` (its store, clock and gates).

    With ``auth`` every route except ``/api/v1/health`` needs a bearer token; the caller
    (``policy-canary serve``) decides when running without is allowed. With
    ``close_canary`` the app's shutdown (after in-flight requests drained) closes the
    canary, which writes every buffered event. ``/metrics`` needs a viewer token unless
    ``open_metrics`` (or auth is off). With ``dashboard`` the pages are served at ``/``
    (log in with a token; ``policy_canary.server.dashboard.mount`` for its options).
    With ``end_streams_on_signal`` (a serving process)
    SIGTERM/SIGINT first ends the event streams: a stream never finishes by itself, so
    uvicorn's graceful shutdown would otherwise wait its whole timeout for them before
    closing in-flight requests. With ``controller`` (``serve --controller``) the app starts
    that controller's loop once it is ready, asks it to stop on SIGTERM/SIGINT (so a standby
    takes the lease while requests drain) and joins it, within a bound, before the canary
    closes; its leadership and tick series join ``/metrics``.
    """
    chosen = limits or Limits()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watch = app.state.server.watch
        watch.start(asyncio.get_running_loop())
        if end_streams_on_signal:

            def end() -> None:
                watch.close(wait=False)
                if controller is not None:
                    controller.stop_soon()

            _end_streams_on_signal(end)
        if controller is not None:
            controller.start()
        yield
        if controller is not None:
            await run_in_threadpool(controller.stop)
        await run_in_threadpool(watch.close)
        if close_canary:
            await run_in_threadpool(canary.close)

    clock = canary.rollouts.clock
    app = FastAPI(
        title="policy-canary",
        version=__version__,
        summary="Registry, rollouts, incidents and OFREP evaluation for LLM agent policies.",
        openapi_url=OPENAPI_URL,
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.server = ServerState(
        canary=canary,
        registry=Registry(canary.store, clock=clock, max_spec_bytes=chosen.spec_bytes),
        rollouts=canary.rollouts,
        incidents=Incidents(canary.store),
        tokens=Tokens(canary.store, clock=clock),
        idempotency=Idempotency(canary.store, clock=clock),
        auth=auth,
        limits=chosen,
    )
    app.state.otlp = otlp = _api_otlp.OtlpIngest()
    app.state.metrics_registry = metrics_registry(
        ReleaseCollector(canary.store, canary=canary), otlp.collector()
    )
    app.state.metrics_open = open_metrics
    app.state.controller = controller
    if controller is not None:
        controller.meter(app.state.metrics_registry)
    install(app)
    for module in (
        _api_policies,
        _api_rollouts,
        _api_ops,
        _api_events,
        _stream,
        _ofrep,
        _api_metrics,
        _api_otlp,
    ):
        app.include_router(module.router)
    if dashboard:
        mount(app, clock=clock)
    # Added first, so the length cap below runs before them (add_middleware wraps outward).
    app.add_middleware(OfrepFastPath, state=app.state.server)
    app.add_middleware(_stream.RoutingPollFastPath, state=app.state.server)
    most = max(chosen.events_body_bytes, chosen.push_body_bytes, chosen.body_bytes)
    app.add_middleware(_ContentLengthCap, most=most)
    return app
