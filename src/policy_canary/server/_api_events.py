"""``/api/v1/events`` and ``/api/v1/feedback``: outcomes of decisions, by OFREP or remote SDKs.

Events of OFREP evaluations name only their decision id (the server made the decision and
remembers it); events of remote SDKs carry the whole decision (``_remote_events.py``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from policy_canary.errors import CanaryError, InputError, RateLimitedError, TooLargeError
from policy_canary.server._auth import Principal, require
from policy_canary.server._body import Body, any_object, json_body
from policy_canary.server._remote_events import (
    feedback_rows,
    is_remote,
    remote_rows,
    write_feedback,
)
from policy_canary.server._remote_routed import routed_rows
from policy_canary.server._routes import IDEMPOTENCY_HEADER, mutation, with_extra
from policy_canary.server._state import server_state
from policy_canary.serving import Decision
from policy_canary.serving._outcomes import NO_FLAGS, outcome
from policy_canary.tokens import Permission

router = APIRouter(prefix="/api/v1", tags=["events"])

#: The fields of one event: exactly the keyword arguments of Decision.record().
RECORD_FIELDS = tuple(p for p in inspect.signature(Decision.record).parameters if p != "self")
FEEDBACK_FIELDS = ("decision_id", "quality", "metrics")

_NUMBER = {"type": ["number", "null"]}
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["decision_id"],
    "properties": {
        "decision_id": {"type": "string"},
        "latency_ms": _NUMBER,
        "error": {"type": ["boolean", "null"]},
        "quality": _NUMBER,
        "safety_flags": {"oneOf": [{"type": "array", "items": {"type": "string"}},
                                   {"type": "integer"}]},
        "cost_usd": _NUMBER,
        "input_tokens": {"type": ["integer", "null"]},
        "output_tokens": {"type": ["integer", "null"]},
        "model": {"type": ["string", "null"]},
        "metrics": {"type": ["object", "null"]},
        # The remote form (Canary.connect): the decision made client-side.
        "policy": {"type": "string"},
        "arm": {"type": "string", "enum": ["stable", "candidate"]},
        "rollout_id": {"type": ["string", "null"]},
        "version_digest": {"type": "string"},
        "stage": {"type": ["string", "null"]},
        "traffic_bp": {"type": "integer"},
        "scheme": {"type": "integer"},
        "sticky": {"type": "boolean"},
        "at": {"type": "string", "format": "date-time"},
    },
    "additionalProperties": False,
}  # fmt: skip
_FEEDBACK_ITEM = {
    "type": "object",
    "required": ["decision_id", "at", "key"],
    "properties": {"decision_id": {"type": "string"}, "quality": _NUMBER,
                   "metrics": {"type": ["object", "null"]},
                   "at": {"type": "string", "format": "date-time"}, "key": {"type": "string"}},
    "additionalProperties": False,
}  # fmt: skip


def _body_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _fields(item: Any, index: int) -> tuple[str, dict[str, Any]]:
    """One event's decision id and record() arguments, validated like record() does."""
    where = f"events[{index}]"
    if not isinstance(item, dict):
        raise InputError(f"{where}: an event is a JSON object, got {type(item).__name__}")
    unknown = sorted(set(item) - {"decision_id", *RECORD_FIELDS})
    if unknown:
        raise InputError(
            f"{where}: unknown field {unknown[0]!r}; an event has decision_id and "
            + ", ".join(RECORD_FIELDS)
        )
    decision_id = item.get("decision_id")
    if not isinstance(decision_id, str) or not decision_id:
        raise InputError(f"{where}: decision_id must be the decisionId that OFREP returned")
    kwargs = {k: v for k, v in item.items() if k != "decision_id"}
    flags = kwargs.get("safety_flags", NO_FLAGS)
    if isinstance(flags, list):
        kwargs["safety_flags"] = tuple(flags)
    try:  # the same validation (and messages) as record(), before anything is recorded
        values: list[Any] = [
            kwargs.get(f, NO_FLAGS if f == "safety_flags" else None) for f in RECORD_FIELDS
        ]
        outcome(*values)
    except CanaryError as exc:
        raise type(exc)(f"{where}: {exc.message}") from None
    return decision_id, kwargs


def _batch_route(
    path: str, summary: str, key: str, item: dict[str, Any]
) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """``POST /api/v1/{path}`` taking ``{key: [item, ...]}`` (documented, idempotent)."""
    body = {"type": "object", "required": [key],
            "properties": {key: {"type": "array", "items": item}}}  # fmt: skip
    return router.post(
        path, summary=summary, openapi_extra=with_extra(_body_schema(body), IDEMPOTENCY_HEADER)
    )


@_batch_route(
    "/events",
    "Record the outcomes of decisions made by OFREP evaluation (all or none)",
    "events",
    _EVENT_SCHEMA,
)
def events(
    request: Request,
    principal: Principal = Depends(require(Permission.RECORD, per_policy=True)),
    body: Body = Depends(json_body(lambda lim: lim.events_body_bytes)),
) -> Response:
    state = server_state(request)
    items = any_object(body.data).get("events")
    if not isinstance(items, list):
        raise InputError("the body needs 'events': a list of event objects")
    most = state.limits.events_per_batch
    if len(items) > most:
        raise TooLargeError(f"{len(items):,} events in one batch; send at most {most:,}")
    if items and is_remote(items[0]):
        return _remote_events(request, principal, body, items)
    parsed = [_fields(item, i) for i, item in enumerate(items)]
    ids = [did for did, _ in parsed]
    if len(set(ids)) != len(ids):
        raise InputError("the batch names a decision twice; record each decision once")
    for decision in state.decisions.peek(ids):
        principal.authorize(Permission.RECORD, decision.policy)
    stats = state.canary.stats()
    if stats.buffered + len(ids) > stats.capacity:
        raise RateLimitedError(
            f"the event buffer is full ({stats.buffered:,} of {stats.capacity:,} waiting for "
            "the store); nothing was recorded, retry shortly",
            retry_after=1,
        )

    def act() -> dict[str, Any]:
        taken = state.decisions.take(ids)
        for decision, (_, kwargs) in zip(taken, parsed, strict=True):
            decision.record(**kwargs)
        return {"accepted": len(taken)}

    return mutation(request, principal, body.raw, act, refresh=False)


def _remote_events(
    request: Request, principal: Principal, body: Body, items: list[Any]
) -> Response:
    """Events decided by a remote SDK: validated, then committed before the answer."""
    state = server_state(request)
    rows = remote_rows(items, principal, state.canary.store, state.known_refs)

    def act() -> dict[str, Any]:
        state.event_writer.write(rows)
        return {"accepted": len(rows)}

    return mutation(request, principal, body.raw, act, refresh=False)


@_batch_route(
    "/routed",
    "Store routed decisions and recorded outcomes per window (from remote SDKs)",
    "routed",
    {"type": "object"},
)
def routed(
    request: Request,
    principal: Principal = Depends(require(Permission.RECORD, per_policy=True)),
    body: Body = Depends(json_body(lambda lim: lim.events_body_bytes)),
) -> Response:
    state = server_state(request)
    rows = routed_rows(
        any_object(body.data).get("routed"), principal, state.canary.store, state.known_refs
    )

    def act() -> dict[str, Any]:
        state.canary._link.write_routed(rows)
        return {"accepted": len(rows)}

    return mutation(request, principal, body.raw, act)


@router.post(
    "/feedback",
    summary="Attach a late score to an earlier decision",
    openapi_extra=with_extra(
        _body_schema({"oneOf": [
            {"type": "object", "required": ["decision_id"], "properties": {
                "decision_id": {"type": "string"}, "quality": _NUMBER,
                "metrics": {"type": ["object", "null"]}}, "additionalProperties": False},
            {"type": "object", "required": ["feedback"], "properties": {
                "feedback": {"type": "array", "items": _FEEDBACK_ITEM}},
             "additionalProperties": False}]}),
        IDEMPOTENCY_HEADER,
    ),
)  # fmt: skip
def feedback(
    request: Request,
    principal: Principal = Depends(require(Permission.RECORD, per_policy=True)),
    body: Body = Depends(json_body(lambda lim: lim.body_bytes)),
) -> Response:
    state = server_state(request)
    data = any_object(body.data)
    if "feedback" in data and len(data) == 1:
        rows = feedback_rows(data["feedback"], principal, state.canary.store)

        def write() -> dict[str, Any]:
            done = write_feedback(state.canary._link, rows)
            return {"accepted": len(rows), "refused": done.refused, "duplicates": done.duplicates}

        return mutation(request, principal, body.raw, write)
    unknown = sorted(set(data) - set(FEEDBACK_FIELDS))
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r}; feedback has {', '.join(FEEDBACK_FIELDS)}")
    decision_id = data.get("decision_id")
    if not isinstance(decision_id, str):
        raise InputError("decision_id must be the decisionId that OFREP returned")
    policy = state.decisions.policy_of(decision_id)
    principal.authorize(Permission.RECORD, policy)

    def act() -> dict[str, Any]:
        state.canary.feedback(decision_id, quality=data.get("quality"), metrics=data.get("metrics"))
        return {"accepted": 1}

    return mutation(request, principal, body.raw, act)
