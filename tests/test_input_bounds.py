"""Lengths and ranges the store's columns impose are checked first, the same on both backends.

PostgreSQL refuses a 1,000-character actor (``varchar(200)``) or ``v2147483648`` (``integer out
of range``) where SQLite stores or overflows; either way the user must get a user error, and
nothing may be stored.
"""

from __future__ import annotations

import pytest
from sqlalchemy import Table, func, select

from _rollout_support import POLICY, CountingMonitors, setup_policy, small_plan
from policy_canary.alerts import list_alerts
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller, Incidents, Rollouts
from policy_canary.errors import InputError, NotFoundError
from policy_canary.registry import Registry
from policy_canary.store import Store
from policy_canary.store.schema import audit, rollouts, versions

LONG = "a" * 1000


def _count(store: Store, table: Table) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_too_long_author_is_a_user_error_and_stores_nothing(
    store: Store, clock: ManualClock
) -> None:
    registry = Registry(store, clock=clock)
    with pytest.raises(InputError, match="--author is 1,000 characters long; give at most 200"):
        registry.register("agent", {"prompt": "x"}, author=LONG)
    assert _count(store, versions) == 0
    assert registry.register("agent", {"prompt": "x"}, author="b" * 200).version.author == "b" * 200


@pytest.mark.parametrize("bad", ["nul\x00byte", "lone \ud800 surrogate"])
def test_text_no_backend_can_store_is_refused_on_both(
    store: Store, clock: ManualClock, bad: str
) -> None:
    registry = Registry(store, clock=clock)
    with pytest.raises(InputError, match="--message contains"):
        registry.register("agent", {"prompt": "x"}, message=bad)
    with pytest.raises(InputError, match="--author contains"):
        registry.register("agent", {"prompt": "x"}, author=bad)
    assert _count(store, versions) == 0


def test_set_stable_checks_the_actor_first(store: Store, clock: ManualClock) -> None:
    registry = setup_policy(store, clock)
    before = _count(store, audit)
    with pytest.raises(InputError, match="--actor is 1,000 characters long"):
        registry.set_stable(POLICY, "v2", reason="by hand", actor=LONG)
    assert _count(store, audit) == before
    assert registry.stable(POLICY).number == 1


@pytest.mark.parametrize("ref", ["v2147483648", "v99999999999999999999", "v" + "9" * 5000])
def test_version_numbers_past_the_column_range_are_simply_not_found(
    store: Store, clock: ManualClock, ref: str
) -> None:
    registry = setup_policy(store, clock)
    with pytest.raises(
        NotFoundError, match=rf"no version 'v\d+.*' of policy '{POLICY}'; it has v1..v2"
    ):
        registry.resolve(POLICY, ref)
    assert registry.resolve(POLICY, "v2").number == 2


def test_rollout_commands_check_the_actor_before_writing(store: Store, clock: ManualClock) -> None:
    setup_policy(store, clock)
    ops = Rollouts(store, clock=clock, monitors=CountingMonitors())
    with pytest.raises(InputError, match="--actor is 1,000 characters long"):
        ops.start(POLICY, candidate="v2", plan=small_plan(), actor=LONG)
    assert _count(store, rollouts) == 0
    ops.start(POLICY, candidate="v2", plan=small_plan(), actor="alice")
    for call in (ops.pause, ops.promote, ops.abort, ops.rollback):
        with pytest.raises(InputError, match="--actor is 1,000 characters long"):
            call(POLICY, reason="why", actor=LONG)
    with pytest.raises(InputError, match=r"--reason contains a NUL byte"):
        ops.pause(POLICY, reason="why\x00", actor="alice")
    (status,) = ops.status(POLICY)
    assert status.rollout.state.value == "running"


def test_listing_limits_past_any_range_are_user_errors(store: Store) -> None:
    for limit in (0, 10**20):
        with pytest.raises(InputError, match="limit must be a whole number from 1 to 1,000,000"):
            Incidents(store).list(limit=limit)
        with pytest.raises(InputError, match="limit must be a whole number from 1 to 1,000,000"):
            list_alerts(store, limit=limit)


def test_a_too_long_controller_holder_is_refused(store: Store) -> None:
    with pytest.raises(InputError, match="--holder is 300 characters long"):
        Controller(store, holder="h" * 300)
