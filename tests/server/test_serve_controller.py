"""``policy-canary serve --controller``: the controller loop inside the serving process.

Real ``serve`` processes on loopback (``_live.start``): a rollout started over the API
advances, promotes and rolls back with no controller process of its own; two replicas on
one PostgreSQL act once between them and hand over on SIGTERM; SIGTERM stops the loop,
releases the lease and writes every accepted event; ``--workers N`` runs one controller.
"""

from __future__ import annotations

import multiprocessing
import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
from _live import start, stop
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import func, select
from typer.testing import CliRunner

from _rollout_support import insert_events
from _serving import seed_policy
from policy_canary.cli import app as cli_app
from policy_canary.clock import SystemClock
from policy_canary.controller import Rollouts
from policy_canary.controller._shards import shard_of
from policy_canary.plan import RolloutPlan
from policy_canary.registry import Registry
from policy_canary.server import ControllerOptions, ServedController
from policy_canary.store import Store
from policy_canary.store.schema import audit, events, leases, rollout_ticks, rollouts
from policy_canary.tokens import Tokens

T = TypeVar("T")

#: Two stages that need no time and no samples (a tripwire passes without data).
QUICK_PLAN = """\
guardrails: [{name: critical, metric: safety_flags, tripwire: true, flags: [critical]}]
stages:
  - {name: first, traffic: 10}
  - {name: second, traffic: 50}
"""
#: Half the traffic on the candidate for an hour, unless the tripwire fires.
HOLD_PLAN = """\
guardrails: [{name: critical, metric: safety_flags, tripwire: true, flags: [critical]}]
stages:
  - {name: half, traffic: 50, min_duration: 1h}
"""
#: Eight one-second stages: about eight transitions, one a second.
STAGED_PLAN = (
    "guardrails: [{name: critical, metric: safety_flags, tripwire: true, flags: [critical]}]\n"
    "stages:\n"
    + "".join(f"  - {{name: s{p}, traffic: {p}, min_duration: 1s}}\n" for p in range(5, 45, 5))
)
CONTROLLER = ["--controller", "--controller-interval", "0.2s", "--no-alerts"]
#: The tick actions that change a rollout (a hold changes nothing).
MOVES = {"advance", "promote", "rollback", "pause"}
TRANSITION = re.compile(r"controller (\S+): support-agent (\w+) \(revision (\d+)\)")


def _wait(check: Callable[[], T], what: str, seconds: float = 30) -> T:
    """Poll ``check`` until it returns something true; fail after ``seconds`` (a bound)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _rollout(store: Store, rollout_id: str) -> Any:
    with store.read() as conn:
        return conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).one()


def _ticks(store: Store, rollout_id: str) -> list[Any]:
    with store.read() as conn:
        return list(
            conn.execute(
                select(
                    rollout_ticks.c.revision, rollout_ticks.c.action, rollout_ticks.c.stage_index
                )
                .where(rollout_ticks.c.rollout_id == rollout_id)
                .order_by(rollout_ticks.c.seq)
            ).all()
        )


def _moves(store: Store, rollout_id: str) -> list[str]:
    return [t.action for t in _ticks(store, rollout_id) if t.action in MOVES]


def _metric(base: str, token: str, name: str) -> float | None:
    body = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"}).text
    found = re.search(rf"^{name} (\S+)$", body, re.M)
    return float(found.group(1)) if found else None


class _Ops:
    def __init__(self, base: str, secret: str) -> None:
        self.client = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=10
        )

    def start(self, candidate: str, plan: str) -> str:
        started = self.client.post(
            "/api/v1/policies/support-agent/rollouts",
            json={"candidate": candidate, "plan": plan, "reason": "serve --controller test"},
        )
        assert started.status_code == 201, started.text
        return str(started.json()["id"])

    def close(self) -> None:
        self.client.close()


class _Traffic:
    """An agent on OFREP: evaluates 40 users and records their events, every 0.1 s.

    Events of ``regressing`` (a version label) carry the tripwire's flag. Stops on
    :meth:`stop`, or by itself after ``seconds``.
    """

    def __init__(self, base: str, secret: str, *, regressing: str | None = None) -> None:
        self.base, self.secret, self.regressing = base, secret, regressing
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(120.0,), daemon=True)
        self.thread.start()

    def _run(self, seconds: float) -> None:
        headers = {"Authorization": f"Bearer {self.secret}"}
        deadline = time.monotonic() + seconds
        # One keep-alive connection: with --workers N the worker that made a decision
        # (and holds it) is the one that receives its event.
        with httpx.Client(base_url=self.base, headers=headers, timeout=10) as client:
            while not self.done.is_set() and time.monotonic() < deadline:
                batch = []
                for n in range(40):
                    flag = client.post("/ofrep/v1/evaluate/flags/support-agent",
                                       json={"context": {"targetingKey": f"user-{n}"}})  # fmt: skip
                    if flag.status_code != 200:
                        continue
                    body = flag.json()
                    event: dict[str, Any] = {"decision_id": body["metadata"]["decisionId"],
                                             "latency_ms": 5.0}  # fmt: skip
                    if body["variant"] == self.regressing:
                        event["safety_flags"] = ["critical"]
                    batch.append(event)
                client.post("/api/v1/events", json={"events": batch})
                self.done.wait(0.1)

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=30)


def test_a_rollout_started_over_the_api_is_promoted_and_one_rolled_back_in_process(
    db_url: str,
) -> None:
    """Given ``serve --controller`` and no controller process, a rollout started over the API
    advances and is promoted; a second candidate whose reply trips the tripwire is rolled
    back; /metrics carries the controller's series; every transition is printed once."""
    store = Store.open(db_url)
    seed_policy(store, SystemClock())
    tokens = Tokens(store)
    ops_secret = tokens.create("ops", role="operator", actor="t").secret
    agent_secret = tokens.create("agent", role="agent", actor="t").secret
    proc, base = start(db_url, *CONTROLLER, "--controller-holder", "ctl-a")
    ops = _Ops(base, ops_secret)
    traffic = _Traffic(base, agent_secret, regressing="v3")
    try:
        first = ops.start("v2", QUICK_PLAN)
        _wait(lambda: _rollout(store, first).state == "promoted", "the promotion")
        assert _moves(store, first) == ["advance", "promote"]
        Registry(store).register("support-agent", {"prompt": "regressed"}, author="t")
        second = ops.start("v3", HOLD_PLAN)
        _wait(lambda: _rollout(store, second).state == "rolled_back", "the rollback")
        assert _moves(store, second) == ["rollback"]
        assert _metric(base, ops_secret, "policy_canary_controller_leader") == 1.0
        ticked = _metric(base, ops_secret, "policy_canary_controller_tick_duration_seconds_count")
        assert ticked is not None
        assert ticked >= 3
    finally:
        traffic.stop()
        ops.close()
        out = stop(proc)
    assert "controller: in-process as ctl-a, ticking every 0.2s, no alerts" in out
    assert "controller ctl-a holds the lease and acts" in out
    printed = [(m[1], int(m[2])) for m in TRANSITION.findall(out)]
    stored = [(t.action, t.revision) for t in _ticks(store, first) + _ticks(store, second)]
    assert printed == [s for s in stored if s[0] in MOVES]
    assert re.search(r"controller ctl-a stopped after \d+ ticks; lease released", out)
    store.close()


def test_two_replicas_act_once_between_them_and_hand_over_on_sigterm(pg_url: str) -> None:
    """Given two ``serve --controller`` replicas on one PostgreSQL, one acts and the other
    stands by; SIGTERM to the acting one hands the lease over and the other finishes the
    rollout; every transition is applied (and printed) by exactly one of them."""
    store = Store.open(pg_url)
    seed_policy(store, SystemClock())
    tokens = Tokens(store)
    ops_secret = tokens.create("ops", role="operator", actor="t").secret
    agent_secret = tokens.create("agent", role="agent", actor="t").secret
    leader = "policy_canary_controller_leader"
    first, base_a = start(pg_url, *CONTROLLER, "--controller-holder", "ctl-a")
    second = ops = traffic = None
    try:
        _wait(lambda: _metric(base_a, ops_secret, leader) == 1.0, "ctl-a leading")
        second, base_b = start(pg_url, *CONTROLLER, "--controller-holder", "ctl-b")
        ok_ticks = 'policy_canary_controller_ticks_total{outcome="ok"}'
        _wait(lambda: (_metric(base_b, ops_secret, ok_ticks) or 0) >= 2, "ctl-b ticking")
        assert _metric(base_b, ops_secret, leader) == 0.0
        ops = _Ops(base_b, ops_secret)  # started through the standby: any replica will do
        traffic = _Traffic(base_b, agent_secret)
        rollout = ops.start("v2", STAGED_PLAN)

        def advances() -> int:
            return sum(t.action == "advance" for t in _ticks(store, rollout))

        _wait(lambda: advances() >= 2, "two advances by the leader")
        out_a = stop(first)
        _wait(lambda: _rollout(store, rollout).state == "promoted", "the standby promoting")
        assert _metric(base_b, ops_secret, leader) == 1.0
    finally:
        if traffic is not None:
            traffic.stop()
        if ops is not None:
            ops.close()
        if first.poll() is None:
            out_a = stop(first)
        out_b = stop(second) if second is not None else ""
    ticks = _ticks(store, rollout)
    revisions = [t.revision for t in ticks]
    assert len(revisions) == len(set(revisions)), f"a transition applied twice: {ticks}"
    advanced = [t.stage_index for t in ticks if t.action == "advance"]
    assert advanced == list(range(7)), f"a stage passed twice or skipped: {ticks}"
    by_a = [int(m[2]) for m in TRANSITION.findall(out_a)]
    by_b = [int(m[2]) for m in TRANSITION.findall(out_b)]
    assert by_a, out_a
    assert by_b, out_b
    assert sorted(by_a + by_b) == [t.revision for t in ticks if t.action in MOVES]
    assert max(by_a) < min(by_b)  # the standby acted only after the leader stopped
    assert "controller ctl-a holds the lease and acts" in out_a
    assert "controller ctl-b stands by: another controller holds the lease" in out_b
    assert "controller ctl-b took the lease and acts" in out_b
    with store.read() as conn:
        audited = conn.execute(
            select(audit.c.action).where(audit.c.subject == f"support-agent/{rollout}")
            .order_by(audit.c.id)
        ).scalars().all()  # fmt: skip
    assert audited == [f"rollout.{t.action}" for t in ticks if t.action != "hold"]  # once each
    store.close()


def test_sigterm_stops_the_controller_releases_the_lease_and_writes_the_events(
    sqlite_url: str,
) -> None:
    """Given ``serve --controller`` holding the lease and events just accepted, SIGTERM
    stops the loop before the canary closes, frees the lease row, writes every event and
    ends the process as a clean SIGTERM exit."""
    store = Store.open(sqlite_url)
    stable, _ = seed_policy(store, SystemClock())
    secret = Tokens(store).create("agent", role="agent", actor="t").secret
    proc, base = start(sqlite_url, *CONTROLLER, "--controller-holder", "ctl-a")
    try:

        def lease_holder() -> str | None:
            with store.read() as conn:
                return conn.execute(select(leases.c.holder)).scalar_one_or_none()

        assert _wait(lease_holder, "the lease taken") == "ctl-a"
        batch = [
            {"decision_id": f"remote-{n}", "policy": "support-agent", "arm": "stable",
             "version_digest": stable, "at": "2026-01-01T00:00:00+00:00", "latency_ms": 1.0}
            for n in range(500)
        ]  # fmt: skip
        posted = httpx.post(f"{base}/api/v1/events", json={"events": batch},
                            headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
        assert posted.json() == {"accepted": 500}, posted.text
    finally:
        out = stop(proc)  # at once: the events may still be in the buffer
    assert proc.returncode in (0, -signal.SIGTERM)
    assert re.search(r"controller ctl-a stopped after \d+ ticks; lease released", out)
    assert out.index("lease released") < out.index("Application shutdown complete")
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(leases)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 500
    store.close()


def test_with_workers_the_supervisor_runs_the_one_controller(sqlite_url: str) -> None:
    """Given ``serve --workers 2 --controller``, one controller (the supervisor's) promotes
    a rollout started through a worker; the banner says where it runs; SIGTERM stops it."""
    store = Store.open(sqlite_url)
    seed_policy(store, SystemClock())
    tokens = Tokens(store)
    ops_secret = tokens.create("ops", role="operator", actor="t").secret
    agent_secret = tokens.create("agent", role="agent", actor="t").secret
    proc, base = start(sqlite_url, "--workers", "2", *CONTROLLER)
    ops = _Ops(base, ops_secret)
    traffic = _Traffic(base, agent_secret)
    try:
        rollout = ops.start("v2", QUICK_PLAN)
        _wait(lambda: _rollout(store, rollout).state == "promoted", "the promotion")
        assert _metric(base, ops_secret, "policy_canary_controller_leader") is None
    finally:
        traffic.stop()
        ops.close()
        out = stop(proc)
    assert "controller: runs in the supervisor process, not in the workers" in out
    holders = set(re.findall(r"controller (\S+) holds the lease and acts", out))
    parent = re.search(r"Started parent process \[(\d+)\]", out)
    assert parent is not None
    assert len(holders) == 1
    assert holders.pop().endswith(f":{parent.group(1)}")  # host:pid of the supervisor
    assert [m[1] for m in TRANSITION.findall(out)] == ["advance", "promote"]
    assert re.search(r"stopped after \d+ ticks; lease released", out)
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(leases)).scalar_one() == 0
    store.close()


def test_controller_options_need_controller_and_a_sane_interval(sqlite_url: str) -> None:
    runner = CliRunner()
    refusals = [
        (["--controller-interval", "1s"], 1,
         "--controller-interval only apply to the in-process controller"),
        (["--no-alerts", "--controller-holder", "x"], 1,
         "--controller-holder, --no-alerts only apply"),
        (["--controller", "--controller-interval", "0.001s"], 1,
         "--controller-interval '0.001s' is shorter than"),
        (["--controller-processes", "2"], 1,
         "--controller-processes only apply to the in-process controller"),
        (["--controller", "--controller-processes", "0"], 2,
         "Invalid value for '--controller-processes'"),
    ]  # fmt: skip
    for options, code, said in refusals:
        refused = runner.invoke(cli_app, ["--db", sqlite_url, "serve", "--no-auth", *options])
        assert (refused.exit_code, said in refused.stderr) == (code, True), refused.stderr


def test_an_in_process_controller_in_two_processes_promotes_every_rollout(store: Store) -> None:
    """Given serve's controller with ``processes=2`` and rollouts of eight or more policies
    fed a few requests each, every rollout is promoted (whichever process owns it); stopping
    the controller stops its child process and frees the lease."""
    registry = Registry(store)
    starts = Rollouts(store)
    ids: dict[str, str] = {}
    # Eight rollouts, more if need be until each process owns some (ids are random).
    while len(ids) < 8 or {shard_of(rid, 2) for rid in ids.values()} != {0, 1}:
        policy = f"agent-{len(ids)}"
        registry.register(policy, {"prompt": "v1"}, author="t")
        registry.register(policy, {"prompt": "v2"}, author="t")
        plan = RolloutPlan.loads(QUICK_PLAN)
        ids[policy] = starts.start(policy, candidate="v2", plan=plan).id

    def promoted() -> bool:
        done = True
        for policy, rid in ids.items():
            row = _rollout(store, rid)
            if row.state != "promoted":
                done = False
                stage = ("first", "second")[row.stage_index]  # QUICK_PLAN's
                insert_events(store, rollout_id=rid, stage=stage, at=datetime.now(UTC),
                              candidate=1, stable=1, policy=policy)  # fmt: skip
        return done

    options = ControllerOptions(interval=timedelta(milliseconds=20), holder="t", processes=2)
    served = ServedController(store, options, sinks=[], echo=lambda line: None)
    assert "ticking every 0.02s in 2 processes, delivers alerts" in served.banner()
    served.start()
    try:
        _wait(promoted, "every promotion", seconds=60)
        children = multiprocessing.active_children()
        assert children  # the second process, which ticked its share
    finally:
        assert served.stop() is True
    assert [_moves(store, rid) for rid in ids.values()] == [["advance", "promote"]] * len(ids)
    assert not any(child.is_alive() for child in children)
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(leases)).scalar_one() == 0


def test_the_in_process_loop_survives_a_failing_loop_and_a_closed_stdout(
    store: Store,
) -> None:
    """Given a controller whose loop once ends by an error and whose every line fails to
    print, the thread keeps ticking, leads, meters its ticks and stops on request."""
    printed: list[str] = []

    def echo(line: str) -> None:
        printed.append(line)
        raise BrokenPipeError("stdout is closed")

    served = ServedController(
        store,
        ControllerOptions(interval=timedelta(milliseconds=10), holder="t"),
        sinks=[],
        echo=echo,
    )
    registry = CollectorRegistry()
    served.meter(registry)
    real_run = served.worker.run
    failures = iter([RuntimeError("a bug escaping run()")])

    def run_failing_once(**kwargs: Any) -> int:
        error = next(failures, None)
        if error is not None:
            raise error
        return real_run(**kwargs)

    served.worker.run = run_failing_once  # type: ignore[method-assign]
    served.start()
    try:
        _wait(lambda: served.ticks >= 3, "three ticks after the failure", seconds=30)
        assert served.leading is True
        assert printed[0] == "controller t holds the lease and acts"
        assert b"policy_canary_controller_leader 1.0" in generate_latest(registry)
    finally:
        assert served.stop() is True
    assert printed[-1].startswith("controller t stopped after ")
    assert served.stop() is True  # idempotent: nothing printed twice
    assert sum(line.startswith("controller t stopped") for line in printed) == 1


def test_a_standby_reports_who_leads_and_takes_over(store: Store) -> None:
    """Given a controller that holds the lease, a second one stands by until the first
    stops, then takes the lease; each prints its leadership changes once."""
    lines: list[str] = []
    options = ControllerOptions(interval=timedelta(milliseconds=20))
    a = ServedController(store, ControllerOptions(interval=options.interval, holder="a"),
                         sinks=[], echo=lines.append)  # fmt: skip
    b = ServedController(store, ControllerOptions(interval=options.interval, holder="b"),
                         sinks=[], echo=lines.append)  # fmt: skip
    a.start()
    try:
        _wait(lambda: a.leading, "a leading")
        b.start()
        _wait(lambda: b.ticks >= 2, "b ticking")
        assert b.leading is False
        assert a.stop() is True
        _wait(lambda: b.leading, "b taking over")
    finally:
        a.stop()
        b.stop()
    standby = next(line for line in lines if line.startswith("controller b stands by"))
    expected = "a" if store.dialect == "sqlite" else "another controller"
    assert standby == f"controller b stands by: {expected} holds the lease"
    assert lines.count("controller b took the lease and acts") == 1
    assert lines.count("controller a holds the lease and acts") == 1
