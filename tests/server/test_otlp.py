"""POST /v1/traces: OTLP/HTTP ingest of GenAI spans, both encodings, as decisions' outcomes."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from _api_support import Api
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from sqlalchemy import select

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
    assert partial["rejectedSpans"] == "1"
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
