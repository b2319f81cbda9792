"""``POST /v1/traces``: OTLP/HTTP ingest of GenAI spans as decisions' outcomes.

An agent traced only with OpenTelemetry needs no ``record()`` calls: each span that names a
decision (see ``_otlp_map.py``) becomes that decision's event, its evaluation events late
feedback. A decision this server made (OFREP) is recorded by id; one made by an agent's own
canary is re-routed here by policy and unit key, and recorded when the variant agrees (the
splitter is deterministic). Spans of no decision are counted and ignored; spans that name a
decision that cannot be recorded are reported in ``partial_success``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, Request
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from policy_canary.errors import CanaryError, RateLimitedError, StoreError
from policy_canary.server._auth import Principal, require
from policy_canary.server._body import read_body
from policy_canary.server._otlp_decode import decode, encode, media_type
from policy_canary.server._otlp_map import Outcome, PendingSpans, outcomes
from policy_canary.server._state import ServerState, server_state
from policy_canary.serving._gate import Decision
from policy_canary.tokens import Permission

router = APIRouter(tags=["OTLP"])


@dataclass
class OtlpStats:
    """Spans seen by /v1/traces since the server started (the metrics read them)."""

    spans: int = 0
    ignored: int = 0
    rejected: int = 0
    recorded: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, spans: int, ignored: int, rejected: int, recorded: int) -> None:
        with self._lock:
            self.spans += spans
            self.ignored += ignored
            self.rejected += rejected
            self.recorded += recorded


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
    found, spans, ignored = outcomes(decode(raw, media), ingest.pending)
    stats = state.canary.stats()
    if stats.buffered + len(found) > stats.capacity:
        raise RateLimitedError(
            f"the event buffer is full ({stats.buffered:,} of {stats.capacity:,} waiting for "
            "the store); nothing was recorded, retry shortly",
            retry_after=1,
        )
    rejected: list[str] = []
    for out in found:
        try:
            decision = _decision(state, principal, out)
            decision.record(**out.record_kwargs())
            _feedback(state, decision.decision_id, out)
        except StoreError:
            raise  # 503: the exporter retries the whole batch
        except CanaryError as error:
            rejected.append(error.message)
    ingest.stats.add(spans, ignored, len(rejected), len(found) - len(rejected))
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = len(rejected)
        more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
        response.partial_success.error_message = rejected[0] + more
    return encode(response, media)


def _feedback(state: ServerState, decision_id: str, out: Outcome) -> None:
    if not out.evaluations:
        return
    scores = dict(out.evaluations)
    quality = scores.pop("quality", None)
    state.canary.feedback(decision_id, quality=quality, metrics=scores or None)


@dataclass
class OtlpIngest:
    """What one server keeps for /v1/traces: its counters and the spans awaiting a root."""

    stats: OtlpStats = field(default_factory=OtlpStats)
    pending: PendingSpans = field(default_factory=PendingSpans)


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
    media = media_type(request.headers.get("content-type"))
    state = server_state(request)
    raw = await read_body(request, limit=state.limits.events_body_bytes)
    body = await run_in_threadpool(_ingest, state, ingest_of(request), principal, raw, media)
    return Response(body, media_type=media)
