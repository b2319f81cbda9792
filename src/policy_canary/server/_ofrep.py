"""OFREP: the OpenFeature Remote Evaluation Protocol over the library's gates.

A flag is a policy; ``context.targetingKey`` is the unit key; the value is the serving
version's spec. Routing is ``Gate.route()`` itself, so assignments are the Python SDK's.
Every evaluation is a decision: its id (``metadata.decisionId``) is what
``POST /api/v1/events`` and ``/api/v1/feedback`` take.
"""

from __future__ import annotations

import hashlib
import json

from fastapi import APIRouter, Depends, Header, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from policy_canary.errors import CanaryError, ErrorCode, InputError
from policy_canary.server._auth import Principal, require
from policy_canary.server._body import parse_json, read_body
from policy_canary.server._errors import ofrep_error
from policy_canary.server._ofrep_body import evaluation
from policy_canary.server._render import render_json
from policy_canary.server._state import ServerState, server_state
from policy_canary.serving import Decision, Gate
from policy_canary.tokens import Permission

router = APIRouter(prefix="/ofrep/v1", tags=["OFREP"])

_REQUEST = {
    "requestBody": {
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "context": {
                            "type": "object",
                            "description": "targetingKey: the unit key (user, session...).",
                        }
                    },
                }
            }
        }
    }
}


class _ContextError(Exception):
    """An OFREP request whose body or context cannot be used."""

    def __init__(self, error: CanaryError, *, parse: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.parse = parse


async def _context(request: Request, state: ServerState) -> str | None:
    """The targeting key from the request body (:class:`_ContextError` when unusable)."""
    try:
        raw = await read_body(request, limit=state.limits.ofrep_body_bytes)
        data = parse_json(raw, request.headers.get("content-type"), optional=True)
    except InputError as error:
        raise _ContextError(error, parse=error.code is ErrorCode.INVALID_INPUT) from None
    context = data.get("context", {}) if isinstance(data, dict) else None
    if not isinstance(context, dict):
        raise _ContextError(InputError("'context' must be an object"))
    key = context.get("targetingKey")
    if key is not None and not isinstance(key, str):
        raise _ContextError(InputError("context.targetingKey must be a string"))
    return key


def _route(state: ServerState, gate: Gate, unit: str | None) -> Decision:
    decision = gate.route(unit)
    state.decisions.add(decision)
    return decision


@router.post(
    "/evaluate/flags/{key}", summary="Evaluate one flag (policy) for a context",
    openapi_extra=_REQUEST,
)  # fmt: skip
async def evaluate(
    key: str,
    request: Request,
    _: Principal = Depends(require(Permission.EVALUATE, policy_param="key")),
) -> Response:
    state = server_state(request)
    try:
        unit = await _context(request, state)
        gate = state.canary._gates.get(key)  # loaded: no thread, no store
        if gate is None:
            gate = await run_in_threadpool(state.canary.gate, key)  # the first use reads it
        decision = _route(state, gate, unit)
    except _ContextError as failed:
        return ofrep_error(failed.error, key, parse=failed.parse)
    except CanaryError as error:
        return ofrep_error(error, key)
    return Response(state.bodies.body(decision), media_type="application/json")


def _gates(state: ServerState, principal: Principal) -> list[Gate]:
    """The gates of every policy with a stable version that the token may evaluate."""
    names = [
        s.name
        for s in state.registry.policies()
        if s.stable is not None and principal.allows(Permission.EVALUATE, s.name)
    ]
    return [state.canary.gate(name) for name in names]


def _etag(gates: list[Gate], unit: str | None) -> str:
    tables = [
        (g.policy, g.table.epoch, g.table.stable.id, g.table.rollout_id, g.table.share_bp)
        for g in gates
    ]
    text = json.dumps([unit, tables], sort_keys=True)
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


@router.post(
    "/evaluate/flags", summary="Evaluate every flag (policy) the token may evaluate",
    openapi_extra=_REQUEST,
)  # fmt: skip
async def evaluate_all(
    request: Request,
    principal: Principal = Depends(require(Permission.EVALUATE, per_policy=True)),
    if_none_match: str | None = Header(None),
) -> Response:
    state = server_state(request)
    try:
        unit = await _context(request, state)
        gates = await run_in_threadpool(_gates, state, principal)
    except _ContextError as failed:
        return ofrep_error(failed.error, None, parse=failed.parse)
    except CanaryError as error:
        return ofrep_error(error, None)
    etag = _etag(gates, unit)
    if if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers={"ETag": etag})
    flags = [evaluation(_route(state, gate, unit)) for gate in gates]
    return render_json({"flags": flags}, headers={"ETag": etag})
