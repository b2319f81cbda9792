"""Idempotency-Key: a retried mutation returns the stored response and never acts twice."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from _api_support import SPEC_V1, SPEC_V2, Api, push

from policy_canary.clock import ManualClock
from policy_canary.errors import ConflictError
from policy_canary.server._idempotency import Idempotency
from policy_canary.store import Store
from policy_canary.store.schema import idempotency_keys

NAME = "support-agent"
PUSH = f"/api/v1/policies/{NAME}/versions"


def _audit_count(api: Api, action: str) -> int:
    return sum(1 for a in api.get("/api/v1/audit", "viewer").json() if a["action"] == action)


def test_a_retried_rollback_returns_the_first_response_and_acts_once(api: Api) -> None:
    push(api)
    push(api, spec=SPEC_V2)
    api.post(f"/api/v1/policies/{NAME}/rollouts", {"candidate": "v2"}, "operator")
    url = f"/api/v1/policies/{NAME}/rollout/rollback"
    key = {"Idempotency-Key": "rb-1"}
    first = api.post(url, {"reason": "bad"}, "operator", headers=key)
    assert first.status_code == 200, first.text
    assert "Idempotent-Replayed" not in first.headers
    retry = api.post(url, {"reason": "bad"}, "operator", headers=key)
    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    # Without the key a second rollback would restore the previous stable: it did not happen.
    history = api.get(f"/api/v1/policies/{NAME}/history", "viewer").json()
    assert [e["kind"] for e in history] == ["bootstrap"]


def test_a_retried_push_keeps_its_201_and_registers_once(api: Api) -> None:
    key = {"Idempotency-Key": "push-1"}
    first = api.post(PUSH, {"spec": SPEC_V1}, "operator", headers=key)
    retry = api.post(PUSH, {"spec": SPEC_V1}, "operator", headers=key)
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert _audit_count(api, "version.register") == 1


def test_the_same_key_with_a_different_body_is_a_conflict(api: Api) -> None:
    key = {"Idempotency-Key": "k"}
    api.post(PUSH, {"spec": SPEC_V1}, "operator", headers=key)
    other = api.post(PUSH, {"spec": SPEC_V2}, "operator", headers=key)
    assert other.status_code == 409
    assert "different request" in other.json()["detail"]
    assert len(api.get(f"{PUSH}", "viewer").json()) == 1


def test_keys_are_per_token(api: Api) -> None:
    key = {"Idempotency-Key": "shared"}
    assert api.post(PUSH, {"spec": SPEC_V1}, "operator", headers=key).status_code == 201
    assert api.post(PUSH, {"spec": SPEC_V2}, "admin", headers=key).status_code == 201
    assert len(api.get(PUSH, "viewer").json()) == 2


def test_a_failed_request_frees_its_key(api: Api) -> None:
    key = {"Idempotency-Key": "retry-after-fix"}
    failed = api.post(f"/api/v1/policies/{NAME}/rollout/pause", {"reason": "x"}, "operator",
                      headers=key)  # fmt: skip
    assert failed.status_code == 404
    push(api)
    push(api, spec=SPEC_V2)
    api.post(f"/api/v1/policies/{NAME}/rollouts", {"candidate": "v2"}, "operator")
    again = api.post(f"/api/v1/policies/{NAME}/rollout/pause", {"reason": "x"}, "operator",
                     headers=key)  # fmt: skip
    assert again.status_code == 200
    assert again.json()["state"] == "paused"


def test_a_malformed_key_is_refused(api: Api) -> None:
    response = api.post(PUSH, {"spec": SPEC_V1}, "operator", headers={"Idempotency-Key": "x" * 201})
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["detail"]
    assert api.get(PUSH, "viewer").status_code == 404  # nothing was registered


def test_a_concurrent_retry_is_refused_while_the_first_is_acting(
    store: Store, clock: ManualClock
) -> None:
    """Given a first request still acting, when its retry arrives, then the retry is refused
    (409) instead of acting too; once the first finishes, a retry gets its response."""
    keys = Idempotency(store, clock=clock)
    acting, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def act() -> tuple[int, Any]:
        calls.append(1)
        acting.set()
        assert release.wait(10)
        return 201, {"done": True}

    results: list[Any] = []
    first = threading.Thread(
        target=lambda: results.append(keys.run(actor="a", key="k", fingerprint="f", act=act))
    )
    first.start()
    assert acting.wait(10)
    with pytest.raises(ConflictError, match="being handled"):
        keys.run(actor="a", key="k", fingerprint="f", act=act)
    release.set()
    first.join(10)
    assert results == [((201, {"done": True}), False)]
    assert keys.run(actor="a", key="k", fingerprint="f", act=act) == ((201, {"done": True}), True)
    assert len(calls) == 1


def test_a_key_left_pending_by_a_crash_is_never_reused(store: Store, clock: ManualClock) -> None:
    """A process killed between acting and storing the response leaves its key pending; the
    server cannot know whether it acted, so a retry is refused rather than acting again."""
    with store.begin() as conn:  # what a SIGKILLed server leaves behind
        conn.execute(
            idempotency_keys.insert().values(
                actor="a", key="k", request_hash="f", created_at=clock.now()
            )
        )
    keys = Idempotency(store, clock=clock)
    calls: list[int] = []
    with pytest.raises(ConflictError, match="stopped while handling it"):
        keys.run(actor="a", key="k", fingerprint="f", act=lambda: (calls.append(1), (200, 1))[1])
    assert calls == []
