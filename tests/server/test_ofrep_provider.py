"""The real OpenFeature OFREP provider against a real ``policy-canary serve`` process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _api_support import SPEC_V1, SPEC_V2
from _live import start, stop
from openfeature import api as openfeature
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from sqlalchemy import func, select

from _serving import update_rollout
from policy_canary.registry import Registry
from policy_canary.store import Store
from policy_canary.store.schema import events
from policy_canary.tokens import Tokens

NAME = "support-agent"


@pytest.fixture
def provider_client() -> Iterator[Any]:
    def make(base: str, secret: str) -> OpenFeatureClient:
        openfeature.set_provider(
            OFREPProvider(base, headers_factory=lambda: {"Authorization": f"Bearer {secret}"})
        )
        return openfeature.get_client()

    yield make
    openfeature.clear_providers()


def _until(check: Any, seconds: float = 10.0) -> Any:
    """Poll a real server (its refresher runs on real time) until ``check()`` is truthy."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_evaluate_record_roll_back_and_see_the_rollback(db_url: str, provider_client: Any) -> None:
    store = Store.open(db_url)
    registry = Registry(store)
    registry.register(NAME, SPEC_V1, author="test")
    registry.register(NAME, SPEC_V2, author="test")
    tokens = Tokens(store)
    agent = tokens.create("agent", role="agent").secret
    ops = tokens.create("ops", role="operator").secret
    proc, base = start(db_url)
    try:
        started = httpx.post(
            f"{base}/api/v1/policies/{NAME}/rollouts",
            json={"candidate": "v2", "reason": "try it"},
            headers={"Authorization": f"Bearer {ops}"},
        )
        assert started.status_code == 201, started.text
        update_rollout(store, started.json()["id"], traffic_bp=10_000)  # everyone: candidate
        client = provider_client(base, agent)
        context = EvaluationContext(targeting_key="user-42")

        def details() -> Any:
            return client.get_object_details(NAME, {}, context)

        candidate = _until(lambda: (d := details()).variant == "v2" and d)
        assert candidate.value == SPEC_V2
        assert candidate.reason == "SPLIT"
        assert candidate.flag_metadata["rolloutId"] == started.json()["id"]
        decision = candidate.flag_metadata["decisionId"]

        recorded = httpx.post(
            f"{base}/api/v1/events",
            json={"events": [{"decision_id": decision, "latency_ms": 900, "error": True}]},
            headers={"Authorization": f"Bearer {agent}"},
        )
        assert recorded.json() == {"accepted": 1}
        rolled = httpx.post(
            f"{base}/api/v1/policies/{NAME}/rollout/rollback",
            json={"reason": "errors"},
            headers={"Authorization": f"Bearer {ops}"},
        )
        assert rolled.status_code == 200, rolled.text
        stable = details()  # the server refreshed its own tables after the rollback
        assert stable.value == SPEC_V1
        assert stable.variant == "v1"
        assert stable.reason == "STATIC"

        missing = client.get_object_details("no-such-policy", {"fallback": True}, context)
        assert missing.error_code == ErrorCode.FLAG_NOT_FOUND
        assert missing.value == {"fallback": True}
    finally:
        stop(proc)
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 1
    store.close()
