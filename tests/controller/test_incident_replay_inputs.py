"""Replaying an edited incident export never crashes: malformed traces are clear problems.

Given a real incident export whose trace was edited (any value at any place) and whose bundle
hash was recomputed to match, when it is replayed, then replay either reports the file's
problems or raises :class:`InputError` naming what is malformed; nothing else escapes.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from _json_values import json_scalars, json_values
from _rollout_support import POLICY, CountingMonitors, insert_events, setup_policy, small_plan
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller, Incidents, Rollouts, replay
from policy_canary.controller._bundle import bundle_hash
from policy_canary.errors import InputError
from policy_canary.store import Store

JSON = json_values(json_scalars(text=8), key_text=6, width=3, leaves=8)
PLACES = st.sampled_from(
    [("seq",), ("at",), ("action",), ("inputs",), ("verdicts",), ("inputs", "snapshot"),
     ("inputs", "now"), ("inputs", "decision"), ("inputs", "manual"), ("verdicts", 0)]
)  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The export document of a rollout that advanced once, then breached in validation."""
    store = Store.open(f"sqlite:///{tmp_path_factory.mktemp('replay')}/store.db")
    clock = ManualClock()
    setup_policy(store, clock)
    monitors = CountingMonitors(breach_after=5, min_n=5)
    row = Rollouts(store, clock=clock, monitors=monitors).start(
        POLICY, candidate="v2", plan=small_plan()
    )
    controller = Controller(store, clock=clock, monitors=monitors, holder="t")
    insert_events(store, rollout_id=row.id, stage="canary", at=clock.now(), candidate=20, stable=20)
    controller.tick()
    clock.advance(timedelta(minutes=10))
    controller.tick()
    insert_events(store, rollout_id=row.id, stage="validation", at=clock.now(), candidate=20,
                  stable=20, errors=5)  # fmt: skip
    clock.advance(timedelta(minutes=1))
    controller.tick()
    (incident,) = Incidents(store).list()
    document = incident.export_document()
    store.close()
    assert replay(document).ok
    return document


def _replay_edited(document: dict[str, Any]) -> None:
    document["bundle_hash"] = bundle_hash(document["bundle"])  # the editor covered its tracks
    try:
        result = replay(document, source="edited.json")
    except InputError as exc:
        message = exc.message
    else:
        message = "edited.json: " + "; ".join(result.problems)
    assert message.startswith("edited.json: ")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), place=PLACES, value=JSON)
def test_an_edited_trace_entry_is_a_problem_never_a_crash(
    exported: dict[str, Any], data: st.DataObject, place: tuple[Any, ...], value: Any
) -> None:
    document = copy.deepcopy(exported)
    trace = document["bundle"]["trace"]
    target = trace[data.draw(st.integers(0, len(trace) - 1))]
    try:
        for key in place[:-1]:
            target = target[key]
        target[place[-1]]  # the place exists in this tick (a hold may have no verdicts)
    except (KeyError, IndexError):
        assume(False)
    target[place[-1]] = value
    _replay_edited(document)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(["trace", "plan", "plan_hash", "id"]), value=JSON)
def test_an_edited_bundle_field_is_a_problem_never_a_crash(
    exported: dict[str, Any], key: str, value: Any
) -> None:
    document = copy.deepcopy(exported)
    document["bundle"][key] = value
    _replay_edited(document)


@pytest.mark.parametrize("entry", ["tick", 7, None, ["rollback"], {"seq": "one"}, {"seq": True}])
def test_a_trace_entry_that_is_not_a_tick_is_malformed(
    exported: dict[str, Any], entry: Any
) -> None:
    document = copy.deepcopy(exported)
    document["bundle"]["trace"].append(entry)
    document["bundle_hash"] = bundle_hash(document["bundle"])
    with pytest.raises(InputError, match=r"edited\.json: the bundle is incomplete or malformed"):
        replay(document, source="edited.json")
