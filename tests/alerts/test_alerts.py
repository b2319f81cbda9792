"""The alert outbox and dispatcher: idempotent enqueue, retries, backoff, per-sink status.

Every test runs on SQLite and on PostgreSQL (the ``store`` fixture) and drives time with a
``ManualClock``; sinks are the public in-memory fake.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select, text

from policy_canary.alerts import (
    Alert,
    AlertKind,
    AlertStatus,
    DeliveryStatus,
    Dispatcher,
    DispatchReport,
    MemorySink,
    Severity,
    WebhookSink,
    enqueue_alert,
    list_alerts,
    retry_delay,
)
from policy_canary.clock import ManualClock
from policy_canary.errors import InputError
from policy_canary.store import Store
from policy_canary.store.schema import alert_deliveries, alerts

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BASE = timedelta(seconds=10)
CAP = timedelta(minutes=5)


def enqueue(store: Store, key: str = "r1:rollback", **overrides: Any) -> int | None:
    fields: dict[str, Any] = {
        "key": key,
        "kind": "rollback",
        "severity": "critical",
        "summary": "support-agent v2 rolled back: failure rate up 80%",
        "payload": {"guardrail": "failure_rate", "e_value": 212.5},
        "at": T0,
        "policy": "support-agent",
        "rollout_id": "r1",
    }
    fields.update(overrides)
    with store.begin() as conn:
        return enqueue_alert(conn, **fields)


def dispatcher(store: Store, clock: ManualClock, *sinks: MemorySink, **kw: Any) -> Dispatcher:
    return Dispatcher(store, sinks, clock=clock, base_backoff=BASE, max_backoff=CAP, **kw)


def delivery(store: Store, sink: str, key: str = "r1:rollback") -> dict[str, Any]:
    with store.read() as conn:
        row = (
            conn.execute(
                select(alert_deliveries)
                .join(alerts, alerts.c.id == alert_deliveries.c.alert_id)
                .where(alerts.c.key == key, alert_deliveries.c.sink == sink)
            )
            .mappings()
            .one()
        )
    return dict(row)


# -- enqueue -------------------------------------------------------------------------------


def test_enqueue_is_idempotent_on_the_key_and_keeps_the_callers_transaction(
    store: Store,
) -> None:
    with store.begin() as conn:
        first = enqueue_alert(
            conn, key="r1:rollback", kind="rollback", severity="critical",
            summary="first", payload={}, at=T0,
        )  # fmt: skip
        second = enqueue_alert(
            conn, key="r1:rollback", kind="paused", severity="info",
            summary="second", payload={}, at=T0,
        )  # fmt: skip
        # The conflict did not abort the transaction (PostgreSQL would refuse this otherwise).
        third = enqueue_alert(
            conn, key="r1:stage", kind="stage_advanced", severity="info",
            summary="third", payload={}, at=T0,
        )  # fmt: skip
    assert isinstance(first, int)
    assert second is None
    assert isinstance(third, int)
    assert third != first
    assert enqueue(store, "r1:rollback") is None
    with store.read() as conn:
        rows = conn.execute(select(alerts.c.key, alerts.c.summary).order_by(alerts.c.id)).all()
    assert [tuple(r) for r in rows] == [("r1:rollback", "first"), ("r1:stage", "third")]


def test_an_alert_exists_only_if_the_callers_transaction_commits(store: Store) -> None:
    def failed_transition() -> None:
        with store.begin() as conn:
            enqueue_alert(
                conn, key="r9:rollback", kind="rollback", severity="critical",
                summary="never", payload={}, at=T0,
            )  # fmt: skip
            raise RuntimeError("transition failed")

    with pytest.raises(RuntimeError, match="transition failed"):
        failed_transition()
    assert list_alerts(store) == []


def test_enqueue_refuses_unknown_kind_severity_naive_time_and_bad_keys(store: Store) -> None:
    with pytest.raises(InputError, match="unknown alert kind 'oops'; use one of rollback, paused"):
        enqueue(store, kind="oops")
    with pytest.raises(InputError, match="unknown alert severity 'page'; use one of critical"):
        enqueue(store, severity="page")
    with pytest.raises(InputError, match="timezone-aware"):
        enqueue(store, at=datetime(2026, 1, 1))
    with pytest.raises(InputError, match="1-200 characters"):
        enqueue(store, key="")
    with pytest.raises(InputError, match="1-200 characters"):
        enqueue(store, key="k" * 201)
    with pytest.raises(InputError, match="non-empty summary"):
        enqueue(store, summary="  ")
    assert list_alerts(store) == []


def test_payload_values_json_cannot_hold_are_stored_as_strings(store: Store) -> None:
    enqueue(
        store,
        payload={
            "e_value": float("inf"),
            "at": T0,
            "kind": AlertKind.ROLLBACK,
            "arms": ("stable", "candidate"),
            3: "int key",
        },
    )
    [view] = list_alerts(store)
    assert view.alert.payload == {
        "e_value": "inf",
        "at": "2026-01-01T00:00:00+00:00",
        "kind": "rollback",
        "arms": ["stable", "candidate"],
        "3": "int key",
    }


# -- dispatching ---------------------------------------------------------------------------


def test_an_alert_is_delivered_once_to_each_sink(store: Store, clock: ManualClock) -> None:
    alert_id = enqueue(store)
    log, pager = MemorySink("log"), MemorySink("pager")
    d = dispatcher(store, clock, log, pager)

    assert d.dispatch_once() == DispatchReport(delivered=2, failed=0, pending=0)
    assert d.dispatch_once() == DispatchReport(delivered=0, failed=0, pending=0)
    clock.advance(timedelta(days=1))
    assert d.dispatch_once() == DispatchReport(delivered=0, failed=0, pending=0)

    assert log.keys == pager.keys == ["r1:rollback"]
    sent = log.sent[0]
    assert sent == Alert(
        id=alert_id or -1,
        key="r1:rollback",
        kind=AlertKind.ROLLBACK,
        severity=Severity.CRITICAL,
        summary="support-agent v2 rolled back: failure rate up 80%",
        created_at=T0,
        policy="support-agent",
        rollout_id="r1",
        payload={"guardrail": "failure_rate", "e_value": 212.5},
    )
    row = delivery(store, "pager")
    assert row["status"] == "delivered"
    assert row["attempts"] == 1
    assert row["delivered_at"] == T0
    assert row["next_attempt_at"] is None
    assert row["last_error"] is None


def test_a_failing_sink_keeps_the_alert_pending_with_attempts_and_error_then_delivers(
    store: Store, clock: ManualClock
) -> None:
    enqueue(store)
    sink = MemorySink("pager", fail_times=2, error="HTTP 503 from https://pager.example")
    d = dispatcher(store, clock, sink)

    assert d.dispatch_once() == DispatchReport(delivered=0, failed=1, pending=1)
    first_wait = retry_delay(1, key="r1:rollback", sink="pager", base=BASE, cap=CAP)
    row = delivery(store, "pager")
    assert (row["status"], row["attempts"], row["last_error"]) == (
        "pending",
        1,
        "HTTP 503 from https://pager.example",
    )
    assert row["next_attempt_at"] == T0 + first_wait
    [view] = list_alerts(store, status="pending")
    assert view.status is AlertStatus.PENDING
    assert view.deliveries[0].attempts == 1

    # Not due yet: nothing is sent a microsecond early.
    clock.advance(first_wait - timedelta(microseconds=1))
    assert d.dispatch_once() == DispatchReport(delivered=0, failed=0, pending=1)
    clock.advance(timedelta(microseconds=1))
    assert d.dispatch_once() == DispatchReport(delivered=0, failed=1, pending=1)
    clock.advance(CAP)
    assert d.dispatch_once() == DispatchReport(delivered=1, failed=0, pending=0)

    assert len(sink.attempts) == 3
    assert {a.key for a in sink.attempts} == {"r1:rollback"}
    assert sink.keys == ["r1:rollback"]
    row = delivery(store, "pager")
    assert (row["status"], row["attempts"], row["last_error"]) == ("delivered", 3, None)
    assert list_alerts(store, status="pending") == []
    assert [v.status for v in list_alerts(store, status="delivered")] == [AlertStatus.DELIVERED]


def test_backoff_schedule_is_exact_capped_and_jittered_from_the_key(
    store: Store, clock: ManualClock
) -> None:
    enqueue(store)
    sink = MemorySink("pager", fail_times=8)
    d = dispatcher(store, clock, sink)
    waits = []
    for _ in range(8):
        before = clock.now()
        assert d.dispatch_once().failed == 1
        next_at = delivery(store, "pager")["next_attempt_at"]
        waits.append(next_at - before)
        clock.set(next_at)
    assert d.dispatch_once().delivered == 1

    expected = []
    for n in range(1, 9):
        step = min(10 * 2 ** (n - 1), 300)
        seed = hashlib.sha256(f"r1:rollback\0pager\0{n}".encode()).digest()
        fraction = int.from_bytes(seed[:8], "big") / 2**64
        expected.append(timedelta(microseconds=round(step * (1 - 0.2 * fraction) * 1e6)))
    assert waits == expected
    for n, wait in enumerate(waits, start=1):
        step = timedelta(seconds=min(10 * 2 ** (n - 1), 300))
        assert step * 0.8 <= wait <= step
    # The jitter depends on the key, so alerts failing together do not retry in lockstep.
    assert retry_delay(1, key="r2:rollback", sink="pager", base=BASE, cap=CAP) != waits[0]
    # Huge attempt counts stay at the cap instead of overflowing.
    assert retry_delay(10_000, key="k", sink="s", base=BASE, cap=CAP) <= CAP


def test_a_sink_that_keeps_failing_shows_failing_and_is_still_retried(
    store: Store, clock: ManualClock
) -> None:
    enqueue(store)
    sink = MemorySink("pager", fail_times=50)
    d = dispatcher(store, clock, sink, failing_after=3)
    statuses = []
    for _ in range(6):
        d.dispatch_once()
        statuses.append(delivery(store, "pager")["status"])
        clock.advance(CAP)
    assert statuses == ["pending", "pending", "failing", "failing", "failing", "failing"]
    [view] = list_alerts(store, status="pending")
    assert view.deliveries[0].status is DeliveryStatus.FAILING
    assert view.deliveries[0].attempts == 6
    sink.fail_next(0)
    assert d.dispatch_once() == DispatchReport(delivered=1, failed=0, pending=0)


def test_any_exception_from_a_custom_sink_is_recorded_with_its_type(
    store: Store, clock: ManualClock
) -> None:
    enqueue(store)

    class BuggySink(MemorySink):
        def send(self, alert: Alert) -> None:
            raise ValueError("no route to pager for policy support-agent")

    report = dispatcher(store, clock, BuggySink("pager")).dispatch_once()
    assert report == DispatchReport(delivered=0, failed=1, pending=1)
    row = delivery(store, "pager")
    assert row["last_error"] == "ValueError: no route to pager for policy support-agent"
    assert row["status"] == "pending"


def test_several_sinks_keep_independent_status(store: Store, clock: ManualClock) -> None:
    enqueue(store)
    healthy, broken = MemorySink("log"), MemorySink("slack", fail_times=1, error="HTTP 500")
    d = dispatcher(store, clock, healthy, broken)
    assert d.dispatch_once() == DispatchReport(delivered=1, failed=1, pending=1)

    [view] = list_alerts(store, status="pending")
    assert [(x.sink, x.status, x.attempts, x.last_error) for x in view.deliveries] == [
        ("log", DeliveryStatus.DELIVERED, 1, None),
        ("slack", DeliveryStatus.PENDING, 1, "HTTP 500"),
    ]
    clock.advance(CAP)
    assert d.dispatch_once() == DispatchReport(delivered=1, failed=0, pending=0)
    assert healthy.keys == broken.keys == ["r1:rollback"]


def test_a_crash_after_claiming_resends_with_the_same_key_only_after_the_lease(
    store: Store, clock: ManualClock
) -> None:
    enqueue(store)

    class Crash(BaseException):
        pass

    class CrashingSink(MemorySink):
        crash = True

        def send(self, alert: Alert) -> None:
            super().send(alert)
            if self.crash:
                raise Crash  # the process dies after the receiver got the alert

    sink = CrashingSink("pager")
    d = dispatcher(store, clock, sink, claim_timeout=timedelta(minutes=5))
    with pytest.raises(Crash):
        d.dispatch_once()
    row = delivery(store, "pager")
    assert (row["status"], row["attempts"]) == ("sending", 1)
    assert row["next_attempt_at"] == T0 + timedelta(minutes=5)

    sink.crash = False
    clock.advance(timedelta(minutes=4))
    assert d.dispatch_once() == DispatchReport(delivered=0, failed=0, pending=1)
    clock.advance(timedelta(minutes=1))
    assert d.dispatch_once() == DispatchReport(delivered=1, failed=0, pending=0)
    # Sent twice in all, both times with the same idempotency key, marked delivered once.
    assert sink.keys == ["r1:rollback", "r1:rollback"]
    assert (delivery(store, "pager")["status"], delivery(store, "pager")["attempts"]) == (
        "delivered",
        2,
    )


def test_sending_happens_outside_the_claim_and_a_second_dispatcher_skips_claimed_rows(
    store: Store, clock: ManualClock
) -> None:
    enqueue(store)
    other_sink = MemorySink("pager")
    other = dispatcher(store, clock, other_sink)
    seen: list[DispatchReport] = []

    class ReentrantSink(MemorySink):
        def send(self, alert: Alert) -> None:
            # A second dispatcher runs while this one is mid-send. It must not wait on a lock
            # held by the first (the claim transaction already committed) nor send again.
            seen.append(other.dispatch_once())
            super().send(alert)

    d = dispatcher(store, clock, ReentrantSink("pager"))
    assert d.dispatch_once() == DispatchReport(delivered=1, failed=0, pending=0)
    assert seen == [DispatchReport(delivered=0, failed=0, pending=1)]
    assert other_sink.attempts == []


def test_a_stale_claim_does_not_overwrite_the_new_owners_outcome(
    store: Store, clock: ManualClock
) -> None:
    enqueue(store)
    fast = MemorySink("pager")
    fast_dispatcher = dispatcher(store, clock, fast, claim_timeout=timedelta(seconds=30))

    class SlowSink(MemorySink):
        def send(self, alert: Alert) -> None:
            # Our lease runs out mid-send; another dispatcher re-claims and delivers.
            clock.advance(timedelta(seconds=31))
            assert fast_dispatcher.dispatch_once().delivered == 1
            raise RuntimeError("connection reset")

    slow = dispatcher(store, clock, SlowSink("pager"), claim_timeout=timedelta(seconds=30))
    slow.dispatch_once()
    row = delivery(store, "pager")
    assert (row["status"], row["attempts"], row["last_error"]) == ("delivered", 2, None)
    assert fast.keys == ["r1:rollback"]


def test_a_new_sink_gets_only_alerts_still_pending_and_a_removed_sink_stays_visible(
    store: Store, clock: ManualClock
) -> None:
    enqueue(store, "a:done")
    enqueue(store, "b:done")
    log, pager = MemorySink("log"), MemorySink("pager")
    pager.fail_next(1)
    dispatcher(store, clock, log).dispatch_once()
    # A sink added later does not replay alerts that every earlier sink already accepted.
    dispatcher(store, clock, pager).dispatch_once()
    assert pager.attempts == []

    enqueue(store, "c:new")
    d = dispatcher(store, clock, log, pager)
    assert d.dispatch_once() == DispatchReport(delivered=1, failed=1, pending=1)
    assert [a.key for a in pager.attempts] == ["c:new"]

    # The pager is removed from the configuration while it still owes "c:new".
    assert dispatcher(store, clock, log).dispatch_once() == DispatchReport(
        delivered=0, failed=0, pending=0, unconfigured=1
    )
    assert [v.alert.key for v in list_alerts(store, status="pending")] == ["c:new"]


def test_with_no_sinks_alerts_stay_pending_and_counted(store: Store, clock: ManualClock) -> None:
    enqueue(store)
    assert Dispatcher(store, [], clock=clock).dispatch_once() == DispatchReport(0, 0, 1)
    [view] = list_alerts(store, status="pending")
    assert view.deliveries == ()
    assert view.to_dict()["status"] == "pending"


def test_list_alerts_orders_newest_first_limits_and_validates(
    store: Store, clock: ManualClock
) -> None:
    for i in range(3):
        enqueue(store, f"k{i}", at=T0 + timedelta(minutes=i))
    assert [v.alert.key for v in list_alerts(store)] == ["k2", "k1", "k0"]
    assert [v.alert.key for v in list_alerts(store, limit=2)] == ["k2", "k1"]
    assert list_alerts(store, status="delivered") == []
    with pytest.raises(InputError, match="unknown alert status 'open'; use one of pending"):
        list_alerts(store, status="open")
    with pytest.raises(InputError, match="limit must be a whole number from 1"):
        list_alerts(store, limit=0)


def test_dispatcher_refuses_duplicate_sink_names_and_bad_backoff(store: Store) -> None:
    with pytest.raises(InputError, match="share the name 'log'"):
        Dispatcher(store, [MemorySink("log"), MemorySink("log")])
    with pytest.raises(InputError, match="0 < base_backoff <= max_backoff"):
        Dispatcher(store, [], base_backoff=timedelta(0))
    with pytest.raises(InputError, match="0 < base_backoff <= max_backoff"):
        Dispatcher(store, [], base_backoff=timedelta(minutes=2), max_backoff=timedelta(minutes=1))
    with pytest.raises(InputError, match="sink 'webhook' may wait longer than the claim timeout"):
        Dispatcher(
            store,
            [WebhookSink("https://example.com/h", timeout=60)],
            claim_timeout=timedelta(seconds=30),
        )


def test_stored_rows_hold_plain_json_and_one_delivery_per_sink(
    store: Store, clock: ManualClock
) -> None:
    enqueue(store, at=datetime(2026, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=1))))
    dispatcher(store, clock, MemorySink("log")).dispatch_once()
    with store.read() as conn:
        payload = conn.execute(text("SELECT payload FROM alerts")).scalar_one()
        count = conn.execute(select(func.count()).select_from(alert_deliveries)).scalar_one()
    assert json.loads(payload) == {"e_value": 212.5, "guardrail": "failure_rate"}
    assert count == 1
    # Times come back in UTC whatever zone they were given in.
    assert list_alerts(store)[0].alert.created_at == datetime(2026, 1, 1, 1, 0, tzinfo=UTC)


def test_the_public_alert_api_is_curated_and_documented() -> None:
    import policy_canary.alerts as module

    assert sorted(module.__all__) == module.__all__
    for name in module.__all__:
        obj = getattr(module, name)
        if callable(obj) and not isinstance(obj, str):
            assert obj.__doc__, f"{name} has no docstring"
    assert {"enqueue_alert", "Dispatcher", "AlertSink", "MemorySink", "load_sinks"} <= set(
        module.__all__
    )
