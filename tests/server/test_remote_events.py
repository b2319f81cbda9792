"""Events and feedback from remote SDKs: the full row, validated like record(), scoped tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from _api_support import Api, push
from sqlalchemy import select

from policy_canary.errors import InvalidMetricError
from policy_canary.serving._outcomes import outcome
from policy_canary.store.schema import events, feedback

NAME = "support-agent"


def _event(api: Api, **changes: Any) -> dict[str, Any]:
    stable = api.get(f"/api/v1/policies/{NAME}/versions/v1").json()["id"]
    event = {
        "decision_id": "abc-1",
        "policy": NAME,
        "arm": "stable",
        "version_digest": stable,
        "traffic_bp": 0,
        "scheme": 1,
        "sticky": True,
        "at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        "latency_ms": 5.0,
        "quality": 0.5,
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


def _ids(api: Api) -> list[str]:
    with api.store.read() as conn:
        return sorted(conn.execute(select(events.c.decision_id)).scalars())


def test_a_remote_event_is_stored_with_its_whole_row_and_a_retry_is_harmless(api: Api) -> None:
    push(api)
    body = {"events": [_event(api), _event(api, decision_id="abc-2", safety_flags=["pii"])]}
    first = api.post("/api/v1/events", body, "agent")
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": 2}
    again = api.post("/api/v1/events", body, "agent")  # the SDK retrying a lost answer
    assert again.status_code == 200
    assert _ids(api) == ["abc-1", "abc-2"]  # written once, before the answer
    with api.store.read() as conn:
        row = conn.execute(select(events).where(events.c.decision_id == "abc-2")).one()
    assert (row.policy, row.arm, row.flag_count, row.quality, row.sticky) == (
        NAME,
        "stable",
        1,
        0.5,
        True,
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quality": 1.5}, "events[0]: quality=1.5 is not allowed"),
        ({"latency_ms": -1.0}, "events[0]: latency_ms=-1.0 is not allowed"),
        ({"arm": "both"}, "arm must be 'stable' or 'candidate'"),
        ({"arm": "candidate"}, "a candidate decision names its rollout_id"),
        ({"version_digest": "f" * 64}, "has no version 'ffffffffffff'"),
        ({"rollout_id": "ro_nope"}, "has no rollout 'ro_nope'"),
        ({"at": "yesterday"}, "at must be an ISO 8601 time"),
        ({"at": "2026-01-01T00:00:00"}, "at must be an ISO 8601 time with its offset"),
        ({"traffic_bp": 10_001}, "traffic_bp must be an integer in 0..10000"),
        ({"scheme": 2}, "scheme must be 1"),
        ({"decision_id": "x" * 41}, "decision_id must be text of 1..40"),
        ({"colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_a_bad_remote_event_refuses_the_whole_batch(
    api: Api, changes: dict[str, Any], message: str
) -> None:
    push(api)
    body = {"events": [_event(api, **changes), _event(api, decision_id="ok-1")]}
    refused = api.post("/api/v1/events", body, "agent")
    assert refused.status_code in (400, 404, 422), refused.text
    assert message in refused.json()["detail"]
    assert _ids(api) == []  # all or none


def test_the_messages_are_record_s_own(api: Api) -> None:
    push(api)
    with pytest.raises(InvalidMetricError) as raised:
        outcome(None, None, 1.5, (), None, None, None, None, None)
    refused = api.post("/api/v1/events", {"events": [_event(api, quality=1.5)]}, "agent")
    assert refused.json()["detail"] == f"events[0]: {raised.value.message}"


def test_a_token_limited_to_policies_writes_only_those(api: Api) -> None:
    push(api)
    push(api, "billing-agent")
    api.token("billing-only", "agent", policies=["billing-agent"])
    refused = api.post("/api/v1/events", {"events": [_event(api)]}, "billing-only")
    assert refused.status_code == 403
    assert "limited to billing-agent" in refused.json()["detail"]
    assert api.post("/api/v1/events", {"events": [_event(api)]}, "viewer").status_code == 403
    assert _ids(api) == []
    assert api.post("/api/v1/events", {"events": [_event(api)]}, "agent").status_code == 200
    late = {
        "feedback": [
            {"decision_id": "abc-1", "quality": 0.9, "at": _event(api)["at"], "key": "k-1"}
        ]
    }
    assert api.post("/api/v1/feedback", late, "billing-only").status_code == 403


def test_feedback_in_batches_attaches_by_decision_id(api: Api) -> None:
    push(api)
    api.post("/api/v1/events", {"events": [_event(api, quality=None)]}, "agent")
    at = _event(api)["at"]
    batch = {
        "feedback": [
            {"decision_id": "abc-1", "quality": 0.9, "at": at, "key": "k-1"},
            {"decision_id": "abc-1", "quality": 0.1, "at": at, "key": "k-2"},  # a repeat: ignored
            {"decision_id": "nobody", "metrics": {"thumbs": 1}, "at": at, "key": "k-3"},
        ]
    }
    done = api.post("/api/v1/feedback", batch, "agent")
    assert done.status_code == 200, done.text
    assert done.json() == {"accepted": 3, "refused": 1, "duplicates": 1}
    with api.store.read() as conn:
        rows = [(r.decision_id, r.metric, r.quality) for r in conn.execute(select(feedback))]
    assert rows == [("abc-1", "quality", 0.9)]
    bad = {"feedback": [{"decision_id": "abc-1", "quality": 2, "at": at, "key": "k-4"}]}
    refused = api.post("/api/v1/feedback", bad, "agent")
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith("feedback[0]: quality=2 is not allowed")
