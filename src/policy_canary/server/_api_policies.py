"""``/api/v1/policies``: push, list, show, diff, history, set-stable, export and import."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from policy_canary.reports import (
    import_report,
    push_report,
    set_stable_report,
    versions_report,
)
from policy_canary.server._auth import Principal, require
from policy_canary.server._body import Body, any_object, json_body, model, schema
from policy_canary.server._render import render_json
from policy_canary.server._routes import IDEMPOTENCY_HEADER, mutation, with_extra
from policy_canary.server._state import server_state
from policy_canary.tokens import Permission

router = APIRouter(prefix="/api/v1", tags=["policies"])


class PushRequest(BaseModel):
    """A spec to register as a new version (identical content returns the existing one)."""

    spec: dict[str, Any]
    message: str = ""
    bootstrap: bool = Field(True, description="Make a new policy's first version stable.")


class SetStableRequest(BaseModel):
    """Move the stable pointer by hand (kind ``manual``)."""

    ref: str
    reason: str


@router.get("/policies", summary="List policies with their stable and newest versions")
def list_policies(request: Request, _: Principal = Depends(require(Permission.READ))) -> Response:
    summaries = server_state(request).registry.policies()
    return render_json([s.to_dict() for s in summaries])


@router.post(
    "/policies/{name}/versions",
    summary="Register a spec as a new version of a policy",
    status_code=201,
    openapi_extra=with_extra(schema(PushRequest), IDEMPOTENCY_HEADER),
)
def push(
    name: str,
    request: Request,
    principal: Principal = Depends(require(Permission.PUSH, policy_param="name")),
    body: Body = Depends(json_body(lambda lim: lim.push_body_bytes)),
) -> Response:
    req = model(PushRequest, body.data)
    registry = server_state(request).registry

    def act() -> dict[str, Any]:
        result = registry.register(
            name, req.spec, message=req.message, author=principal.actor, bootstrap=req.bootstrap
        )
        return push_report(result)

    return mutation(request, principal, body.raw, act, status=201)


@router.get("/policies/{name}/versions", summary="List every version of a policy, oldest first")
def versions(
    name: str, request: Request, _: Principal = Depends(require(Permission.READ))
) -> Response:
    registry = server_state(request).registry
    return render_json(versions_report(registry.versions(name), registry.stable(name)))


@router.get("/policies/{name}/versions/{ref}", summary="Show one version with its spec")
def show(
    name: str, ref: str, request: Request, _: Principal = Depends(require(Permission.READ))
) -> Response:
    return render_json(server_state(request).registry.resolve(name, ref).to_dict(with_spec=True))


@router.get("/policies/{name}/diff", summary="Diff two versions of a policy")
def diff(
    name: str,
    request: Request,
    a: str = Query(..., description="Older version (id, prefix, vN, stable, latest)."),
    b: str = Query(..., description="Newer version."),
    _: Principal = Depends(require(Permission.READ)),
) -> Response:
    return render_json(server_state(request).registry.diff(name, a, b).to_dict())


@router.get("/policies/{name}/history", summary="Every move of a policy's stable pointer")
def history(
    name: str, request: Request, _: Principal = Depends(require(Permission.READ))
) -> Response:
    return render_json([e.to_dict() for e in server_state(request).registry.history(name)])


@router.post(
    "/policies/{name}/stable",
    summary="Move a policy's stable pointer by hand",
    openapi_extra=with_extra(schema(SetStableRequest), IDEMPOTENCY_HEADER),
)
def set_stable(
    name: str,
    request: Request,
    principal: Principal = Depends(require(Permission.SET_STABLE, policy_param="name")),
    body: Body = Depends(json_body(lambda lim: lim.body_bytes)),
) -> Response:
    req = model(SetStableRequest, body.data)
    registry = server_state(request).registry

    def act() -> dict[str, Any]:
        entry = registry.set_stable(name, req.ref, reason=req.reason, actor=principal.actor)
        return set_stable_report(entry)

    return mutation(request, principal, body.raw, act)


@router.get(
    "/policies/{name}/versions/{ref}/export",
    summary="A version as a portable export document (spec, metadata, digest)",
)
def export(
    name: str, ref: str, request: Request, _: Principal = Depends(require(Permission.READ))
) -> Response:
    return render_json(server_state(request).registry.export_version(name, ref))


@router.post(
    "/policies/import",
    summary="Import an exported version; its digest is verified",
    openapi_extra=with_extra(
        {"requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "description": "A document from the export endpoint."}}}}},
        IDEMPOTENCY_HEADER,
    ),
)  # fmt: skip
def import_(
    request: Request,
    principal: Principal = Depends(require(Permission.IMPORT)),
    body: Body = Depends(json_body(lambda lim: lim.push_body_bytes)),
) -> Response:
    document = any_object(body.data)
    registry = server_state(request).registry

    def act() -> dict[str, Any]:
        return import_report(registry.import_version(document, source="request body"))

    return mutation(request, principal, body.raw, act)
