"""``POST /v1/traces``: OTLP/HTTP ingest of GenAI spans as decisions' outcomes.

An agent traced only with OpenTelemetry needs no ``record()`` calls: each span that names a
decision (see ``_otlp_map.py``) becomes that decision's event, its evaluation events late
feedback. A decision this server made (OFREP) is recorded by id; one made by an agent's own
canary is re-routed here by policy and unit key, and recorded when the variant agrees (the
splitter is deterministic). Spans of no decision are counted and ignored; spans that name a
decision that cannot be recorded are reported in ``partial_success``. Evaluations outside
every request join theirs by ``gen_ai.response.id`` (``_otlp_join.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from policy_canary.errors import CanaryError, RateLimitedError, StoreError
from policy_canary.server._auth import Principal, require
from policy_canary.server._body import read_body
from policy_canary.server._otlp_decode import decode, encode, media_type
from policy_canary.server._otlp_join import Responder, ResponseJoin
from policy_canary.server._otlp_map import LateEvaluation, Outcome, PendingSpans, outcomes
from policy_canary.server._otlp_metrics import OtlpCollector, OtlpStats
from policy_canary.server._state import ServerState, server_state
from policy_canary.serving._gate import Decision
from policy_canary.tokens import Permission

router = APIRouter(tags=["OTLP"])


def _decision(state: ServerState, principal: Principal, out: Outcome) -> Decision:
    """The decision ``out`` belongs to; :class:`CanaryError` says why it cannot be recorded."""
    ref = out.reference
    if ref.decision_id is not None and state.decisions.policy_of(ref.decision_id) is not None:
        (decision,) = state.decisions.peek([ref.decision_id])
        principal.authorize(Permission.RECORD, decision.policy)
        state.decisions.take([ref.decision_id])
        return decision
    if ref.policy is None or ref.variant is None or ref.unit_key is None:
        raise CanaryError(
            f"decision {ref.decision_id!r} was not made by this server, and the span has no "
            "feature_flag.key, feature_flag.result.variant and feature_flag.context.id to "
            "route it again"
        )
    principal.authorize(Permission.RECORD, ref.policy)
    decision = state.canary.gate(ref.policy).route(ref.unit_key)
    if decision.version.label != ref.variant:
        raise CanaryError(
            f"{ref.policy!r} now routes {ref.unit_key[:40]!r} to {decision.version.label}, "
            f"not {ref.variant}: the routing moved since the span was recorded"
        )
    return decision


def _ingest(
    state: ServerState, ingest: OtlpIngest, principal: Principal, raw: bytes, media: str
) -> bytes:
    found = outcomes(decode(raw, media), ingest.pending)
    stats = state.canary.stats()
    if stats.buffered + len(found.outcomes) > stats.capacity:
        raise RateLimitedError(
            f"the event buffer is full ({stats.buffered:,} of {stats.capacity:,} waiting for "
            "the store); nothing was recorded, retry shortly",
            retry_after=1,
        )
    rejected: list[str] = []
    rejected_spans = late_rejected = joined = 0
    for out in found.outcomes:
        try:
            decision = _decision(state, principal, out)
            decision.record(**out.record_kwargs())
        except StoreError:
            raise  # 503: the exporter retries the whole batch
        except CanaryError as error:
            rejected.append(error.message)
            rejected_spans += out.spans
            continue
        responder = Responder(decision.decision_id, decision.policy)
        early = ingest.responses.remember(out.response_ids, responder)
        try:
            _feedback(state, decision.decision_id, dict(out.evaluations))
            joined += _join(state, principal, responder, early)
        except StoreError:
            raise
        except CanaryError as error:  # the event stands; only a score was refused
            rejected.append(f"the request was recorded but not its evaluation: {error.message}")
    for late in found.evaluations:
        scored = ingest.responses.resolve(late)
        if scored is not None:  # else kept until its response is recorded
            try:
                joined += _join(state, principal, scored, [late])
            except StoreError:
                raise
            except CanaryError as error:
                rejected.append(error.message)
                late_rejected += 1  # its span
    accepted = sum(out.spans for out in found.outcomes) - rejected_spans
    rejected_spans += late_rejected
    ingest.stats.add(accepted=accepted, unattributed=found.unattributed - late_rejected,
                     rejected=rejected_spans, joined=joined)  # fmt: skip
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected_spans
        more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
        response.partial_success.error_message = rejected[0] + more
    return encode(response, media)


def _feedback(state: ServerState, decision_id: str, scores: dict[str, float]) -> None:
    if not scores:
        return
    quality = scores.pop("quality", None)
    state.canary.feedback(decision_id, quality=quality, metrics=scores or None)


def _join(
    state: ServerState, principal: Principal, to: Responder, evaluations: list[LateEvaluation]
) -> int:
    """Attach evaluations that named ``to``'s response; how many were attached."""
    if not evaluations:
        return 0
    principal.authorize(Permission.RECORD, to.policy)
    _feedback(state, to.decision_id, {e.name: e.score for e in evaluations})
    return len(evaluations)


@dataclass
class OtlpIngest:
    """What one server keeps for /v1/traces: counters, spans awaiting a root, response ids."""

    stats: OtlpStats = field(default_factory=OtlpStats)
    pending: PendingSpans = field(default_factory=PendingSpans)
    responses: ResponseJoin = field(default_factory=ResponseJoin)

    def collector(self) -> OtlpCollector:
        """Its ``policy_canary_otlp_*`` Prometheus series."""
        return OtlpCollector(self.stats, pending=self.pending.size,
                             waiting=self.responses.waiting)  # fmt: skip


def ingest_of(request: Request) -> OtlpIngest:
    """The :class:`OtlpIngest` of the app serving ``request``."""
    found = request.app.state.otlp
    assert isinstance(found, OtlpIngest), "create_app() sets app.state.otlp"
    return found


@router.post("/v1/traces", summary="OTLP/HTTP trace export: spans as decisions' outcomes")
async def traces(
    request: Request,
    principal: Principal = Depends(require(Permission.RECORD, per_policy=True)),
) -> Response:
    ingest = ingest_of(request)
    try:
        media = media_type(request.headers.get("content-type"))
        state = server_state(request)
        raw = await read_body(request, limit=state.limits.events_body_bytes)
        body = await run_in_threadpool(_ingest, state, ingest, principal, raw, media)
    except CanaryError as error:
        ingest.stats.refused(error)
        raise
    return Response(body, media_type=media)
