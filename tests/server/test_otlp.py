"""POST /v1/traces: OTLP/HTTP ingest of GenAI spans, both encodings, as decisions' outcomes."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from _api_support import Api
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from _serving import store_down
from policy_canary.registry import Registry
from policy_canary.store.schema import events, feedback

POLICY = "support-agent"
TRACE = "5b8efff798038103d269b633813fc60c"


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}  # 64-bit ints as strings
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def _span(span_id: str, name: str, attrs: dict[str, Any], *, parent: str = "",
          ms: int = 250, events_: list[dict[str, Any]] | None = None,
          error: bool = False) -> dict[str, Any]:  # fmt: skip
    start = 1_700_000_000_000_000_000
    return {
        "traceId": TRACE, "spanId": span_id, "parentSpanId": parent, "name": name, "kind": 1,
        "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + ms * 1_000_000),
        "attributes": [_attr(k, v) for k, v in attrs.items()],
        "events": events_ or [],
        "status": {"code": 2 if error else 0},
    }  # fmt: skip


def _export(*spans: dict[str, Any]) -> dict[str, Any]:
    return {"resourceSpans": [{"resource": {"attributes": [_attr("service.name", "agent")]},
                               "scopeSpans": [{"scope": {"name": "agent"},
                                               "spans": list(spans)}]}]}  # fmt: skip


def _evaluation(key: str, variant: str, *, deprecated: bool = False) -> dict[str, Any]:
    names = ("feature_flag.variant", "feature_flag.provider_name") if deprecated else (
        "feature_flag.result.variant", "feature_flag.provider.name")  # fmt: skip
    return {"name": "feature_flag.evaluation", "timeUnixNano": "1700000000000000000",
            "attributes": [_attr("feature_flag.key", POLICY), _attr(names[0], variant),
                           _attr(names[1], "policy-canary"),
                           _attr("feature_flag.context.id", key)]}  # fmt: skip


def _agent_request(key: str, variant: str = "v1", **kw: Any) -> list[dict[str, Any]]:
    """An invoke_agent root span, the evaluation on it, and a chat child with usage."""
    root = _span("00f067aa0ba902b7", "invoke_agent support", {"gen_ai.operation.name":
                 "invoke_agent"}, ms=840, events_=[_evaluation(key, variant, **kw)])  # fmt: skip
    chat = _span("00f067aa0ba902b8", "chat gpt-large", {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-large",
        "gen_ai.usage.input_tokens": 812, "gen_ai.usage.output_tokens": 164,
    }, parent="00f067aa0ba902b7", ms=600, events_=[{
        "name": "gen_ai.evaluation.result", "timeUnixNano": "1700000000000000000",
        "attributes": [_attr("gen_ai.evaluation.name", "quality"),
                       _attr("gen_ai.evaluation.score.value", 0.75)]}])  # fmt: skip
    return [root, chat]


def _post(api: Api, body: bytes, content_type: str, who: str | None = "agent",
          **headers: str) -> Any:  # fmt: skip
    return api.client.post("/v1/traces", content=body, headers=api.headers(
        who, {"Content-Type": content_type, **headers}))  # fmt: skip


def _stored(api: Api) -> list[dict[str, Any]]:
    api.canary.flush()
    with api.store.read() as conn:
        return [dict(r) for r in conn.execute(select(events)).mappings()]


@pytest.fixture
def seeded(api: Api) -> Api:
    Registry(api.store, clock=api.clock).register(POLICY, {"prompt": "hi"}, message="m",
                                                  author="t")  # fmt: skip
    return api


def test_a_json_export_records_latency_tokens_model_and_feedback(seeded: Api) -> None:
    body = json.dumps(_export(*_agent_request("user-1"))).encode()
    response = _post(seeded, body, "application/json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert json.loads(response.content) == {}  # no partial_success: everything accepted
    (row,) = _stored(seeded)
    assert row["policy"] == POLICY
    assert row["latency_ms"] == pytest.approx(840.0)  # the root invoke_agent span
    assert (row["input_tokens"], row["output_tokens"], row["model"]) == (812, 164, "gpt-large")
    assert row["error"] is False
    with seeded.store.read() as conn:
        (score,) = conn.execute(select(feedback.c.quality)).scalars().all()
    assert score == 0.75


def test_a_gzipped_protobuf_export_with_the_deprecated_names_and_an_error(seeded: Api) -> None:
    spans = _agent_request("user-2", deprecated=True)
    spans[1]["attributes"].append(_attr("error.type", "timeout"))
    from google.protobuf import json_format

    from policy_canary.server._otlp_decode import decode

    message = decode(json.dumps(_export(*spans)).encode(), "application/json")
    assert isinstance(json_format.MessageToDict(message), dict)
    body = gzip.compress(message.SerializeToString())
    response = _post(seeded, body, "application/x-protobuf", **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 0
    (row,) = _stored(seeded)
    assert row["error"] is True


def test_a_wrong_variant_is_a_partial_success_and_spans_of_no_decision_are_ignored(
    seeded: Api,
) -> None:
    unrelated = _span("00f067aa0ba90001", "GET /health", {"http.route": "/health"})
    body = json.dumps(_export(*_agent_request("user-3", variant="v7"), unrelated)).encode()
    response = _post(seeded, body, "application/json")
    assert response.status_code == 200
    partial = json.loads(response.content)["partialSuccess"]
    assert partial["rejectedSpans"] == "2"  # the refused request's root and its chat span
    assert "routes 'user-3' to v1, not v7" in partial["errorMessage"]
    assert _stored(seeded) == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [(b"\xff\xff\xff", "application/x-protobuf", 400),
     (b"{not json", "application/json", 400),
     (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"spanId": "zz"}]}]}]}',
      "application/json", 400),
     (b"{}", "text/plain", 415)],
)  # fmt: skip
def test_malformed_exports_are_refused(
    seeded: Api, body: bytes, content_type: str, status: int
) -> None:
    assert _post(seeded, body, content_type).status_code == status


def test_the_cap_applies_after_decompression(seeded: Api) -> None:
    limit = seeded.client.app.state.server.limits.events_body_bytes
    bomb = gzip.compress(b"\x00" * (limit + 1))
    response = _post(seeded, bomb, "application/x-protobuf", **{"Content-Encoding": "gzip"})
    assert response.status_code == 413


def test_only_agents_may_export(seeded: Api) -> None:
    body = json.dumps(_export(*_agent_request("user-4"))).encode()
    assert _post(seeded, body, "application/json", who="viewer").status_code == 403
    assert _post(seeded, body, "application/json", who=None).status_code == 401


def test_a_full_buffer_is_429_with_retry_after(store: Any, clock: Any) -> None:
    from _api_support import make_api

    apis = make_api(store, clock, buffer_size=1)
    api = next(apis)
    try:
        Registry(store, clock=clock).register(POLICY, {"prompt": "hi"}, message="m", author="t")
        api.canary.gate(POLICY).route("x").record(latency_ms=1.0)  # the one slot is taken
        body = json.dumps(_export(*_agent_request("user-5"))).encode()
        response = _post(api, body, "application/json")
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
    finally:
        apis.close()


def _samples(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = api.get("/metrics", who="viewer").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("policy_canary_otlp_")}  # fmt: skip


def test_metrics_count_spans_by_outcome_and_exports_by_result(seeded: Api) -> None:
    unrelated = _span("00f067aa0ba90001", "GET /health", {"http.route": "/health"})
    _post(seeded, json.dumps(_export(*_agent_request("user-1"), unrelated)).encode(),
          "application/json")  # fmt: skip
    refused = _agent_request("user-3", variant="v7")
    for span in refused:
        span["traceId"] = "cd" * 16  # another request, in a trace of its own
    _post(seeded, json.dumps(_export(*refused)).encode(), "application/json")
    _post(seeded, b"{not json", "application/json")
    limit = seeded.client.app.state.server.limits.events_body_bytes
    _post(seeded, gzip.compress(b"\x00" * (limit + 1)), "application/x-protobuf",
          **{"Content-Encoding": "gzip"})  # fmt: skip
    samples = _samples(seeded)
    spans = {dict(k[1])["outcome"]: v for k, v in samples.items()
             if k[0] == "policy_canary_otlp_spans_total"}  # fmt: skip
    assert spans == {"accepted": 2, "unattributed": 1, "rejected": 2}
    exports = {dict(k[1])["result"]: v for k, v in samples.items()
               if k[0] == "policy_canary_otlp_exports_total"}  # fmt: skip
    assert exports == {"accepted": 2, "malformed": 1, "too_large": 1, "buffer_full": 0,
                       "store_unavailable": 0, "refused": 0}  # fmt: skip
    assert samples[("policy_canary_otlp_pending_spans", ())] == 1  # /health awaits a root
    assert samples[("policy_canary_otlp_evaluations_waiting", ())] == 0
    labels = {name for key in samples for name, _ in key[1]}
    assert labels <= {"outcome", "result"}  # never a unit key, span id or decision id


def _evaluator_span(span_id: str, response_id: str, score: float, *,
                    on_span: bool = False) -> dict[str, Any]:  # fmt: skip
    """A judge's span in a trace of its own: its evaluation names the response it scored."""
    names = [_attr("gen_ai.evaluation.name", "quality"),
             _attr("gen_ai.evaluation.score.value", score)]  # fmt: skip
    span_attrs = {"gen_ai.operation.name": "evaluate"}
    if on_span:
        span_attrs["gen_ai.response.id"] = response_id
    else:
        names.append(_attr("gen_ai.response.id", response_id))
    span = _span(span_id, "evaluate", span_attrs, events_=[
        {"name": "gen_ai.evaluation.result", "timeUnixNano": "1700000000000000000",
         "attributes": names}])  # fmt: skip
    span["traceId"] = "ab" * 16
    return span


def _answered(key: str, response_id: str) -> list[dict[str, Any]]:
    """An agent request whose chat span carries ``gen_ai.response.id`` and no evaluation."""
    root, chat = _agent_request(key)
    chat["events"] = []
    chat["attributes"].append(_attr("gen_ai.response.id", response_id))
    return [root, chat]


def _qualities(api: Api) -> list[float]:
    api.canary.flush()
    with api.store.read() as conn:
        return list(conn.execute(select(feedback.c.quality)).scalars().all())


@pytest.mark.parametrize("on_span", [False, True])
def test_an_evaluation_in_a_later_export_joins_by_response_id(seeded: Api, on_span: bool) -> None:
    body = json.dumps(_export(*_answered("user-1", "chatcmpl-123"))).encode()
    assert _post(seeded, body, "application/json").status_code == 200
    assert _qualities(seeded) == []
    judge = _evaluator_span("00000000000000e1", "chatcmpl-123", 0.25, on_span=on_span)
    response = _post(seeded, json.dumps(_export(judge)).encode(), "application/json")
    assert response.status_code == 200
    assert json.loads(response.content) == {}
    assert _qualities(seeded) == [0.25]
    (row,) = _stored(seeded)
    with seeded.store.read() as conn:
        (decision,) = conn.execute(select(feedback.c.decision_id)).scalars().all()
    assert decision == row["decision_id"]
    assert _samples(seeded)[("policy_canary_otlp_evaluations_joined_total", ())] == 1


def test_an_evaluation_before_its_response_waits_for_it(seeded: Api) -> None:
    judge = _evaluator_span("00000000000000e2", "chatcmpl-9", 0.5)
    other = _evaluator_span("00000000000000e3", "chatcmpl-never", 0.1)
    _post(seeded, json.dumps(_export(judge, other)).encode(), "application/json")
    assert _samples(seeded)[("policy_canary_otlp_evaluations_waiting", ())] == 2
    assert _qualities(seeded) == []
    _post(seeded, json.dumps(_export(*_answered("user-2", "chatcmpl-9"))).encode(),
          "application/json")  # fmt: skip
    assert _qualities(seeded) == [0.5]
    samples = _samples(seeded)
    assert samples[("policy_canary_otlp_evaluations_waiting", ())] == 1  # chatcmpl-never
    assert samples[("policy_canary_otlp_evaluations_joined_total", ())] == 1


def test_the_same_export_joins_a_response_and_its_evaluation(seeded: Api) -> None:
    spans = [*_answered("user-3", "resp-1"), _evaluator_span("00000000000000e4", "resp-1", 0.9)]
    _post(seeded, json.dumps(_export(*spans)).encode(), "application/json")
    assert _qualities(seeded) == [0.9]


def test_an_evaluation_of_another_response_does_not_attach(seeded: Api) -> None:
    _post(seeded, json.dumps(_export(*_answered("user-4", "resp-a"))).encode(),
          "application/json")  # fmt: skip
    _post(seeded, json.dumps(_export(_evaluator_span("00000000000000e5", "resp-b", 0.3))).encode(),
          "application/json")  # fmt: skip
    assert _qualities(seeded) == []


def test_store_trouble_is_503_with_retry_after_and_counted(seeded: Api) -> None:
    body = json.dumps(_export(*_agent_request("user-6"))).encode()
    unrelated = _span("00f067aa0ba90001", "GET /health", {"http.route": "/health"})
    _post(seeded, json.dumps(_export(unrelated)).encode(), "application/json")  # token cached
    with store_down(seeded.store):  # the policy's table was never loaded: nothing to route
        response = _post(seeded, body, "application/json")
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "store_unavailable"
    assert response.headers["retry-after"] == "1"
    samples = _samples(seeded)
    assert samples[("policy_canary_otlp_exports_total", (("result", "store_unavailable"),))] == 1
    assert samples[("policy_canary_otlp_spans_total", (("outcome", "accepted"),))] == 0
    assert _post(seeded, body, "application/json").status_code == 200  # the retry succeeds
    assert len(_stored(seeded)) == 1


def test_a_late_evaluation_with_a_bad_score_is_a_partial_success(seeded: Api) -> None:
    _post(seeded, json.dumps(_export(*_answered("user-5", "resp-c"))).encode(),
          "application/json")  # fmt: skip
    judge = _evaluator_span("00000000000000e6", "resp-c", 7.5)  # quality is within 0..1
    response = _post(seeded, json.dumps(_export(judge)).encode(), "application/json")
    assert response.status_code == 200
    partial = json.loads(response.content)["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "quality" in partial["errorMessage"]
    assert _qualities(seeded) == []
    spans = _samples(seeded)
    assert spans[("policy_canary_otlp_spans_total", (("outcome", "rejected"),))] == 1
    assert spans[("policy_canary_otlp_spans_total", (("outcome", "unattributed"),))] == 0
