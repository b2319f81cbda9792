"""Events and feedback for decisions made over OFREP: record()'s fields and messages."""

from __future__ import annotations

import pytest
from _api_support import Api, make_api, push
from sqlalchemy import func, select

from policy_canary.clock import ManualClock
from policy_canary.errors import InvalidMetricError
from policy_canary.serving import Decision
from policy_canary.store import Store
from policy_canary.store.schema import events, feedback

NAME = "support-agent"


def _decide(api: Api, key: str = "user-1", who: str = "agent") -> str:
    response = api.post(f"/ofrep/v1/evaluate/flags/{NAME}", {"context": {"targetingKey": key}}, who)
    assert response.status_code == 200, response.text
    decision_id: str = response.json()["metadata"]["decisionId"]
    return decision_id


def _stored(api: Api) -> list[dict[str, object]]:
    api.canary.flush()
    with api.store.read() as conn:
        rows = conn.execute(select(events).order_by(events.c.id)).mappings().all()
    return [dict(r) for r in rows]


def test_events_attach_to_ofrep_decisions(api: Api) -> None:
    push(api)
    first, second = _decide(api, "u1"), _decide(api, "u2")
    batch = {
        "events": [
            {"decision_id": first, "latency_ms": 120.5, "error": False, "quality": 0.9,
             "safety_flags": ["pii"], "cost_usd": 0.002, "input_tokens": 10,
             "output_tokens": 20, "model": "m1", "metrics": {"tool_calls": 2}},
            {"decision_id": second, "latency_ms": 80, "error": True},
        ]
    }  # fmt: skip
    response = api.post("/api/v1/events", batch, "agent")
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 2}
    rows = _stored(api)
    assert [r["decision_id"] for r in rows] == [first, second]
    assert rows[0]["policy"] == NAME
    assert rows[0]["quality"] == pytest.approx(0.9)
    assert rows[0]["flag_count"] == 1
    assert rows[1]["error"] is True


def test_an_invalid_event_gets_records_message_and_nothing_is_recorded(api: Api) -> None:
    push(api)
    good, bad = _decide(api, "u1"), _decide(api, "u2")
    batch = {"events": [{"decision_id": good, "latency_ms": 5}, {"decision_id": bad,
                                                                  "quality": 1.5}]}  # fmt: skip
    response = api.post("/api/v1/events", batch, "agent")
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "invalid_metric"
    gate = api.canary.gate(NAME)
    with pytest.raises(InvalidMetricError) as direct:
        Decision.record(gate.route("x"), quality=1.5)
    assert problem["detail"] == f"events[1]: {direct.value.message}"
    assert _stored(api) == []
    retried = api.post("/api/v1/events", {"events": [{"decision_id": good, "latency_ms": 5}]},
                       "agent")  # fmt: skip
    assert retried.status_code == 200  # the good decision was not used up


def test_unknown_fields_unknown_decisions_and_double_records_are_refused(api: Api) -> None:
    push(api)
    decision = _decide(api)
    typo = api.post("/api/v1/events", {"events": [{"decision_id": decision, "latncy": 1}]}, "agent")
    assert typo.status_code == 400
    assert "'latncy'" in typo.json()["detail"]
    unknown = api.post("/api/v1/events", {"events": [{"decision_id": "nope", "latency_ms": 1}]},
                       "agent")  # fmt: skip
    assert unknown.status_code == 404
    assert (
        api.post("/api/v1/events", {"events": [{"decision_id": decision}]}, "agent").status_code
        == 200
    )
    twice = api.post("/api/v1/events", {"events": [{"decision_id": decision}]}, "agent")
    assert twice.status_code == 404
    assert "already recorded" in twice.json()["detail"]


def test_too_many_events_in_one_batch_is_413_and_records_nothing(api: Api) -> None:
    push(api)
    decision = _decide(api)
    most = api.client.app.state.server.limits.events_per_batch  # type: ignore[attr-defined]
    batch = {"events": [{"decision_id": decision}] * (most + 1)}
    response = api.post("/api/v1/events", batch, "agent")
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    assert _stored(api) == []


def test_events_for_a_policy_outside_the_tokens_list_are_403(api: Api) -> None:
    push(api)
    push(api, "other")
    decision = _decide(api)
    api.token("only-other", "agent", policies=["other"])
    refused = api.post("/api/v1/events", {"events": [{"decision_id": decision}]}, "only-other")
    assert refused.status_code == 403
    assert _stored(api) == []


def test_feedback_attaches_a_late_score(api: Api) -> None:
    push(api)
    decision = _decide(api)
    api.post("/api/v1/events", {"events": [{"decision_id": decision, "latency_ms": 3}]}, "agent")
    response = api.post("/api/v1/feedback", {"decision_id": decision, "quality": 0.7}, "agent")
    assert response.status_code == 200, response.text
    bad = api.post("/api/v1/feedback", {"decision_id": decision, "quality": 7}, "agent")
    assert bad.status_code == 422
    assert bad.json()["code"] == "invalid_metric"
    neither = api.post("/api/v1/feedback", {"decision_id": decision}, "agent")
    assert neither.status_code == 422
    api.canary.flush()
    with api.store.read() as conn:
        assert conn.execute(select(func.count()).select_from(feedback)).scalar_one() == 1


def test_a_full_event_buffer_is_429_with_retry_after_and_records_nothing(
    store: Store, clock: ManualClock
) -> None:
    for api in make_api(store, clock, buffer_size=2):
        push(api)
        ids = [_decide(api, f"u{i}") for i in range(3)]
        response = api.post("/api/v1/events", {"events": [{"decision_id": d} for d in ids]},
                            "agent")  # fmt: skip
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert response.json()["code"] == "rate_limited"
        assert _stored(api) == []
        assert api.post("/api/v1/events", {"events": [{"decision_id": ids[0]}]},
                        "agent").status_code == 200  # fmt: skip
