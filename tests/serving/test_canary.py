"""Routing through the SDK: tables from the store, refreshes, rollbacks, outages, threads.

Given a store with a policy (stable v1, candidate v2) and, where needed, a rollout row, when
agents route requests through a gate, then the answers follow the splitter and the store's
current routing state after one refresh, and never fail because the store is down.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from _serving import (
    CANDIDATE_SPEC,
    POLICY,
    STABLE_SPEC,
    seed_policy,
    start_rollout,
    store_down,
    update_rollout,
)
from policy_canary.clock import ManualClock
from policy_canary.controller import Rollouts
from policy_canary.errors import InputError, NotFoundError, StoreError, StoreUnavailableError
from policy_canary.registry import Registry
from policy_canary.serving import Canary
from policy_canary.serving._splitter import SCHEME_VERSION, Arm, assign
from policy_canary.store import Store

KEYS = [f"user-{i}" for i in range(400)]


@pytest.fixture
def seeded(store: Store, clock: ManualClock) -> tuple[str, str]:
    """The policy's stable and candidate version ids."""
    return seed_policy(store, clock)


@pytest.fixture
def canary(store: Store, clock: ManualClock) -> Iterator[Canary]:
    """A canary without background threads: tests refresh and flush explicitly."""
    opened = Canary(store, clock=clock, background=False, rng=random.Random(1))
    yield opened
    opened.close()


def test_route_serves_stable_when_no_rollout(seeded: tuple[str, str], canary: Canary) -> None:
    stable_id, _ = seeded
    d = canary.gate(POLICY).route("user-1")
    assert d.arm is Arm.STABLE
    assert d.version.id == stable_id
    assert d.version.number == 1
    assert json.loads(json.dumps(d.spec)) == STABLE_SPEC
    assert d.policy == POLICY
    assert (d.rollout_id, d.stage, d.traffic_bp) == (None, None, 0)
    assert d.sticky is True
    assert d.scheme == SCHEME_VERSION
    assert d.decision_id.startswith(canary._id_prefix)


def test_route_follows_the_splitter_for_the_rollout_salt(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    stable_id, candidate_id = seeded
    salt = "8f2b5c0e1d9a4b7c6e3f2a1b0c9d8e7f"
    rollout = start_rollout(
        store,
        clock,
        baseline=stable_id,
        candidate=candidate_id,
        traffic_bp=2500,
        salt=salt,
        plan={"stages": [{"name": "canary"}, {"name": "soak"}]},
        stage_index=1,
    )
    gate = canary.gate(POLICY)
    decisions = [gate.route(key) for key in KEYS]
    assert [d.arm for d in decisions] == [assign(salt, key, 2500) for key in KEYS]
    on_candidate = [d for d in decisions if d.arm is Arm.CANDIDATE]
    assert 40 < len(on_candidate) < 160  # 25% of 400, well inside binomial bounds
    for d in decisions:
        expected = candidate_id if d.arm is Arm.CANDIDATE else stable_id
        assert d.version.id == expected
        assert (d.rollout_id, d.stage, d.traffic_bp) == (rollout, "soak", 2500)
    assert json.loads(json.dumps(on_candidate[0].spec)) == CANDIDATE_SPEC


def test_same_key_gets_the_same_arm_every_time(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    start_rollout(store, clock, baseline=seeded[0], candidate=seeded[1], traffic_bp=5000)
    gate = canary.gate(POLICY)
    first = [gate.route(key).arm for key in KEYS]
    assert [gate.route(key).arm for key in KEYS] == first


def test_share_change_is_served_after_one_refresh_and_keeps_candidates(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    rollout = start_rollout(store, clock, baseline=seeded[0], candidate=seeded[1], traffic_bp=100)
    gate = canary.gate(POLICY)
    at_1 = {key for key in KEYS if gate.route(key).arm is Arm.CANDIDATE}
    previous = at_1
    for share in (500, 2500, 5000):
        update_rollout(store, rollout, traffic_bp=share)
        assert gate.route("probe").traffic_bp != share  # not yet: no refresh happened
        assert canary.refresh_now() is True
        now_candidates = {key for key in KEYS if gate.route(key).arm is Arm.CANDIDATE}
        assert gate.route("probe").traffic_bp == share
        assert previous <= now_candidates  # a ramp never moves a unit back to stable
        previous = now_candidates
    assert len(previous) > len(at_1)


def test_rollback_is_served_after_one_refresh(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    rollout = start_rollout(store, clock, baseline=seeded[0], candidate=seeded[1], traffic_bp=5000)
    gate = canary.gate(POLICY)
    assert any(gate.route(key).arm is Arm.CANDIDATE for key in KEYS)
    update_rollout(store, rollout, state="rolled_back", traffic_bp=0)
    assert canary.refresh_now() is True
    decisions = [gate.route(key) for key in KEYS]
    assert {d.arm for d in decisions} == {Arm.STABLE}
    assert {d.version.id for d in decisions} == {seeded[0]}
    assert {d.rollout_id for d in decisions} == {None}


def test_new_rollout_is_served_after_one_refresh(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    gate = canary.gate(POLICY)
    assert {gate.route(key).arm for key in KEYS} == {Arm.STABLE}
    rollout = start_rollout(
        store, clock, baseline=seeded[0], candidate=seeded[1], traffic_bp=10_000
    )
    assert {gate.route(key).arm for key in KEYS} == {Arm.STABLE}
    canary.refresh_now()
    assert {gate.route(key).arm for key in KEYS} == {Arm.CANDIDATE}
    assert gate.status().rollout_id == rollout


def test_paused_rollout_holds_its_share(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    rollout = start_rollout(store, clock, baseline=seeded[0], candidate=seeded[1], traffic_bp=2500)
    gate = canary.gate(POLICY)
    before = [gate.route(key).arm for key in KEYS]
    update_rollout(store, rollout, state="paused")
    canary.refresh_now()
    assert [gate.route(key).arm for key in KEYS] == before
    assert gate.status().rollout_state == "paused"


def test_promotion_serves_the_new_stable_version(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    rollout = start_rollout(store, clock, baseline=seeded[0], candidate=seeded[1], traffic_bp=5000)
    gate = canary.gate(POLICY)
    update_rollout(store, rollout, state="promoted", traffic_bp=10_000)
    Registry(store, clock=clock).set_stable(POLICY, "v2", reason="promoted", actor="test")
    canary.refresh_now()
    d = gate.route("user-1")
    assert (d.arm, d.version.number, d.rollout_id) == (Arm.STABLE, 2, None)


def test_unknown_policy_is_a_clear_not_found(seeded: tuple[str, str], canary: Canary) -> None:
    with pytest.raises(NotFoundError, match="no policy 'no-such-agent'"):
        canary.gate("no-such-agent")


def test_gate_is_one_object_per_policy(seeded: tuple[str, str], canary: Canary) -> None:
    assert canary.gate(POLICY) is canary.gate(POLICY)


def test_open_raises_when_the_store_cannot_be_reached(tmp_path: object) -> None:
    with pytest.raises(StoreUnavailableError):
        Canary.open(f"sqlite:///{tmp_path}/missing-dir/store.db", background=False)
    with pytest.raises(StoreUnavailableError):
        Canary.open("postgresql+psycopg://postgres@127.0.0.1:1/test", background=False)


def test_first_table_needs_the_store(store: Store, seeded: tuple[str, str], canary: Canary) -> None:
    with store_down(store), pytest.raises(StoreUnavailableError, match="unavailable"):
        canary.gate(POLICY)
    assert canary.gate(POLICY).route("user-1").arm is Arm.STABLE


def test_store_outage_keeps_serving_the_last_table_and_reports_staleness(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    start_rollout(store, clock, baseline=seeded[0], candidate=seeded[1], traffic_bp=2500)
    gate = canary.gate(POLICY)
    before = [gate.route(key).arm for key in KEYS]
    loaded = gate.status()
    assert (loaded.stale, loaded.last_error) == (False, None)
    with store_down(store):
        clock.advance(10)
        assert canary.refresh_now() is False
        assert [gate.route(key).arm for key in KEYS] == before
        status = gate.status()
        assert status.stale is True
        assert status.last_error is not None
        assert "unavailable" in status.last_error
        assert status.age.total_seconds() == 10
        assert status.loaded_at == loaded.loaded_at
        assert status.traffic_bp == 2500
    assert canary.refresh_now() is True
    recovered = gate.status()
    assert (recovered.stale, recovered.last_error, recovered.age.total_seconds()) == (
        False,
        None,
        0,
    )


def test_table_older_than_stale_after_is_stale(
    store: Store, clock: ManualClock, seeded: tuple[str, str]
) -> None:
    with Canary(store, clock=clock, background=False, refresh_interval=2.0) as canary:
        gate = canary.gate(POLICY)
        clock.advance(6)
        assert gate.status().stale is False
        clock.advance(0.5)
        assert gate.status().stale is True


def test_request_without_a_key_is_drawn_per_request_and_not_sticky(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    start_rollout(store, clock, baseline=seeded[0], candidate=seeded[1], traffic_bp=5000)
    gate = canary.gate(POLICY)
    decisions = [gate.route() for _ in range(2000)]
    assert {d.sticky for d in decisions} == {False}
    candidates = sum(d.arm is Arm.CANDIDATE for d in decisions)
    assert 850 < candidates < 1150  # 50% ± ~7 standard deviations
    assert gate.route(None).sticky is False
    assert canary.gate(POLICY).route("user-1").sticky is True


def test_stage_is_none_when_the_plan_names_no_stages(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    start_rollout(store, clock, baseline=seeded[0], candidate=seeded[1], traffic_bp=100)
    assert canary.gate(POLICY).route("u").stage is None


def test_spec_is_read_only_and_still_json(seeded: tuple[str, str], canary: Canary) -> None:
    spec = canary.gate(POLICY).route("u").spec
    with pytest.raises(TypeError, match="read-only"):
        spec["prompt"] = "changed"  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        spec.update(prompt="changed")  # type: ignore[attr-defined]
    assert json.loads(json.dumps(spec)) == STABLE_SPEC
    assert isinstance(spec, dict)


def test_route_refuses_a_key_that_is_not_text(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    gate = canary.gate(POLICY)
    with pytest.raises(InputError, match="unit_key must be a str"):
        gate.route(42)  # type: ignore[arg-type]
    start_rollout(store, clock, baseline=seeded[0], candidate=seeded[1], traffic_bp=100)
    canary.refresh_now()
    with pytest.raises(InputError, match="unit_key must be a str"):
        gate.route(42)  # type: ignore[arg-type]


def test_open_uses_the_environment_variable(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, clock: ManualClock
) -> None:
    seed = Store.open(sqlite_url)
    seed_policy(seed, clock)
    seed.close()
    monkeypatch.setenv("POLICY_CANARY_DB", sqlite_url)
    with Canary.open(background=False) as canary:
        assert canary.store.url == sqlite_url
        assert canary.gate(POLICY).route("u").version.number == 1


def test_routing_from_many_threads_while_the_table_changes(
    store: Store, clock: ManualClock, seeded: tuple[str, str], canary: Canary
) -> None:
    salt = "3c1e9f7a2b4d6e8f0a1c3e5f7b9d2f4a"
    rollout = start_rollout(
        store, clock, baseline=seeded[0], candidate=seeded[1], traffic_bp=1000, salt=salt
    )
    gate = canary.gate(POLICY)
    ids: list[str] = []
    wrong: list[str] = []
    lock = threading.Lock()

    def agent(worker: int) -> None:
        mine = []
        for i in range(3000):
            key = f"w{worker}-{i}"
            d = gate.route(key)
            # Each decision is consistent with the table it was made from.
            if d.arm is not assign(salt, key, d.traffic_bp):
                wrong.append(key)
            mine.append(d.decision_id)
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=agent, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for share in (2000, 3000, 4000):
        update_rollout(store, rollout, traffic_bp=share)
        canary.refresh_now()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert len(ids) == len(set(ids)) == 12_000


def test_background_refresher_picks_up_a_rollback(sqlite_url: str, clock: ManualClock) -> None:
    store = Store.open(sqlite_url)
    stable_id, candidate_id = seed_policy(store, clock)
    rollout = start_rollout(
        store, clock, baseline=stable_id, candidate=candidate_id, traffic_bp=10_000
    )
    with Canary(store, clock=clock, refresh_interval=0.02, owns_store=True) as canary:
        gate = canary.gate(POLICY)
        assert gate.route("u").arm is Arm.CANDIDATE
        update_rollout(store, rollout, state="rolled_back", traffic_bp=0)
        # The refresher thread is what is under test, so wait for it (bounded).
        deadline = time.monotonic() + 5
        while gate.route("u").arm is Arm.CANDIDATE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.route("u").arm is Arm.STABLE


@pytest.mark.parametrize(
    "options",
    [
        {"refresh_interval": 0},
        {"flush_interval": -1.0},
        {"retention": timedelta(0)},
        {"buffer_size": 0},
        {"batch_size": 0},
    ],
)
def test_bad_options_are_refused(store: Store, options: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        Canary(store, background=False, **options)


def test_an_unmigrated_database_is_a_clear_store_error(db_url: str) -> None:
    import sqlite3

    if db_url.startswith("sqlite:///"):  # an existing but empty database file
        sqlite3.connect(db_url.removeprefix("sqlite:///")).close()
    canary = Canary.open(db_url, migrate=False, background=False)
    # SQLite reports the missing table as an operational error, PostgreSQL as a programming
    # error: either way the caller gets one StoreError naming the problem.
    with pytest.raises(StoreError, match=r"store_state|routing table of 'support-agent'"):
        canary.gate(POLICY)
    canary.close()


def test_decisions_are_read_only(seeded: tuple[str, str], canary: Canary) -> None:
    d = canary.gate(POLICY).route("u")
    with pytest.raises(AttributeError):
        d.arm = Arm.CANDIDATE  # type: ignore[misc]
    with pytest.raises(AttributeError):
        d.sticky = False  # type: ignore[misc]
    assert "arm='stable'" in repr(d)
    assert "version=v1" in repr(d)


def test_rollouts_started_and_rolled_back_through_the_library_reach_the_gate(
    sqlite_url: str, clock: ManualClock
) -> None:
    store = Store.open(sqlite_url)
    seed_policy(store, clock)
    with Canary(store, clock=clock, background=False, owns_store=True) as canary:
        gate = canary.gate(POLICY)
        rollouts = Rollouts(store, clock=clock)
        started = rollouts.start(POLICY, candidate="v2", actor="test", reason="ship it")
        canary.refresh_now()
        status = gate.status()
        assert status.rollout_id == started.id
        assert (status.candidate_version, status.rollout_state) == (2, "running")
        assert status.traffic_bp > 0
        assert status.stage is not None
        d = gate.route("user-1")
        assert (d.rollout_id, d.stage) == (started.id, status.stage)
        rollouts.rollback(POLICY, reason="bad answers", actor="test")
        canary.refresh_now()
        assert gate.status().rollout_id is None
        assert {gate.route(key).version.number for key in KEYS} == {1}


def test_decision_spec_keeps_integers_beyond_2_to_the_53_exact(
    store: Store, clock: ManualClock, canary: Canary
) -> None:
    big = 123456789012345678901234567890
    Registry(store, clock=clock).register("big-ints", {"n": big, "m": 2**60}, author="test")
    spec = canary.gate("big-ints").route("u").spec
    assert spec["n"] == big
    assert type(spec["n"]) is int
    assert spec["m"] == 2**60
