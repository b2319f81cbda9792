"""The OpenFeature provider over ``Canary.connect()``: the real SDK, a real server on loopback.

Given a ``policy-canary serve`` process and an agent holding only a token (no database), when
the agent evaluates policies through the official openfeature-sdk client and records the
outcome with the provider, then it gets the same details as over ``Canary.open()`` (the
spec's behaviours for missing flags and wrong types included), the event reaches the
server's store, a rollout started on the server is a configuration change, and a server
that goes away makes the provider STALE (the last table keeps serving) until it is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from _live import free_port, start, stop
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus
from sqlalchemy import select

from _serving import CANDIDATE_SPEC, POLICY, STABLE_SPEC, seed_policy, start_rollout
from policy_canary.clock import ManualClock
from policy_canary.openfeature import CanaryProvider
from policy_canary.serving._canary import Canary
from policy_canary.store import Store
from policy_canary.store.schema import events, feedback
from policy_canary.tokens import Tokens

pytestmark = pytest.mark.slow


def _ctx(key: str) -> EvaluationContext:
    return EvaluationContext(targeting_key=key)


def _until(check: Callable[[], bool], what: str) -> None:
    """Bounded poll on a real server process (its watcher reloads tables every 50 ms)."""
    deadline = time.monotonic() + 15
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Remote:
    """A served store, an agent token, and a remote canary on a manual clock."""

    def __init__(self, folder: Path) -> None:
        self.url = f"sqlite:///{folder}/served.db"
        self.store = Store.open(self.url)
        self.clock = ManualClock()
        self.v1, self.v2 = seed_policy(self.store, self.clock)
        self.token = Tokens(self.store).create("agent", role="agent", actor="test").secret
        self.port = free_port()
        self.proc, self.base = start(self.url, port=self.port)
        self.canary = Canary.connect(self.base, token=self.token, clock=self.clock,
                                     background=False, listen=False)  # fmt: skip

    def close(self) -> None:
        self.canary.close()
        if self.proc.poll() is None:
            stop(self.proc)
        self.store.close()


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    served = Remote(tmp_path)
    yield served
    served.close()


@pytest.fixture
def provider(remote: Remote) -> Iterator[CanaryProvider]:
    made = CanaryProvider(remote.canary, policies=[POLICY])
    api.set_provider_and_wait(made)
    yield made
    api.clear_providers()


def test_evaluations_over_connect_follow_the_openfeature_spec(provider: CanaryProvider) -> None:
    client = api.get_client()
    details = client.get_object_details(POLICY, {}, _ctx("user-1"))
    assert json.loads(json.dumps(details.value)) == STABLE_SPEC
    assert (details.variant, details.reason, details.error_code) == ("v1", Reason.STATIC, None)
    assert details.flag_metadata["version"] == "v1"
    missing = client.get_object_details("no-such-policy", {"x": 1}, _ctx("u"))
    assert (missing.value, missing.reason) == ({"x": 1}, Reason.ERROR)
    assert missing.error_code == ErrorCode.FLAG_NOT_FOUND
    assert "no-such-policy" in (missing.error_message or "")
    wrong = client.get_string_details(POLICY, "fallback", _ctx("u"))
    assert (wrong.value, wrong.error_code) == ("fallback", ErrorCode.TYPE_MISMATCH)


def test_record_over_connect_reaches_the_servers_store(
    provider: CanaryProvider, remote: Remote
) -> None:
    details = api.get_client().get_object_details(POLICY, {}, _ctx("user-7"))
    provider.record(details, latency_ms=12.5, quality=0.9)
    remote.canary.flush()

    def stored() -> bool:
        with remote.store.read() as conn:
            return conn.execute(select(events.c.decision_id)).scalars().all() == [
                details.flag_metadata["decisionId"]
            ]

    _until(stored, "the server to commit the event")
    with remote.store.read() as conn:
        row = conn.execute(select(events.c.latency_ms, events.c.quality)).one()
        assert tuple(row) == (12.5, 0.9)
        assert conn.execute(select(feedback)).all() == []  # quality came with the event


def test_a_rollout_is_a_change_and_a_gone_server_is_stale_until_back(
    provider: CanaryProvider, remote: Remote
) -> None:
    seen: list[tuple[ProviderEvent, list[str] | None]] = []

    def handler(kind: ProviderEvent) -> Callable[[EventDetails], None]:
        return lambda d: seen.append((kind, d.flags_changed))

    handlers = {kind: handler(kind) for kind in ProviderEvent}
    for kind, fn in handlers.items():
        api.add_handler(kind, fn)
    client = api.get_client()
    try:
        _until(lambda: len(seen) == 1, "READY")  # at once: the provider is already ready
        rollout = start_rollout(remote.store, remote.clock, baseline=remote.v1,
                                candidate=remote.v2, traffic_bp=5000)  # fmt: skip

        def changed() -> bool:
            provider.check()
            return (ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, [POLICY]) in seen

        _until(changed, "CONFIGURATION_CHANGED")
        details = client.get_object_details(POLICY, {}, _ctx("user-3"))
        assert details.reason == Reason.SPLIT
        assert details.flag_metadata["rolloutId"] == rollout
        spec = CANDIDATE_SPEC if details.variant == "v2" else STABLE_SPEC
        assert json.loads(json.dumps(details.value)) == spec

        stop(remote.proc)  # the server goes away
        remote.clock.advance(timedelta(seconds=10))
        provider.check()
        _until(lambda: seen[-1][0] is ProviderEvent.PROVIDER_STALE, "STALE")
        assert client.get_provider_status() is ProviderStatus.STALE
        again = client.get_object_details(POLICY, {}, _ctx("user-3"))
        assert again.reason == Reason.STALE  # the last table keeps serving
        assert (again.variant, again.error_code) == (details.variant, None)

        remote.proc, _ = start(remote.url, port=remote.port)  # and comes back

        def ready() -> bool:
            provider.check()
            return seen[-1][0] is ProviderEvent.PROVIDER_READY

        _until(ready, "READY again")
        assert client.get_provider_status() is ProviderStatus.READY
    finally:
        for kind, fn in handlers.items():
            api.remove_handler(kind, fn)
