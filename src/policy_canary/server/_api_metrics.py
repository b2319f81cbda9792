"""``GET /metrics``: Prometheus exposition of release state and of this server's pipeline."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from policy_canary.server._auth import require
from policy_canary.tokens import Permission

router = APIRouter(tags=["metrics"])

_viewer = require(Permission.READ)


def _registry(request: Request) -> CollectorRegistry:
    found = request.app.state.metrics_registry
    assert isinstance(found, CollectorRegistry), "create_app() sets app.state.metrics_registry"
    return found


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Every series; needs a viewer token unless the server was started with --open-metrics."""
    if not request.app.state.metrics_open:
        header = request.headers.get("authorization", "")
        scheme, _, secret = header.partition(" ")
        credentials = (
            HTTPAuthorizationCredentials(scheme=scheme, credentials=secret.strip())
            if scheme.lower() == "bearer" and secret.strip()
            else None
        )
        await _viewer(request, credentials)  # an async dependency: awaited, not threaded
    body = await run_in_threadpool(generate_latest, _registry(request))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
