"""Spans to outcomes, as a property: however one request's spans are split across exports.

Given an agent request (an ``invoke_agent`` root naming its decision and children with token
usage) whose spans reach the server in any number of exports, in any order as long as the
root ends last (an SDK exports a span when it ends, children first), then exactly one
outcome comes out, when the root arrives, with every child's tokens summed and the root's
duration as latency; and every span is counted once, on arrival.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from policy_canary.server._otlp_map import PendingSpans, outcomes

T0 = 1_700_000_000_000_000_000


def _kv(key: str, value: str | int) -> KeyValue:
    v = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    return KeyValue(key=key, value=v)


def _request(tokens: list[int]) -> list[Span]:
    root = Span(trace_id=b"t" * 16, span_id=b"root0000", name="invoke_agent support",
                start_time_unix_nano=T0, end_time_unix_nano=T0 + 840_000_000)  # fmt: skip
    root.attributes.append(_kv("gen_ai.operation.name", "invoke_agent"))
    root.events.add(name="feature_flag.evaluation", attributes=[
        _kv("feature_flag.key", "support-agent"), _kv("feature_flag.result.variant", "v1"),
        _kv("feature_flag.context.id", "user-1")])  # fmt: skip
    children = []
    for i, count in enumerate(tokens):
        child = Span(trace_id=b"t" * 16, span_id=f"child{i:03d}".encode(),
                     parent_span_id=(b"root0000" if i % 2 == 0 else f"child{i - 1:03d}".encode()),
                     name="chat", start_time_unix_nano=T0, end_time_unix_nano=T0 + 1)  # fmt: skip
        child.attributes.extend([_kv("gen_ai.usage.input_tokens", count),
                                 _kv("gen_ai.usage.output_tokens", 1)])  # fmt: skip
        children.append(child)
    return [*children, root]


def _export(spans: list[Span]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.extend(spans)
    return request


@st.composite
def _arrivals(draw: st.DrawFn) -> tuple[list[int], list[list[Span]]]:
    tokens = draw(st.lists(st.integers(0, 10_000), max_size=8))
    spans = _request(tokens)
    children = draw(st.permutations(spans[:-1]))
    cuts = sorted(draw(st.lists(st.integers(0, len(children)), max_size=4)))
    batches, last = [], 0
    for cut in cuts:
        batches.append(list(children[last:cut]))
        last = cut
    batches.append([*children[last:], spans[-1]])  # the root ends last
    return tokens, batches


@given(_arrivals())
def test_a_request_split_across_exports_is_one_outcome_with_all_its_usage(
    arrival: tuple[list[int], list[list[Span]]],
) -> None:
    tokens, batches = arrival
    pending = PendingSpans()
    found, counted, split = [], 0, 0
    for batch in batches:
        result = outcomes(_export(batch), pending)
        found += result.outcomes
        counted += result.spans
        split += result.unattributed + sum(o.spans for o in result.outcomes)
        if batch is not batches[-1]:
            assert result.outcomes == []  # nothing before the root arrives
    (out,) = found
    assert out.input_tokens == (sum(tokens) if tokens else None)
    assert out.output_tokens == (len(tokens) or None)
    assert out.latency_ms == 840.0
    assert out.reference.unit_key == "user-1"
    assert counted == split == len(tokens) + 1  # each span once, on arrival
    assert out.spans == len(batches[-1])  # the spans that came with the root
    assert pending.size() == 0  # the kept children were folded into the request
