"""SDK inputs that used to end in the wrong error: numpy scalars, unencodable keys, odd intervals.

Given a gate on a seeded store, when an agent records numpy scalars (what its metrics code
naturally produces), routes a key that is not valid Unicode, or configures a loop interval
that is not a sane number of seconds, then numpy values are stored as the plain numbers they
stand for, and everything else is refused with an InputError that names what to fix, never
a UnicodeEncodeError, a bare ValueError, or a background thread that dies later.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from _serving import POLICY, seed_policy, start_rollout
from policy_canary.clock import ManualClock
from policy_canary.errors import InputError, InvalidMetricError
from policy_canary.serving import Canary, Gate
from policy_canary.store import Store
from policy_canary.store.schema import events

PLAIN: dict[str, Any] = {
    "latency_ms": 12.5,
    "error": True,
    "quality": 0.75,
    "safety_flags": 2,
    "cost_usd": 0.25,
    "input_tokens": 1200,
    "output_tokens": 34,
    "metrics": {"tool_calls": 3, "score": 0.5, "resolved": False},
}
NUMPY: dict[str, Any] = {
    "latency_ms": np.float64(12.5),
    "error": np.bool_(True),
    "quality": np.float32(0.75),
    "safety_flags": np.int64(2),
    "cost_usd": np.float64(0.25),
    "input_tokens": np.int64(1200),
    "output_tokens": np.int32(34),
    "metrics": {"tool_calls": np.int64(3), "score": np.float32(0.5), "resolved": np.bool_(False)},
}
OUTCOME = ("latency_ms", "error", "quality", "flag_count", "cost_usd", "input_tokens")


@pytest.fixture
def canary(store: Store, clock: ManualClock) -> Iterator[Canary]:
    seed_policy(store, clock)
    opened = Canary(store, clock=clock, background=False, rng=random.Random(5))
    yield opened
    opened.close()


@pytest.fixture
def sqlite_gate(sqlite_url: str, clock: ManualClock) -> Iterator[tuple[Store, Gate]]:
    """A gate whose policy has a 50% rollout, on one backend (nothing here is stored)."""
    store = Store.open(sqlite_url)
    stable, candidate = seed_policy(store, clock)
    start_rollout(store, clock, baseline=stable, candidate=candidate, traffic_bp=5000)
    with Canary(store, clock=clock, background=False, owns_store=True) as canary:
        yield store, canary.gate(POLICY)


def test_numpy_scalars_are_recorded_as_the_plain_numbers_they_stand_for(
    store: Store, canary: Canary
) -> None:
    gate = canary.gate(POLICY)
    gate.route("plain").record(**PLAIN)
    gate.route("numpy").record(**NUMPY)
    canary.feedback(gate.route("judged").decision_id, quality=np.float64(0.5))
    assert canary.flush() == 2
    with store.read() as conn:
        plain, numpy = conn.execute(select(events).order_by(events.c.id)).mappings().all()
    assert [numpy[c] for c in OUTCOME] == [plain[c] for c in OUTCOME]
    assert all(type(numpy[c]) is type(plain[c]) for c in OUTCOME)
    assert json.loads(numpy["metrics"]) == json.loads(plain["metrics"]) == PLAIN["metrics"]
    assert canary.stats().feedback_written == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"latency_ms": np.bool_(True)}, "latency_ms must be a number, got numpy.bool"),
        ({"latency_ms": np.float64(math.nan)}, "latency_ms=np.float64(nan) is not allowed"),
        ({"cost_usd": np.float32(-1.0)}, "cost_usd=np.float32(-1.0) is not allowed"),
        ({"input_tokens": np.float64(3.0)}, "input_tokens must be an integer, got numpy.float64"),
        ({"error": np.int64(1)}, "error must be True or False, got numpy.int64"),
        ({"quality": np.float64(1.5)}, "quality=np.float64(1.5) is not allowed"),
        ({"metrics": {"m": np.float64(math.inf)}}, "metric 'm'=inf is not allowed"),
        ({"metrics": {"m": np.str_("x")}}, "metric 'm' must be a number or a boolean"),
    ],
)
def test_bad_numpy_values_are_refused_with_what_they_are(
    sqlite_gate: tuple[Store, Gate], fields: dict[str, Any], message: str
) -> None:
    _, gate = sqlite_gate
    with pytest.raises(InvalidMetricError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gate.route("u").record(**fields)


@pytest.mark.parametrize("key", ["\ud800", "user-\udfff-1", "ok\ud83d"])
def test_a_key_that_is_not_valid_unicode_is_an_input_error_with_or_without_a_rollout(
    store: Store, clock: ManualClock, canary: Canary, key: str
) -> None:
    gate = canary.gate(POLICY)
    with pytest.raises(InputError, match="is not valid text"):
        gate.route(key)  # no rollout: nothing is hashed, and it is refused all the same
    stable, candidate = (v.id for v in canary.registry.versions(POLICY))
    start_rollout(store, clock, baseline=stable, candidate=candidate, traffic_bp=5000)
    canary.refresh_now()
    with pytest.raises(InputError, match="is not valid text"):
        gate.route(key)
    assert gate.route("usér-ok").version.number in (1, 2)


# The gate is only read (route() changes nothing), so sharing it across examples is safe.
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Half the characters are lone surrogates (st.text() would filter those out), half any other.
@given(
    key=st.lists(st.one_of(st.characters(categories=["Cs"]), st.characters()), max_size=12).map(
        "".join
    )
)
def test_route_either_answers_or_refuses_a_key_with_an_input_error(
    sqlite_gate: tuple[Store, Gate], key: str
) -> None:
    _, gate = sqlite_gate
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(InputError):
            gate.route(key)
    else:
        assert gate.route(key).sticky is True


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("refresh_interval", math.nan),
        ("refresh_interval", math.inf),
        ("flush_interval", math.inf),
        ("flush_interval", math.nan),
        ("prune_interval", -math.inf),
        ("flush_interval", 0),
        ("refresh_interval", 86_401),
        ("refresh_interval", "1"),
        ("flush_interval", True),
        ("prune_interval", None),
    ],
)
def test_loop_intervals_must_be_a_sane_number_of_seconds(
    sqlite_url: str, option: str, value: object
) -> None:
    store = Store.open(sqlite_url)
    try:
        with pytest.raises(InputError, match=f"^{option}"):
            Canary(store, **{option: value})
    finally:
        store.close()


def test_loop_intervals_accept_numpy_and_integer_seconds(sqlite_url: str) -> None:
    store = Store.open(sqlite_url)
    canary = Canary(
        store,
        refresh_interval=np.float64(0.5),
        flush_interval=1,
        prune_interval=np.int64(60),
        owns_store=True,
    )
    try:
        assert all(t.is_alive() for t in canary._threads)
    finally:
        canary.close()
