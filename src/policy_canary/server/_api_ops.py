"""``/api/v1``: incidents, alerts, the audit log, tokens, health."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from policy_canary import __version__
from policy_canary.alerts import list_alerts
from policy_canary.controller import replay
from policy_canary.errors import InputError
from policy_canary.plan import parse_duration
from policy_canary.server._auth import Principal, require
from policy_canary.server._body import Body, any_object, json_body, model, schema
from policy_canary.server._render import render_json
from policy_canary.server._routes import IDEMPOTENCY_HEADER, mutation, with_extra
from policy_canary.server._state import server_state
from policy_canary.store._audit import audit_entries
from policy_canary.tokens import Permission

router = APIRouter(prefix="/api/v1")

_LIMIT = Query(100, ge=1, le=10_000, description="At most this many, newest first.")


@router.get("/incidents", summary="List incidents, newest first", tags=["incidents"])
def incidents(
    request: Request,
    policy: str | None = Query(None, description="Only this policy's incidents."),
    limit: int = _LIMIT,
    _: Principal = Depends(require(Permission.READ)),
) -> Response:
    found = server_state(request).incidents.list(policy=policy, limit=limit)
    return render_json([i.to_dict() for i in found])


@router.get("/incidents/{incident_id}", summary="One incident with its bundle", tags=["incidents"])
def incident(
    incident_id: str, request: Request, _: Principal = Depends(require(Permission.READ))
) -> Response:
    found = server_state(request).incidents.get(incident_id)
    return render_json(found.to_dict(with_bundle=True))


@router.get(
    "/incidents/{incident_id}/export",
    summary="An incident's export document (for replay)",
    tags=["incidents"],
)
def incident_export(
    incident_id: str, request: Request, _: Principal = Depends(require(Permission.READ))
) -> Response:
    return render_json(server_state(request).incidents.get(incident_id).export_document())


@router.post(
    "/incidents/replay",
    summary="Re-run decide() on an exported incident and compare",
    tags=["incidents"],
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "description": "A document from the export endpoint."}}}}},
)  # fmt: skip
def incident_replay(
    _: Principal = Depends(require(Permission.READ)),
    body: Body = Depends(json_body(lambda lim: lim.events_body_bytes)),
) -> Response:
    return render_json(replay(any_object(body.data), source="request body").to_dict())


@router.get("/alerts", summary="Alerts with each sink's delivery status", tags=["alerts"])
def alerts(
    request: Request,
    status: str | None = Query(None, description="pending, delivered or failed."),
    limit: int = _LIMIT,
    _: Principal = Depends(require(Permission.READ)),
) -> Response:
    views = list_alerts(server_state(request).canary.store, status=status, limit=limit)
    return render_json([v.to_dict() for v in views])


@router.get("/audit", summary="The audit log, newest first", tags=["audit"])
def audit(
    request: Request,
    actor: str | None = Query(None, description="Only this actor (a token's name)."),
    subject: str | None = Query(None, description="Only this subject, e.g. support-agent@v2."),
    limit: int = _LIMIT,
    _: Principal = Depends(require(Permission.READ)),
) -> Response:
    store = server_state(request).canary.store
    return render_json(audit_entries(store, limit=limit, actor=actor, subject=subject))


class TokenRequest(BaseModel):
    """A new token: its secret is in the response, once."""

    name: str
    role: str = Field(..., description="viewer, agent, operator or admin.")
    policies: list[str] = Field(default_factory=list)
    expires: str | None = Field(None, description="Lifetime, e.g. 30d.")


class RevokeRequest(BaseModel):
    """Why the token is revoked."""

    reason: str = ""


@router.get("/tokens", summary="List tokens (never their secrets)", tags=["tokens"])
def tokens(request: Request, _: Principal = Depends(require(Permission.MANAGE_TOKENS))) -> Response:
    store = server_state(request).tokens
    now = store.clock.now()
    return render_json([t.to_dict(now=now) for t in store.list()])


@router.post(
    "/tokens",
    summary="Create a token",
    status_code=201,
    tags=["tokens"],
    openapi_extra=with_extra(schema(TokenRequest), IDEMPOTENCY_HEADER),
)
def create_token(
    request: Request,
    principal: Principal = Depends(require(Permission.MANAGE_TOKENS)),
    body: Body = Depends(json_body(lambda lim: lim.body_bytes)),
) -> Response:
    req = model(TokenRequest, body.data)
    lifetime = None
    if req.expires is not None:
        try:
            lifetime = parse_duration(req.expires)
        except ValueError as exc:
            raise InputError(f"expires: {exc}") from None
    store = server_state(request).tokens

    def act() -> dict[str, Any]:
        created = store.create(
            req.name, role=req.role, policies=req.policies, expires=lifetime, actor=principal.actor
        )
        return created.to_dict()

    return mutation(request, principal, body.raw, act, status=201)


@router.post(
    "/tokens/{token_name}/revoke",
    summary="Revoke a token",
    tags=["tokens"],
    openapi_extra=with_extra(schema(RevokeRequest), IDEMPOTENCY_HEADER),
)
def revoke_token(
    token_name: str,
    request: Request,
    principal: Principal = Depends(require(Permission.MANAGE_TOKENS)),
    body: Body = Depends(json_body(lambda lim: lim.body_bytes, optional=True)),
) -> Response:
    req = model(RevokeRequest, body.data)
    store = server_state(request).tokens

    def act() -> dict[str, Any]:
        revoked = store.revoke(token_name, actor=principal.actor, reason=req.reason)
        server_state(request).token_cache.clear()  # refused here from the next request
        return revoked.to_dict(now=store.clock.now())

    return mutation(request, principal, body.raw, act)


@router.get("/health", summary="Liveness and routing freshness (no token needed)", tags=["health"])
def health(request: Request) -> Response:
    state = server_state(request)
    stats = state.canary.stats()
    return render_json(
        {
            "ok": True,
            "version": __version__,
            "auth": state.auth,
            "buffered_events": stats.buffered,
            "dropped_events": stats.dropped,
        }
    )
