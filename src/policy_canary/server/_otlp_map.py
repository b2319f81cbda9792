"""From OpenTelemetry GenAI spans to decisions' outcomes (semantic conventions v1.37.0).

A span names its decision by the ``policy_canary.decision_id`` attribute, or by
``feature_flag.key`` (the policy), ``feature_flag.result.variant`` (the version label;
deprecated ``feature_flag.variant``) and ``feature_flag.context.id`` (the unit key), on the
span or on its ``feature_flag.evaluation`` event. The request is the root ``invoke_agent``
span among the reference's ancestors in the same export (else the span itself): its
duration is the latency; ERROR status or ``error.type`` there or below is a failure;
``gen_ai.usage.*_tokens`` and the model are summed and taken from it and its descendants;
``gen_ai.evaluation.result`` events there or below are late feedback, and
``gen_ai.guardrail.result`` events safety flags (their ``gen_ai.guardrail.name``, unless
``gen_ai.guardrail.triggered`` is false or ``gen_ai.guardrail.decision`` says it passed).
An evaluation on a span outside every request (an evaluator exporting on its own) that
carries ``gen_ai.response.id`` is handed back to be joined by that id (``_otlp_join.py``)
with the request whose spans carry the same ``gen_ai.response.id``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

DECISION_ID = "policy_canary.decision_id"
RESPONSE_ID = "gen_ai.response.id"
EVALUATION_RESULT = "gen_ai.evaluation.result"
EVALUATION_EVENT = "feature_flag.evaluation"
_VARIANT = ("feature_flag.result.variant", "feature_flag.variant")
_ERROR = Status.StatusCode.STATUS_CODE_ERROR
GUARDRAIL_EVENT = "gen_ai.guardrail.result"
_USAGE = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens")
#: Guardrail outcomes that mean nothing was flagged.
_CLEAN = frozenset({"allow", "allowed", "pass", "passed", "none"})


def _flag(event: Mapping[str, Any]) -> str | None:
    """The safety flag a guardrail event raises: its name, unless it says it let it pass."""
    name = event.get("gen_ai.guardrail.name")
    if not isinstance(name, str) or not name:
        return None
    if event.get("gen_ai.guardrail.triggered") is False:
        return None
    decision = event.get("gen_ai.guardrail.decision")
    if isinstance(decision, str) and decision.lower() in _CLEAN:
        return None
    return name[:64]


_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})
#: The attributes the mapping reads; the others are skipped unread (most of a span's).
READ = frozenset({
    DECISION_ID, RESPONSE_ID, "feature_flag.key", *_VARIANT, "feature_flag.context.id",
    "gen_ai.operation.name", "error.type", "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens", "gen_ai.response.model", "gen_ai.request.model",
    "gen_ai.guardrail.name", "gen_ai.guardrail.triggered", "gen_ai.guardrail.decision",
    "gen_ai.evaluation.name", "gen_ai.evaluation.score.value",
})  # fmt: skip


def attributes(items: Iterable[KeyValue]) -> dict[str, Any]:
    """The key-values the mapping reads (see :data:`READ`), as scalars; arrays and maps not."""
    found: dict[str, Any] = {}
    for kv in items:  # the ingest's hot loop: one pass, nothing built for unread keys
        key = kv.key
        if key in READ:
            value = kv.value
            kind = value.WhichOneof("value")
            found[key] = getattr(value, kind) if kind in _SCALARS else None
    return found


@dataclass(frozen=True, slots=True)
class Reference:
    """What a span says about its decision."""

    decision_id: str | None
    policy: str | None
    variant: str | None
    unit_key: str | None


@dataclass
class Outcome:
    """One request's outcome, ready for ``Decision.record()`` and feedback."""

    reference: Reference
    latency_ms: float
    error: bool
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None
    evaluations: dict[str, float] = field(default_factory=dict)
    safety_flags: list[str] = field(default_factory=list)
    #: The spans of this request in the export (its subtree and the span naming it).
    spans: int = 0
    #: The ``gen_ai.response.id`` values of its spans: late evaluations join by them.
    response_ids: set[str] = field(default_factory=set)

    def record_kwargs(self) -> dict[str, Any]:
        """Keywords for ``Decision.record()``."""
        kwargs: dict[str, Any] = {"latency_ms": self.latency_ms, "error": self.error}
        for name in ("input_tokens", "output_tokens", "model"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        if self.safety_flags:
            kwargs["safety_flags"] = tuple(sorted(set(self.safety_flags)))
        return kwargs


@dataclass(frozen=True, slots=True)
class LateEvaluation:
    """A ``gen_ai.evaluation.result`` outside every request, naming its response by id."""

    response_id: str
    name: str
    score: float


@dataclass
class Found:
    """What one export holds: requests' outcomes, span counts, evaluations to join by id."""

    outcomes: list[Outcome]
    spans: int
    unattributed: int
    evaluations: list[LateEvaluation] = field(default_factory=list)


def _score(e: Mapping[str, Any]) -> tuple[str, float] | None:
    score = e.get("gen_ai.evaluation.score.value")
    if isinstance(score, int | float) and not isinstance(score, bool):
        return str(e.get("gen_ai.evaluation.name") or "quality"), float(score)
    return None


def _late(span: Span, attrs: Mapping[str, Any]) -> Iterator[LateEvaluation]:
    """Evaluation events of ``span`` that name a response (on the event, else on the span)."""
    for event in span.events:
        if event.name != EVALUATION_RESULT:
            continue
        e = attributes(event.attributes)
        response_id = e.get(RESPONSE_ID) or attrs.get(RESPONSE_ID)
        scored = _score(e)
        if isinstance(response_id, str) and response_id and scored is not None:
            yield LateEvaluation(response_id[:256], *scored)


def _reference(span: Span, attrs: Mapping[str, Any]) -> Reference | None:
    events = span.events
    if not events and DECISION_ID not in attrs and "feature_flag.key" not in attrs:
        return None  # most spans: nothing names a decision
    sources = [attrs] + [attributes(e.attributes) for e in events
                         if e.name == EVALUATION_EVENT]  # fmt: skip
    for found in reversed(sources):  # an evaluation event is more specific than the span
        decision_id = found.get(DECISION_ID)
        policy = found.get("feature_flag.key")
        variant = next((found[k] for k in _VARIANT if found.get(k) is not None), None)
        unit_key = found.get("feature_flag.context.id")
        if isinstance(decision_id, str) or (isinstance(policy, str) and isinstance(variant, str)):
            return Reference(
                decision_id if isinstance(decision_id, str) else None,
                policy if isinstance(policy, str) else None,
                variant if isinstance(variant, str) else None,
                unit_key if isinstance(unit_key, str) else None,
            )
    return None


def _is_agent(span: Span, attrs: Mapping[str, Any]) -> bool:
    return attrs.get("gen_ai.operation.name") == "invoke_agent" or span.name.startswith(
        "invoke_agent"
    )


@dataclass
class Export:
    """The spans of one export, indexed by id, with their attributes read once."""

    spans: dict[bytes, tuple[Span, dict[str, Any]]] = field(default_factory=dict)
    children: dict[bytes, list[bytes]] = field(default_factory=dict)

    @classmethod
    def of(cls, request: ExportTraceServiceRequest) -> Export:
        export = cls()
        spans, children = export.spans, export.children
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:  # add(), inlined: the ingest's hottest loop
                    span_id = span.span_id
                    if span_id not in spans:
                        spans[span_id] = (span, attributes(span.attributes))
                        children.setdefault(span.parent_span_id, []).append(span_id)
        return export

    def add(self, span: Span, attrs: dict[str, Any]) -> None:
        if span.span_id not in self.spans:
            self.spans[span.span_id] = (span, attrs)
            self.children.setdefault(span.parent_span_id, []).append(span.span_id)

    def request_span(self, span_id: bytes) -> bytes:
        """The outermost invoke_agent ancestor of ``span_id`` in this export, else itself."""
        chosen, current = span_id, span_id
        while current in self.spans:
            span, attrs = self.spans[current]
            if _is_agent(span, attrs):
                chosen = current
            current = span.parent_span_id
        return chosen

    def subtree(self, span_id: bytes) -> Iterator[tuple[Span, dict[str, Any]]]:
        stack = [span_id]
        while stack:
            current = stack.pop()
            if current in self.spans:
                yield self.spans[current]
            stack.extend(self.children.get(current, ()))


class PendingSpans:
    """Spans that arrived before their request's root span (exports end children first).

    Kept per trace, the oldest traces forgotten beyond ``capacity`` spans; folded into the
    export that brings the root. Thread-safe.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._traces: OrderedDict[bytes, list[tuple[Span, dict[str, Any]]]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def merge(self, export: Export) -> None:
        """Add the kept spans of the export's traces to it (and forget them here)."""
        traces = {span.trace_id for span, _ in export.spans.values()}
        with self._lock:
            for trace_id in traces:
                for span, attrs in self._traces.pop(trace_id, ()):
                    self._size -= 1
                    export.add(span, attrs)

    def size(self) -> int:
        """Spans kept."""
        with self._lock:
            return self._size

    def keep(self, spans: Iterable[tuple[Span, dict[str, Any]]]) -> None:
        with self._lock:
            for span, attrs in spans:
                self._traces.setdefault(span.trace_id, []).append((span, attrs))
                self._size += 1
            while self._size > self._capacity and self._traces:
                _, dropped = self._traces.popitem(last=False)
                self._size -= len(dropped)


def outcomes(request: ExportTraceServiceRequest, pending: PendingSpans | None = None) -> Found:
    """The outcomes in an export, its span counts, and evaluations to join by response id.

    With ``pending``, spans of a trace whose request root has not arrived yet are kept
    there and joined to it when it does.
    """
    export = Export.of(request)
    arrived = set(export.spans)  # counted here; kept ones were counted when they arrived
    if pending is not None:
        pending.merge(export)
    found: dict[bytes, Outcome] = {}
    owner: dict[bytes, bytes] = {}  # span -> the request root it is counted for
    for span_id, (span, attrs) in export.spans.items():
        reference = _reference(span, attrs)
        if reference is None:
            continue
        root = export.request_span(span_id)
        if root not in found:
            found[root] = _outcome(export, root, reference)
            for s, _ in export.subtree(root):
                owner.setdefault(s.span_id, root)
        owner.setdefault(span_id, root)
    for span_id, root in owner.items():
        found[root].spans += span_id in arrived
    unreferenced = [i for i in export.spans if i not in owner]
    if pending is not None:
        pending.keep(export.spans[i] for i in unreferenced)
    late = [e for i in unreferenced if i in arrived for e in _late(*export.spans[i])]
    unattributed = sum(i in arrived for i in unreferenced)
    return Found(list(found.values()), len(arrived), unattributed, late)


def _outcome(export: Export, root: bytes, reference: Reference) -> Outcome:
    span, _ = export.spans[root]
    latency = max(span.end_time_unix_nano - span.start_time_unix_nano, 0) / 1e6
    out = Outcome(reference, latency_ms=latency, error=False)
    tokens: list[int | None] = [None, None]
    for s, attrs in export.subtree(root):
        if not out.error:
            out.error = s.status.code == _ERROR or attrs.get("error.type") is not None
        for i, key in enumerate(_USAGE):
            value = attrs.get(key)
            if type(value) is int and value >= 0:
                tokens[i] = (tokens[i] or 0) + value
        response_id = attrs.get(RESPONSE_ID)
        if isinstance(response_id, str) and response_id:
            out.response_ids.add(response_id[:256])
        if out.model is None:
            model = attrs.get("gen_ai.response.model") or attrs.get("gen_ai.request.model")
            if isinstance(model, str):
                out.model = model
        if not s.events:
            continue
        for event in s.events:
            if event.name == GUARDRAIL_EVENT:
                flag = _flag(attributes(event.attributes))
                if flag is not None:
                    out.safety_flags.append(flag)
            if event.name == EVALUATION_RESULT:
                scored = _score(attributes(event.attributes))
                if scored is not None:
                    out.evaluations[scored[0]] = scored[1]
    out.input_tokens, out.output_tokens = tokens
    return out
