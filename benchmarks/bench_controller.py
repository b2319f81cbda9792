"""How long does one controller tick take over a thousand rollouts, and does history slow it?

Side by side in one run, on a temporary SQLite file and in a temporary PostgreSQL schema:

1. ``--rollouts`` policies (default 1,000), each with an active rollout under the default plan,
   started through the library (``Rollouts.start``);
2. ``--history`` old events (default 1,000,000) bulk-inserted beside them (``executemany``
   in one transaction on SQLite, ``COPY`` on PostgreSQL): stable traffic and the events of
   earlier, ended rollouts of the same policies, all below the controller's cursors;
3. before each tick, ``--events`` new events per rollout (default 100; A/A traffic, the
   candidate's share of it the rollout's own), inserted untimed; then one timed
   ``Controller.tick()`` folds them all, decides and writes each rollout's state and trace
   (after five untimed ticks, by which the p95 line of every rollout is frozen: without
   them the first phase timed ticks whose latency guardrail was still gathering its line);
4. the history is doubled (another ``--history`` events) and the ticks are timed again.

Each of ``--processes`` (default ``1,2``) times its own controller in each phase, one after
the other on the same store: ``Controller(processes=N)`` ticks its rollouts in N processes at
once (``controller/_shards.py``), and the report gives each one's speed-up over one process.
CPU time counts the controller's child processes too.

The report gives the median tick, per rollout and per new event, the ratio of the tick after
doubling to the tick before (1.0 = no growth: a tick is O(new events), not O(history)), and
the controller's memory: the process's resident set after each tick and the tracemalloc peak
of one extra tick (untimed, since tracing slows Python down). Target on the 2-core box: a tick
over 1,000 rollouts <= 2 s. The machine's load average is reported before and after, since
the box is shared.

The issue's full size is ``--history 10000000`` (10M events, then 20M); seeding it takes
minutes per backend, so it is run by hand. ``--quick`` is the smoke test's size.
Run: ``python benchmarks/bench_controller.py [--quick] [--rollouts N] [--events N]
[--history N] [--ticks N] [--backend sqlite|postgresql|both]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from _common import RESULTS, pg_schema, print_table, write_json
from policy_canary.clock import ManualClock
from policy_canary.controller import Controller, Rollouts
from policy_canary.registry import Registry
from policy_canary.store import Store
from policy_canary.store.schema import events, rollouts

TARGET_TICK_S = 2.0
PG_URL = os.environ.get(
    "POLICY_CANARY_BENCH_PG",
    os.environ.get("POLICY_CANARY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
)
START = datetime(2026, 1, 1, tzinfo=UTC)
#: Seconds between ticks on the manual clock (far below the default plan's dwell: all hold).
TICK_SECONDS = 10
#: Untimed ticks before each phase's timed ones: at 100 events per rollout, the rollouts' 1%
#: canary sees the 400 stable latencies its p95 line needs within five.
WARM_TICKS = 5
#: Rows per transaction while seeding the history.
SEED_CHUNK = 50_000
COLUMNS = (
    "decision_id", "policy", "rollout_id", "arm", "version_digest", "stage", "traffic_bp",
    "scheme", "sticky", "at", "latency_ms", "error", "quality", "safety_flags", "flag_count",
    "cost_usd", "input_tokens", "output_tokens", "model", "metrics",
)  # fmt: skip
_SQLITE_INSERT = (
    f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
)
_PG_COPY = f"COPY events ({', '.join(COLUMNS)}) FROM STDIN"


class Fleet:
    """The rollouts under test and a source of event rows for them."""

    def __init__(self, store: Store, count: int, seed: int = 7) -> None:
        self.store = store
        self.count = count
        self.rng = random.Random(seed)
        self.serial = 0
        self.at = START
        # (policy, rollout id, stable digest, candidate digest, share in basis points, stage)
        self.rollouts: list[tuple[str, str, str, str, int, str]] = []

    def seed(self, clock: ManualClock) -> float:
        """Register two versions per policy and start a rollout of each; return seconds."""
        began = time.perf_counter()
        registry = Registry(self.store, clock=clock)
        starter = Rollouts(self.store, clock=clock)
        for i in range(self.count):
            policy = f"agent-{i:04d}"
            v1 = registry.register(policy, {"prompt": f"v1 of {policy}"}, author="bench").version
            v2 = registry.register(policy, {"prompt": f"v2 of {policy}"}, author="bench").version
            started = starter.start(policy, candidate=v2.id, actor="bench")
            first = started.plan.stage(0)
            self.rollouts.append((policy, started.id, v1.id, v2.id, first.traffic_bp, first.name))
        return time.perf_counter() - began

    def _row(self, i: int, rollout_id: str | None, arm: str, digest: str, share: int,
             stage: str | None, policy: str) -> tuple[Any, ...]:  # fmt: skip
        rng = self.rng
        self.serial += 1
        return (
            f"d{self.serial:012d}", policy, rollout_id, arm, digest, stage, share, 1, True,
            self.at + timedelta(microseconds=i), rng.lognormvariate(6.5, 0.4),
            rng.random() < 0.01, round(rng.random(), 3), "[]", 0, 0.002, 900, 210, "gpt-x", "{}",
        )  # fmt: skip

    def new_events(self, per_rollout: int) -> list[tuple[Any, ...]]:
        """``per_rollout`` new events of every active rollout (A/A: both arms alike)."""
        rows = []
        for policy, rid, v1, v2, share, stage in self.rollouts:
            for i in range(per_rollout):
                candidate = self.rng.random() * 10_000 < share
                arm, digest = ("candidate", v2) if candidate else ("stable", v1)
                rows.append(self._row(i, rid, arm, digest, share, stage, policy))
        self.at += timedelta(seconds=TICK_SECONDS)
        return rows

    def history(self, n: int) -> Iterator[list[tuple[Any, ...]]]:
        """``n`` old events in chunks: stable traffic and ended rollouts' events."""
        made = 0
        while made < n:
            size = min(SEED_CHUNK, n - made)
            rows = []
            for j in range(size):
                policy, _, v1, v2, _, _ = self.rollouts[(made + j) % self.count]
                if j % 2:  # an earlier rollout of the same policy, long ended
                    past = f"ro_past{(made + j) % self.count:04d}"
                    arm, digest = ("candidate", v2) if j % 20 == 1 else ("stable", v1)
                    rows.append(self._row(j, past, arm, digest, 500, "canary", policy))
                else:  # plain stable traffic, no rollout
                    rows.append(self._row(j, None, "stable", v1, 0, None, policy))
            made += size
            yield rows

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        """One transaction: ``executemany`` on SQLite, ``COPY`` on PostgreSQL."""
        with self.store.begin() as conn:
            if self.store.dialect == "sqlite":
                at = COLUMNS.index("at")
                conn.exec_driver_sql(
                    _SQLITE_INSERT,
                    [(*r[:at], r[at].replace(tzinfo=None).isoformat(" ", "microseconds"),
                      *r[at + 1 :]) for r in rows],
                )  # fmt: skip
            else:
                raw = conn.connection.dbapi_connection
                with raw.cursor() as cursor, cursor.copy(_PG_COPY) as copy:  # type: ignore[union-attr]
                    for r in rows:
                        copy.write_row(r)


def _children() -> list[Path]:
    """The /proc folders of this process's children (the controller's other processes)."""
    mine, found = str(os.getpid()), []
    for folder in Path("/proc").iterdir():
        if folder.name.isdigit():
            try:
                fields = (folder / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it ended meanwhile
            if fields[1] == mine:
                found.append(folder)
    return found


def cpu_seconds() -> float:
    """CPU time of this process and of its living children, in seconds."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for folder in _children():
        try:
            fields = (folder / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def children_rss_mb() -> float:
    """The resident sets of this process's living children, summed, in MB."""
    total = 0.0
    for folder in _children():
        try:
            for line in (folder / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def rss_mb() -> float:
    """This process's resident set now (VmRSS), in MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def timed_ticks(fleet: Fleet, controller: Controller, clock: ManualClock, per_rollout: int,
                ticks: int) -> list[dict[str, Any]]:  # fmt: skip
    """``ticks`` rounds of (insert new events, untimed; one timed tick)."""
    runs = []
    for _ in range(ticks):
        fleet.insert(fleet.new_events(per_rollout))
        clock.advance(TICK_SECONDS)
        gc.collect()
        began, cpu = time.perf_counter(), cpu_seconds()
        report = controller.tick()
        seconds, cpu = time.perf_counter() - began, cpu_seconds() - cpu
        folded = sum(o.events_folded for o in report.outcomes)
        errors = [o.error for o in report.outcomes if o.error]
        actions = sorted({o.action.kind.value for o in report.outcomes if o.action})
        recorded = sum(o.recorded for o in report.outcomes)
        runs.append({"seconds": seconds, "cpu_seconds": cpu, "folded": folded,
                     "rollouts": len(report.outcomes), "recorded": recorded,
                     "errors": errors[:3], "error_count": len(errors),
                     "actions": actions, "rss_mb": rss_mb(),
                     "children_rss_mb": children_rss_mb()})  # fmt: skip
    return runs


def traced_tick(
    fleet: Fleet, controller: Controller, clock: ManualClock, per_rollout: int
) -> float:
    """The tracemalloc peak (MB) of one more tick, untimed."""
    fleet.insert(fleet.new_events(per_rollout))
    clock.advance(TICK_SECONDS)
    gc.collect()
    tracemalloc.start()
    try:
        controller.tick()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 1e6


def count_events(store: Store) -> int:
    with store.read() as conn:
        return int(conn.execute(select(func.count()).select_from(events)).scalar_one())


def run_backend(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Seed, tick at history H, double the history, tick at 2H."""
    store = Store.open(url)
    clock = ManualClock(START)
    fleet = Fleet(store, args.rollouts)
    result: dict[str, Any] = {"seed_rollouts_s": fleet.seed(clock)}
    phases = []
    try:
        for _ in (1, 2):
            began = time.perf_counter()
            for chunk in fleet.history(args.history):
                fleet.insert(chunk)
            seeded = time.perf_counter() - began
            if store.dialect == "postgresql":
                with store.begin() as conn:
                    conn.execute(text("ANALYZE events"))
            for processes in args.processes:
                # Untimed ticks first: they fold the events inserted so far, start the child
                # processes, fill each one's memory, and gather the stable observations the
                # default plan's p95 line is frozen from, so every row times the same work.
                controller = Controller(store, clock=clock, holder="bench", processes=processes)
                try:
                    warm = timed_ticks(fleet, controller, clock, args.events, WARM_TICKS)[0]
                    runs = timed_ticks(fleet, controller, clock, args.events, args.ticks)
                    if processes == 1 and not phases:
                        result["tracemalloc_peak_mb"] = traced_tick(
                            fleet, controller, clock, args.events
                        )
                finally:
                    controller.close()
                median_s = statistics.median(r["seconds"] for r in runs)
                median_cpu = statistics.median(r["cpu_seconds"] for r in runs)
                phases.append({
                    "processes": processes, "history": count_events(store),
                    "seed_history_s": seeded,
                    "seed_events_per_s": args.history / seeded if seeded else None,
                    "warm_tick_s": warm["seconds"], "runs": runs, "median_tick_s": median_s,
                    "median_tick_cpu_s": median_cpu,
                    "per_rollout_ms": median_s / args.rollouts * 1e3,
                    "per_event_us": median_s / (args.rollouts * args.events) * 1e6,
                })  # fmt: skip
        result["phases"] = phases
        growth = {}
        for processes in args.processes:
            mine = [p for p in phases if p["processes"] == processes]
            growth[str(processes)] = {
                "wall": mine[1]["median_tick_s"] / mine[0]["median_tick_s"],
                "cpu": mine[1]["median_tick_cpu_s"] / mine[0]["median_tick_cpu_s"],
            }
        result["growth"] = growth
        result["rss_mb"] = [r["rss_mb"] for p in phases for r in p["runs"]]
        with store.read() as conn:
            active = conn.execute(
                select(func.count()).select_from(rollouts).where(rollouts.c.state == "running")
            ).scalar_one()
        result["still_running"] = int(active)
    finally:
        store.close()
    return result


@contextmanager
def sqlite_url() -> Iterator[str]:
    """A fresh SQLite file, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="policy-canary-bench-") as folder:
        yield f"sqlite:///{folder}/controller.db"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (the smoke test)")
    parser.add_argument("--rollouts", type=int, default=None, help="active rollouts (1,000)")
    parser.add_argument("--events", type=int, default=100, help="new events per rollout a tick")
    parser.add_argument("--history", type=int, default=None,
                        help="old events seeded, then again (default 1,000,000)")  # fmt: skip
    parser.add_argument("--ticks", type=int, default=None, help="timed ticks per phase (3)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--processes", default="1,2",
                        help="controller processes to compare, e.g. 1,2 (each a row)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = parser.parse_args()
    quick = args.quick
    args.rollouts = args.rollouts or (20 if quick else 1_000)
    args.history = args.history if args.history is not None else (5_000 if quick else 1_000_000)
    args.ticks = args.ticks or (2 if quick else 3)
    args.processes = [int(x) for x in str(args.processes).split(",")]
    results: dict[str, Any] = {
        "quick": quick, "rollouts": args.rollouts, "events_per_rollout": args.events,
        "history": args.history, "ticks": args.ticks, "warm_ticks": WARM_TICKS,
        "target_tick_s": TARGET_TICK_S, "processes": args.processes,
        "cores": os.cpu_count(), "load_before": os.getloadavg(), "backends": {},
    }  # fmt: skip
    if args.backend in ("sqlite", "both"):
        with sqlite_url() as url:
            results["backends"]["SQLite (file, WAL)"] = run_backend(url, args)
    if args.backend in ("postgresql", "both"):
        with pg_schema(PG_URL) as (pg, problem):
            results["backends"]["PostgreSQL"] = (
                {"skipped": f"PostgreSQL unreachable: {problem}"} if pg is None
                else run_backend(pg, args)
            )  # fmt: skip
    results["load_after"] = os.getloadavg()
    report(results)
    path = write_json(args.out, "bench_controller", results)
    print(f"results: {path}")


def report(r: dict[str, Any]) -> None:
    rows = []
    for name, b in r["backends"].items():
        if "skipped" in b:
            rows.append((name, b["skipped"], "", "", "", "", "", "", "", "", ""))
            continue
        one = {p["history"] > b["phases"][0]["history"]: p["median_tick_s"]
               for p in b["phases"] if p["processes"] == 1}  # fmt: skip
        for i, p in enumerate(b["phases"]):
            vs = TARGET_TICK_S / p["median_tick_s"] * r["rollouts"] / 1_000
            later = p["history"] > b["phases"][0]["history"]
            grown = b["growth"][str(p["processes"])]
            faster = one.get(later)
            rows.append((
                name if i == 0 else "", str(p["processes"]), f"{p['history']:,}",
                f"{p['median_tick_s']:.3f}", f"{p['median_tick_cpu_s']:.3f}",
                f"{p['per_rollout_ms']:.2f}", f"{p['per_event_us']:.1f}",
                f"{faster / p['median_tick_s']:.2f}x" if faster else "",
                f"{grown['wall']:.2f}x / {grown['cpu']:.2f}x" if later else "",
                f"{vs:.2f}x" + ("" if vs >= 1 else " (missed)"),
                f"{max(x['rss_mb'] + x['children_rss_mb'] for x in p['runs']):.0f}",
            ))  # fmt: skip
    before = ", ".join(f"{x:.1f}" for x in r["load_before"])
    after = ", ".join(f"{x:.1f}" for x in r["load_after"])
    print_table(
        f"Controller.tick() over {r['rollouts']:,} rollouts, {r['events_per_rollout']} new "
        f"events each ({r['cores']} cores; load average {before} before, {after} after)",
        ["backend", "processes", "events stored", "tick s", "CPU s (all)", "ms/rollout",
         "us/event", "vs 1 process", "after doubling (wall / CPU)", "vs 2 s per 1,000",
         "RSS MB (all)"],
        rows,
    )  # fmt: skip
    for name, b in r["backends"].items():
        if "skipped" not in b:
            print(f"{name}: seeding {r['rollouts']:,} rollouts took {b['seed_rollouts_s']:.1f} s; "
                  f"tracemalloc peak of one tick {b['tracemalloc_peak_mb']:.1f} MB; "
                  f"still running {b['still_running']}")  # fmt: skip


if __name__ == "__main__":
    main()
