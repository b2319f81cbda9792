"""``/api/v1``: start, watch and steer rollouts; check plans."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from policy_canary.controller._rollouts import stable_baseline, stable_coverage
from policy_canary.errors import InputError, PlanError
from policy_canary.plan import MAX_PLAN_BYTES, RolloutPlan
from policy_canary.reports import plan_check_report
from policy_canary.server._auth import Principal, require
from policy_canary.server._body import Body, json_body, model, schema
from policy_canary.server._render import render_json
from policy_canary.server._routes import IDEMPOTENCY_HEADER, mutation, with_extra
from policy_canary.server._state import server_state
from policy_canary.tokens import Permission

router = APIRouter(prefix="/api/v1", tags=["rollouts"])

_PLAN = "A plan as YAML/JSON text or as an object; omitted: the built-in plan."


class StartRequest(BaseModel):
    """Start rolling a candidate out under a plan."""

    candidate: str = Field(..., description="Version to roll out (id, prefix, vN, latest).")
    plan: str | dict[str, Any] | None = Field(None, description=_PLAN)
    reason: str = ""
    force: bool = Field(False, description="Start a candidate an earlier rollout rejected.")
    require_metrics: bool = Field(
        False,
        description="Refuse the start when stable's recent traffic lacks a guardrail's metric.",
    )


class ActRequest(BaseModel):
    """A manual transition: why (recorded in the audit trail)."""

    reason: str


class PromoteRequest(BaseModel):
    """Advance one stage, or with ``full`` promote now."""

    reason: str
    full: bool = False


class CheckRequest(BaseModel):
    """Validate a plan and size its stages (the CLI's ``plan check``)."""

    plan: str | dict[str, Any] = Field(..., description=_PLAN)
    rps: float | None = Field(None, ge=0.0, description="Requests per second of the policy.")
    baseline_rates: dict[str, float] = Field(
        default_factory=dict, description="Stable's rate of boolean metrics, e.g. error: 0.01."
    )
    policy: str | None = Field(None, description="Size against this policy's stable traffic.")


def parse_plan(value: str | dict[str, Any] | None) -> RolloutPlan | None:
    """A plan given as text (YAML or JSON, errors name line:column) or as an object."""
    if value is None:
        return None
    if isinstance(value, dict):
        return RolloutPlan.from_dict(value, source="plan")
    if len(value.encode("utf-8")) > MAX_PLAN_BYTES:
        raise PlanError(f"the plan is over {MAX_PLAN_BYTES:,} bytes")
    return RolloutPlan.loads(value, source="plan")


@router.get("/rollouts", summary="Active rollouts (of a policy, or its latest rollout)")
def status(
    request: Request,
    policy: str | None = Query(None, description="Only this policy."),
    _: Principal = Depends(require(Permission.READ)),
) -> Response:
    return render_json([s.to_dict() for s in server_state(request).rollouts.status(policy)])


@router.get("/rollouts/{rollout_id}", summary="One rollout by id")
def get(
    rollout_id: str, request: Request, _: Principal = Depends(require(Permission.READ))
) -> Response:
    return render_json(server_state(request).rollouts.get(rollout_id).to_dict())


@router.get("/rollouts/{rollout_id}/trace", summary="A rollout's decision trace, oldest first")
def trace(
    rollout_id: str, request: Request, _: Principal = Depends(require(Permission.READ))
) -> Response:
    return render_json(server_state(request).rollouts.trace(rollout_id))


@router.get("/policies/{name}/rollouts", summary="Every rollout of a policy, newest first")
def history(
    name: str, request: Request, _: Principal = Depends(require(Permission.READ))
) -> Response:
    return render_json([s.to_dict() for s in server_state(request).rollouts.history(name)])


@router.post(
    "/policies/{name}/rollouts",
    summary="Start a rollout of a candidate version",
    status_code=201,
    openapi_extra=with_extra(schema(StartRequest), IDEMPOTENCY_HEADER),
)
def start(
    name: str,
    request: Request,
    principal: Principal = Depends(require(Permission.ACT, policy_param="name")),
    body: Body = Depends(json_body(lambda lim: lim.body_bytes)),
) -> Response:
    req = model(StartRequest, body.data)
    plan = parse_plan(req.plan)
    rollouts = server_state(request).rollouts

    def act() -> dict[str, Any]:
        row = rollouts.start(
            name,
            candidate=req.candidate,
            plan=plan,
            actor=principal.actor,
            reason=req.reason,
            force=req.force,
            require_metrics=req.require_metrics,
        )
        coverage = rollouts.metrics_coverage(name, plan)
        return {
            **rollouts.get(row.id).to_dict(),
            "metrics_coverage": [c.to_dict() for c in coverage],
        }

    return mutation(request, principal, body.raw, act, status=201)


def _transition(verb: str, request_model: type[ActRequest] | type[PromoteRequest]) -> Any:
    def endpoint(
        name: str,
        request: Request,
        principal: Principal = Depends(require(Permission.ACT, policy_param="name")),
        body: Body = Depends(json_body(lambda lim: lim.body_bytes)),
    ) -> Response:
        req = model(request_model, body.data)
        rollouts = server_state(request).rollouts

        def act() -> dict[str, Any]:
            who = principal.actor
            if verb == "rollback":
                return rollouts.rollback(name, reason=req.reason, actor=who).to_dict()
            if isinstance(req, PromoteRequest):
                row = rollouts.promote(name, reason=req.reason, actor=who, full=req.full)
            else:
                row = getattr(rollouts, verb)(name, reason=req.reason, actor=who)
            return rollouts.get(row.id).to_dict()

        return mutation(request, principal, body.raw, act)

    endpoint.__name__ = verb
    return endpoint


_VERBS = {
    "pause": "Hold the candidate at its current share",
    "resume": "Resume a paused rollout",
    "promote": "Advance one stage (or promote with full)",
    "rollback": "Roll back the active rollout, or restore the previous stable",
    "abort": "Stop the rollout without judging the candidate",
}
for _verb, _summary in _VERBS.items():
    _model = PromoteRequest if _verb == "promote" else ActRequest
    router.add_api_route(
        f"/policies/{{name}}/rollout/{_verb}",
        _transition(_verb, _model),
        methods=["POST"],
        summary=_summary,
        openapi_extra=with_extra(schema(_model), IDEMPOTENCY_HEADER),
    )


@router.post(
    "/plans/check",
    summary="Validate a plan and size its stages (preflight)",
    tags=["plans"],
    openapi_extra=schema(CheckRequest),
)
def check(
    request: Request,
    _: Principal = Depends(require(Permission.READ)),
    body: Body = Depends(json_body(lambda lim: lim.body_bytes)),
) -> Response:
    req = model(CheckRequest, body.data)
    plan = parse_plan(req.plan)
    assert plan is not None, "the model requires a plan"
    for metric, rate in req.baseline_rates.items():
        if not 0.0 < rate < 1.0:
            raise InputError(f"baseline_rates.{metric}: give a rate in (0, 1), e.g. 0.01")
    store = server_state(request).canary.store
    baseline = stable_baseline(store, req.policy, plan) if req.policy else None
    coverage = stable_coverage(store, req.policy, plan) if req.policy else None
    rows = plan.preflight(
        requests_per_second=req.rps, baseline_rates=req.baseline_rates, baseline=baseline
    )
    return render_json(plan_check_report(plan, rows, coverage))


@router.get("/plans/default", summary="The built-in plan", tags=["plans"])
def default_plan(_: Principal = Depends(require(Permission.READ))) -> Response:
    plan = RolloutPlan.default()
    return render_json({"plan_hash": plan.digest, "plan": plan.to_dict()})
