"""Several hosts on one PostgreSQL, for real: network namespaces, partitions, failover.

Three hosts (``_topology.py``) on one switch; PostgreSQL reached through a forwarder on the
switch. Each host runs a direct agent (``Canary.open`` on PostgreSQL) and a remote agent
(``Canary.connect`` through a ``policy-canary serve`` replica on another host); h1 and h2
run a replica each, h1 the acting controller and h2 a standby. The scenarios, in order:

1. a rollback reaches every agent on every host (propagation measured: p50/p99);
2. an agent host loses its link during a rollback: it keeps serving its last table,
   reports stale, buffers (or counts as dropped) its events, and after the link returns
   serves stable and writes them;
3. the acting controller's host loses its link: the standby takes over once the lease
   expires, no transition is applied twice, and the old leader stays idle when it returns;
4. a replica is killed under load: its remote agents fail over to the other one;
then every agent stops and every event it recorded is in the store (or counted dropped).

Timings are measured and reported (``-s``, and ``$POLICY_CANARY_HOSTS_REPORT`` as JSON),
never asserted. Needs root and iproute2; fails with a clear message without them.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from _topology import (
    LIFETIME,
    PG_PORT,
    SERVER_PORT,
    SWITCH_ADDRESS,
    Proc,
    Topology,
    TopologyError,
)
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from _serving import CANDIDATE_SPEC, POLICY, STABLE_SPEC
from policy_canary.controller import Rollouts
from policy_canary.errors import ConflictError, NotFoundError
from policy_canary.registry import Registry
from policy_canary.store import Store
from policy_canary.store.schema import events, rollout_ticks
from policy_canary.tokens import Tokens

pytestmark = pytest.mark.slow

PG_URL = os.environ.get(
    "POLICY_CANARY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

#: One stage held for an hour: the controller leaves it alone, the test rolls it back.
HOLD_PLAN = """\
guardrails: [{name: error_rate, metric: error, max_increase: 20%}]
stages: [{name: hold, traffic: 50, min_duration: 1h}]
"""
#: Fifteen one-second stages behind a tripwire (which needs no data to pass): the controller
#: advances about once a second.
STAGED_PLAN = (
    "guardrails: [{name: critical, metric: safety_flags, tripwire: true, flags: [critical]}]\n"
    "stages:\n"
    + "".join(f"  - {{name: s{p}, traffic: {p}, min_duration: 1s}}\n" for p in range(5, 80, 5))
)
LEASE_TTL = 2.0
TICK_INTERVAL = 0.2
CYCLES = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Cluster:
    topo: Topology
    store: Store
    local_url: str
    procs: dict[str, Proc] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    versions: int = 0

    @property
    def agents(self) -> dict[str, Proc]:
        return {k: p for k, p in self.procs.items() if k.startswith(("D", "R"))}

    def candidate(self) -> str:
        """A fresh candidate version (a rejected one is never retried automatically)."""
        self.versions += 1
        spec = {**CANDIDATE_SPEC, "revision": self.versions}
        return Registry(self.store).register(POLICY, spec, author="test").version.id

    def start(self, plan: str) -> str:
        plan_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"plan-{uuid.uuid4().hex}.yaml"
        plan_file.write_text(plan)
        try:
            rollout = Rollouts(self.store).start(POLICY, candidate=self.candidate(), plan=plan_file)
        finally:
            plan_file.unlink()
        return rollout.id

    def rollback(self) -> float:
        """Roll the active rollout back; return the wall time just after it committed."""
        Rollouts(self.store).rollback(POLICY, reason="multi-host test", actor="test")
        return time.time()

    def wait_view(self, name: str, rollout: str | None, after: float = 0.0) -> dict[str, Any]:
        """The agent's first route() answer for ``rollout`` (None: stable only) after ``after``."""
        proc = self.procs[name]

        def seen() -> dict[str, Any] | None:
            return next(
                (v for v in proc.of("view") if v["rollout"] == rollout and v["at"] >= after), None
            )

        found: dict[str, Any] = proc.wait_for(seen, f"route() answering rollout {rollout}")
        return found


def _pg_for_hosts(local: str, schema: str, *extra: str) -> str:
    """The test's PostgreSQL URL as the hosts reach it: through the switch's forwarder."""
    url = make_url(local).set(host=SWITCH_ADDRESS, port=PG_PORT)
    options = " ".join([f"-csearch_path={schema}", *extra])
    query = {
        "options": options,
        # A host that loses its link abandons a silent connection after a second, instead
        # of waiting out TCP's retransmission backoff, so it reconnects as soon as it can.
        "tcp_user_timeout": "1000",
        "connect_timeout": "2",
    }
    rendered = url.set(query={}).render_as_string(hide_password=False)
    return rendered + "?" + "&".join(f"{k}={quote(v)}" for k, v in query.items())


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    target = make_url(PG_URL)
    if target.host not in ("127.0.0.1", "localhost"):
        pytest.fail(f"the multi-host test forwards to a loopback PostgreSQL, not {target}")
    schema = f"t_hosts_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except OperationalError as error:  # as conftest: a failure in CI, skipped locally
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL at {PG_URL} is unreachable: {error.orig}", pytrace=False)
        pytest.skip(f"PostgreSQL unreachable: {error.orig}")
    sep = "&" if "?" in PG_URL else "?"
    local_url = f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    store = Store.open(local_url)
    try:
        topo = Topology.build()
    except TopologyError as error:
        store.close()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        pytest.fail(f"cannot build the test hosts: {error}", pytrace=False)
    cluster = Cluster(topo, store, local_url)
    try:
        _populate(cluster, schema, target.port or 5432)
        yield cluster
    finally:
        for proc in reversed(list(cluster.procs.values())):
            proc.terminate()  # all at once: each drains in parallel
        for proc in reversed(list(cluster.procs.values())):
            began = time.monotonic()
            code = proc.stop()
            cluster.report.setdefault("stopped", {})[proc.name] = [
                code,
                round(time.monotonic() - began, 1),
            ]
        topo.destroy()
        left = topo.exists()
        store.close()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
        _write_report(cluster.report)
        assert not left, f"namespaces left behind: {left}"


def _populate(cluster: Cluster, schema: str, pg_port: int) -> None:
    topo, procs = cluster.topo, cluster.procs
    Registry(cluster.store).register(POLICY, STABLE_SPEC, author="test")
    token = Tokens(cluster.store).create("hosts", role="agent", actor="test").secret
    agent_url = _pg_for_hosts(cluster.local_url, schema)
    # A controller's transaction cut off mid-way must not hold the policy lock forever.
    controller_url = _pg_for_hosts(
        cluster.local_url, schema, "-cidle_in_transaction_session_timeout=2000"
    )
    netns_file = f"/var/run/netns/{topo.switch}"
    forward = Proc.python(
        "forwarder", "proc_forward.py", netns_file, SWITCH_ADDRESS, str(PG_PORT), str(pg_port),
        str(LIFETIME), netns=None,
    )  # fmt: skip
    procs["forwarder"] = forward
    forward.wait_for(lambda: forward.of("ready"), "the forwarder listening")
    cli = str(Path(sys.executable).parent / "policy-canary")
    h1, h2, h3 = topo.hosts["h1"], topo.hosts["h2"], topo.hosts["h3"]
    for name, host in (("S1", h1), ("S2", h2)):
        argv = [cli, "serve", "--db", agent_url, "--host", host.address, "--port", str(SERVER_PORT)]
        procs[name] = Proc(name, argv, netns=host.netns)
    for name in ("S1", "S2"):
        server = procs[name]
        server.wait_for(
            lambda s=server: any("startup complete" in line for line in s.stderr),
            "the server starting",
        )
    s1, s2 = (f"http://{h.address}:{SERVER_PORT}" for h in (h1, h2))

    def controller(name: str, host: str) -> Proc:
        config = {"name": name, "db_url": controller_url, "interval": TICK_INTERVAL,
                  "lease_ttl": LEASE_TTL, "lifetime": LIFETIME}  # fmt: skip
        return Proc.python(name, "proc_controller.py", json.dumps(config), netns=host)

    procs["C1"] = controller("C1", h1.netns)
    procs["C1"].wait_for(lambda: any(t["acted"] for t in procs["C1"].of("tick")), "leading")
    procs["C2"] = controller("C2", h2.netns)
    procs["C2"].wait_for(lambda: procs["C2"].of("tick"), "a standby tick")

    def agent(name: str, host: str, **config: Any) -> None:
        config |= {"name": name, "policy": POLICY, "lifetime": LIFETIME}
        procs[name] = Proc.python(name, "proc_agent.py", json.dumps(config), netns=host)

    for i, host in enumerate((h1, h2, h3), start=1):
        # The agent on h3 keeps a small buffer, so its partition shows counted drops.
        agent(f"D{i}", host.netns, db_url=agent_url, buffer_size=300 if i == 3 else 100_000)
    agent("R1", h1.netns, urls=[s2, s1], token=token)
    agent("R2", h2.netns, urls=[s1, s2], token=token)
    agent("R3", h3.netns, urls=[s1, s2], token=token)
    for proc in cluster.agents.values():
        proc.wait_for(lambda p=proc: p.of("view"), "a first route()")


def _write_report(report: dict[str, Any]) -> None:
    text_report = json.dumps(report, indent=2, sort_keys=True)
    print("\nmulti-host measurements:\n" + text_report)
    target = os.environ.get("POLICY_CANARY_HOSTS_REPORT")
    if target:
        Path(target).write_text(text_report + "\n")


def test_a_rollback_reaches_every_agent_on_every_host(cluster: Cluster) -> None:
    delays: dict[str, list[float]] = {name: [] for name in cluster.agents}
    for _ in range(CYCLES):
        rollout = cluster.start(HOLD_PLAN)
        for name in cluster.agents:
            cluster.wait_view(name, rollout)
        before = time.time()
        committed = cluster.rollback()
        for name in cluster.agents:
            seen = cluster.wait_view(name, None, after=before)
            delays[name].append(max(0.0, seen["at"] - committed))
    everything = [d for values in delays.values() for d in values]
    assert len(everything) == CYCLES * len(cluster.agents)
    cluster.report["propagation_ms"] = {
        "samples": len(everything),
        "p50": round(1000 * statistics.median(everything), 1),
        "p99": round(1000 * percentile(everything, 0.99), 1),
        "max": round(1000 * max(everything), 1),
        "p50_direct": round(1000 * statistics.median(
            [d for n, v in delays.items() if n.startswith("D") for d in v]), 1),
        "p50_remote": round(1000 * statistics.median(
            [d for n, v in delays.items() if n.startswith("R") for d in v]), 1),
    }  # fmt: skip


def test_a_partitioned_agent_host_serves_its_last_table_then_catches_up(
    cluster: Cluster,
) -> None:
    h3 = cluster.topo.hosts["h3"]
    cut_off, others = ("D3", "R3"), ("D1", "D2", "R1", "R2")
    rollout = cluster.start(HOLD_PLAN)
    for name in cluster.agents:
        cluster.wait_view(name, rollout)
    h3.link(up=False)
    parted = time.time()
    try:
        cluster.rollback()
        for name in others:
            cluster.wait_view(name, None, after=parted)
        for name in cut_off:
            proc = cluster.procs[name]
            proc.wait_for(
                lambda p=proc: any(s["stale"] and s["at"] > parted for s in p.of("status")),
                "gate.status() stale",
            )
        # R3 buffers everything; D3's 300-event buffer fills and counts what it drops.
        r3, d3 = cluster.procs["R3"], cluster.procs["D3"]
        r3.wait_for(lambda: (r3.last("status") or {}).get("buffered", 0) > 100, "events buffered")
        d3.wait_for(lambda: (d3.last("status") or {}).get("dropped", 0) > 0, "drops counted")
        for name in cut_off:  # still on the rolled-back rollout: its last table
            views = cluster.procs[name].of("view")
            assert views[-1]["rollout"] == rollout, views[-1]
        stale_for = {name: cluster.procs[name].last("status") for name in cut_off}
    finally:
        h3.link(up=True)
    healed = time.time()
    outcome: dict[str, Any] = {"partition_s": round(healed - parted, 2)}
    for name in cut_off:
        proc = cluster.procs[name]
        seen = cluster.wait_view(name, None, after=parted)
        owed = stale_for[name]["recorded"]  # recorded before the link returned

        def landed(p: Proc = proc, owed: int = owed) -> dict[str, Any] | None:
            return next(
                (s for s in p.of("status")
                 if s["at"] > healed and s["written"] + s["dropped"] >= owed),
                None,
            )  # fmt: skip

        drained = proc.wait_for(landed, "buffered events written after the link returned")
        outcome[name] = {
            "buffered_at_heal": stale_for[name]["buffered"],
            "dropped_at_heal": stale_for[name]["dropped"],
            "stable_after_heal_ms": round(1000 * (seen["at"] - healed), 1),
            "events_written_after_heal_ms": round(1000 * (drained["at"] - healed), 1),
        }
    cluster.report["agent_host_partition"] = outcome


def test_the_standby_controller_takes_over_from_a_partitioned_leader(cluster: Cluster) -> None:
    h1 = cluster.topo.hosts["h1"]
    c1, c2 = cluster.procs["C1"], cluster.procs["C2"]
    rollout = cluster.start(STAGED_PLAN)

    def moves(proc: Proc, after: float = 0.0) -> list[dict[str, Any]]:
        return [
            m for t in proc.of("tick") if t["at"] >= after for m in t["moves"]
            if m["rollout"] == rollout
        ]  # fmt: skip

    def advances(proc: Proc) -> list[dict[str, Any]]:
        return [m for m in moves(proc) if m["action"] == "advance"]

    c1.wait_for(lambda: advances(c1), "the leader advancing the rollout")
    h1.link(up=False)
    parted = time.time()
    try:
        c2.wait_for(lambda: len(advances(c2)) >= 2, "the standby advancing the rollout", 30)
        first = next(t for t in c2.of("tick") if t["acted"])
        took_over = first["at"] - parted
        assert not moves(c1, after=parted + 0.5), "the cut-off leader must not act"
    finally:
        h1.link(up=True)
    healed = time.time()
    c1.wait_for(lambda: len([t for t in c1.of("tick") if t["at"] > healed]) >= 5, "ticks back")
    back = [t for t in c1.of("tick") if t["at"] > healed]
    assert not any(t["acted"] for t in back), "the old leader acted after it returned"
    with contextlib.suppress(ConflictError, NotFoundError):  # unless it was promoted already
        Rollouts(cluster.store).abort(POLICY, reason="end of the scenario", actor="test")
    with cluster.store.read() as conn:
        rows = conn.execute(
            select(rollout_ticks.c.revision, rollout_ticks.c.action, rollout_ticks.c.stage_index)
            .where(rollout_ticks.c.rollout_id == rollout)
            .order_by(rollout_ticks.c.seq)
        ).all()
    revisions = [r.revision for r in rows]
    assert len(revisions) == len(set(revisions)), f"a transition applied twice: {rows}"
    advanced = [r.stage_index for r in rows if r.action == "advance"]
    assert len(advanced) == len(set(advanced)), f"a stage entered twice: {rows}"
    applied = [(m["rollout"], m["revision"]) for proc in (c1, c2) for m in moves(proc)]
    assert len(applied) == len(set(applied)), f"both controllers applied one transition: {applied}"
    cluster.report["controller_partition"] = {
        "lease_ttl_s": LEASE_TTL,
        "standby_first_acted_after_s": round(took_over, 2),
        "transitions": len(rows),
        "advances_by_leader": len(advances(c1)),
        "advances_by_standby": len(advances(c2)),
        "old_leader_ticks_after_return": len(back),
        "old_leader_acted_after_return": 0,
    }


def test_remote_agents_fail_over_when_a_replica_is_killed(cluster: Cluster) -> None:
    h = cluster.topo.hosts
    s2 = cluster.procs["S2"]
    on_s2 = [
        name for name, host in (("R1", h["h1"]), ("R2", h["h2"]), ("R3", h["h3"]))
        if host.connections_to(h["h2"].address, SERVER_PORT)
    ]  # fmt: skip
    assert "R1" in on_s2, "R1 lists S2 first"
    remotes = ("R1", "R2", "R3")
    written = {n: cluster.procs[n].last("status")["written"] for n in remotes}  # type: ignore[index]
    s2.kill()
    killed = time.time()
    rollout = cluster.start(HOLD_PLAN)
    for name in remotes:
        seen = cluster.wait_view(name, rollout, after=killed)
        proc = cluster.procs[name]
        proc.wait_for(
            lambda p=proc, n=name: (p.last("status") or {}).get("written", 0) > written[n] + 50,
            "events written through the other replica",
        )
        cluster.report.setdefault("replica_kill", {})[name] = {
            "was_on_killed_replica": name in on_s2,
            "saw_next_rollout_after_ms": round(1000 * (seen["at"] - killed), 1),
        }
    cluster.rollback()


def test_every_event_each_agent_recorded_landed_or_was_counted(cluster: Cluster) -> None:
    finals = {}
    for proc in cluster.agents.values():
        proc.send({"cmd": "stop"})
    for name, proc in cluster.agents.items():
        finals[name] = proc.wait_for(lambda p=proc: p.last("final"), "its final report")
        assert proc.popen.wait(timeout=30) == 0, proc.tail()
    with cluster.store.read() as conn:
        for name, final in finals.items():
            stored = conn.execute(
                select(func.count())
                .select_from(events)
                .where(events.c.decision_id.like(final["prefix"] + "-%"))
            ).scalar_one()
            assert final["buffered"] == 0, (name, final)
            assert stored == final["written"], (name, final, stored)
            assert final["written"] + final["dropped_full"] == final["recorded"], (name, final)
            if name != "D3":  # only D3's buffer is small enough to fill
                assert final["dropped"] == 0, (name, final)
    cluster.report["events"] = {
        name: {k: f[k] for k in ("recorded", "written", "dropped_full")}
        for name, f in finals.items()
    }
