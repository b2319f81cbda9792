"""The OpenFeature provider under the official openfeature-sdk client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.event import EventDetails, ProviderEvent
from openfeature.exception import ErrorCode, ProviderFatalError
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

from _serving import CANDIDATE_SPEC, POLICY, STABLE_SPEC, seed_policy, start_rollout, store_down
from policy_canary.clock import ManualClock
from policy_canary.errors import InputError, InvalidMetricError, NotFoundError
from policy_canary.openfeature import CanaryProvider
from policy_canary.registry import Registry
from policy_canary.serving._canary import Canary
from policy_canary.store import Store


@pytest.fixture
def canary(store: Store, clock: ManualClock) -> Iterator[Canary]:
    seed_policy(store, clock)
    opened = Canary(store, clock=clock, background=False)
    yield opened
    opened.close()


@pytest.fixture
def provider(canary: Canary) -> Iterator[CanaryProvider]:
    made = CanaryProvider(canary, policies=[POLICY])
    api.set_provider_and_wait(made)
    yield made
    api.clear_providers()


def _plain(value: object) -> object:
    return json.loads(json.dumps(value))


def _settle(seen: list[Any], count: int) -> None:
    """Handlers run on the SDK's executor thread: wait (bounded) until ``count`` arrived."""
    for _ in range(200):
        if len(seen) >= count:
            break
        time.sleep(0.02)
    time.sleep(0.05)  # and let a wrong extra one arrive too
    assert len(seen) == count, seen


def _ctx(key: str) -> EvaluationContext:
    return EvaluationContext(targeting_key=key)


def test_without_a_rollout_the_stable_spec_is_static(provider: CanaryProvider) -> None:
    details = api.get_client().get_object_details(POLICY, {}, _ctx("user-1"))
    assert _plain(details.value) == STABLE_SPEC  # read-only: arrays are tuples
    assert details.variant == "v1"
    assert details.reason == Reason.STATIC
    assert details.error_code is None
    assert details.flag_metadata["version"] == "v1"
    assert "rolloutId" not in details.flag_metadata
    assert str(details.flag_metadata["decisionId"])


def test_a_rollout_splits_with_the_sdks_assignment(
    provider: CanaryProvider, canary: Canary, store: Store, clock: ManualClock
) -> None:
    v1, v2 = _digests(canary)
    rollout = start_rollout(store, clock, baseline=v1, candidate=v2, traffic_bp=5000)
    canary.refresh_now()
    client = api.get_client()
    for i in range(40):
        key = f"user-{i}"
        details = client.get_object_details(POLICY, {}, _ctx(key))
        expected = canary.gate(POLICY).route(key)
        assert details.variant == expected.version.label
        assert _plain(details.value) == (CANDIDATE_SPEC if details.variant == "v2" else STABLE_SPEC)
        assert details.reason == Reason.SPLIT
        assert details.flag_metadata["rolloutId"] == rollout
        assert details.flag_metadata["arm"] == expected.arm.value


def _digests(canary: Canary) -> tuple[str, str]:
    registry = Registry(canary.store)
    return registry.resolve(POLICY, "v1").id, registry.resolve(POLICY, "v2").id


def test_a_missing_flag_returns_the_default_with_flag_not_found(provider: CanaryProvider) -> None:
    details = api.get_client().get_object_details("no-such-policy", {"x": 1}, _ctx("u"))
    assert details.value == {"x": 1}
    assert details.error_code == ErrorCode.FLAG_NOT_FOUND
    assert details.reason == Reason.ERROR
    assert "no-such-policy" in (details.error_message or "")


@pytest.mark.parametrize(
    ("method", "default"),
    [("get_string_details", "d"), ("get_boolean_details", True),
     ("get_integer_details", 3), ("get_float_details", 0.5)],
)  # fmt: skip
def test_a_policy_read_as_a_scalar_is_a_type_mismatch(
    provider: CanaryProvider, method: str, default: object
) -> None:
    details = getattr(api.get_client(), method)(POLICY, default, _ctx("u"))
    assert details.value == default
    assert details.error_code == ErrorCode.TYPE_MISMATCH
    assert "get_object_details" in (details.error_message or "")


def test_record_writes_the_evaluated_decisions_event(
    provider: CanaryProvider, canary: Canary
) -> None:
    details = api.get_client().get_object_details(POLICY, {}, _ctx("user-7"))
    with pytest.raises(InvalidMetricError):
        provider.record(details, quality=2.0)  # refused, and still recordable
    provider.record(details, latency_ms=12.5, quality=0.9)
    with pytest.raises(NotFoundError, match="already recorded"):
        provider.record(details, latency_ms=1.0)
    assert canary.flush() == 1
    missing = api.get_client().get_object_details("nope", {}, _ctx("u"))
    with pytest.raises(InputError, match="made no decision"):
        provider.record(missing, latency_ms=1.0)


def test_events_ready_changed_stale_and_ready_again(
    provider: CanaryProvider, canary: Canary, store: Store, clock: ManualClock
) -> None:
    seen: list[tuple[ProviderEvent, list[str] | None]] = []

    def handler(kind: ProviderEvent) -> Callable[[EventDetails], None]:
        return lambda d: seen.append((kind, d.flags_changed))

    handlers = {kind: handler(kind) for kind in ProviderEvent}
    for kind, fn in handlers.items():
        api.add_handler(kind, fn)
    try:
        _settle(seen, 1)  # READY ran at once: the provider is already ready
        assert seen == [(ProviderEvent.PROVIDER_READY, None)]
        provider.check()
        _settle(seen, 1)  # nothing changed
        v1, v2 = _digests(canary)
        start_rollout(store, clock, baseline=v1, candidate=v2, traffic_bp=100)
        provider.check()
        _settle(seen, 2)
        assert seen[-1] == (ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, [POLICY])
        with store_down(store):
            clock.advance(timedelta(seconds=10))
            provider.check()
            _settle(seen, 3)
            assert seen[-1][0] is ProviderEvent.PROVIDER_STALE
            assert api.get_client().get_provider_status() is ProviderStatus.STALE
            details = api.get_client().get_object_details(POLICY, {}, _ctx("u"))
            assert details.reason == Reason.STALE  # still served from the last table
            assert details.error_code is None
        provider.check()
        _settle(seen, 4)
        assert seen[-1][0] is ProviderEvent.PROVIDER_READY
        assert api.get_client().get_provider_status() is ProviderStatus.READY
    finally:
        for kind, fn in handlers.items():
            api.remove_handler(kind, fn)


def test_a_missing_declared_policy_fails_initialisation(canary: Canary) -> None:
    with pytest.raises(ProviderFatalError, match="no policy 'absent'"):
        api.set_provider_and_wait(CanaryProvider(canary, policies=["absent"]))
    try:
        assert api.get_client().get_provider_status() is ProviderStatus.FATAL
    finally:
        api.clear_providers()


def test_the_watch_thread_reports_a_routing_change(
    canary: Canary, store: Store, clock: ManualClock
) -> None:
    changed: list[EventDetails] = []
    provider = CanaryProvider(canary, policies=[POLICY], watch_interval=0.05)
    api.set_provider_and_wait(provider)
    api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, changed.append)
    try:
        v1, v2 = _digests(canary)
        start_rollout(store, clock, baseline=v1, candidate=v2, traffic_bp=100)
        for _ in range(200):  # bounded: at most 10 s
            if changed:
                break
            time.sleep(0.05)
        assert changed
        assert changed[0].flags_changed == [POLICY]
    finally:
        api.remove_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, changed.append)
        api.clear_providers()
