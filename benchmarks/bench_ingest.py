"""What does recording an outcome cost the agent, and how many events per second reach disk?

Two measurements, side by side:

1. the cost of ``record()`` on the agent's thread (validation + one buffered row; the flusher
   is off so nothing else competes), for a typical seven-field outcome, a latency-only one,
   and the whole ``with gate.route(key) as d:`` block;
2. sustained throughput: one producer thread routes and records ``--n`` events as fast as it
   can while the background flusher commits them; events/s is ``n`` divided by the time from
   the first ``record()`` until the last row is committed, on a temporary SQLite file and in a
   temporary PostgreSQL schema. The flusher alone (draining a pre-filled buffer) is shown too.

Targets: record() <= 3 us; >= 50,000 events/s on SQLite and >= 30,000 on PostgreSQL.
Run: ``python benchmarks/bench_ingest.py [--n 200000] [--repeats 3]``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, func, select, text

from _common import median, no_gc, parse_args, print_table, write_json
from policy_canary.clock import SystemClock
from policy_canary.registry import Registry
from policy_canary.serving import Canary, Decision, Gate
from policy_canary.serving._splitter import new_salt
from policy_canary.store import Store
from policy_canary.store.schema import events, rollouts

TARGET_RECORD_US = 3.0
TARGET_SQLITE = 50_000
TARGET_POSTGRES = 30_000
PG_URL = os.environ.get(
    "POLICY_CANARY_BENCH_PG",
    os.environ.get("POLICY_CANARY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
)
POLICY = "support-agent"


def _seed(store: Store) -> None:
    """A stable and a candidate version, and a running 5% rollout between them."""
    clock = SystemClock()
    registry = Registry(store, clock=clock)
    v1 = registry.register(POLICY, {"prompt": "v1"}, message="bench", author="bench")
    v2 = registry.register(POLICY, {"prompt": "v2"}, message="bench", author="bench")
    now = clock.now()
    with store.begin() as conn:
        conn.execute(
            rollouts.insert().values(
                id=uuid.uuid4().hex,
                policy=POLICY,
                baseline_digest=v1.version.id,
                candidate_digest=v2.version.id,
                state="running",
                stage_index=0,
                traffic_bp=500,
                salt=new_salt(),
                plan=json.dumps({"stages": [{"name": "validation"}]}),
                plan_hash="0" * 64,
                revision=1,
                actor="bench",
                reason="bench",
                created_at=now,
                stage_started_at=now,
            )
        )
        store.bump_epoch(conn)


@contextmanager
def sqlite_url() -> Iterator[str]:
    """A fresh SQLite file, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="policy-canary-bench-") as folder:
        yield f"sqlite:///{folder}/ingest.db"


@contextmanager
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL schema (the URL's search_path), dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, connect_args={"connect_timeout": 5})
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _record_full(gate: Gate, key: str) -> None:
    gate.route(key).record(
        latency_ms=812.5,
        error=False,
        quality=0.8,
        cost_usd=0.0021,
        input_tokens=900,
        output_tokens=210,
        model="gpt-x",
    )


def caller_cost(n: int, repeats: int) -> list[dict[str, Any]]:
    """Microseconds per call on the agent's thread, flusher off."""
    keys = [f"user-{i:07d}" for i in range(n)]
    with sqlite_url() as url:
        store = Store.open(url)
        _seed(store)
        canary = Canary(store, background=False, buffer_size=n + 1, owns_store=True)
        gate = canary.gate(POLICY)

        def timed(
            label: str, loop: Callable[[list[Decision]], None], *, routed: bool
        ) -> dict[str, Any]:
            """Time ``loop`` over ``n`` calls; decisions are routed beforehand, untimed, when
            ``routed`` (so record() is measured alone)."""
            runs = []
            for _ in range(repeats):
                decisions = [gate.route(key) for key in keys] if routed else []
                with no_gc():
                    start = time.perf_counter()
                    loop(decisions)
                    runs.append((time.perf_counter() - start) / n * 1e6)
                # Discard the buffered rows, untimed: this part measures only the caller.
                canary._buffer._events.clear()
            return {"operation": label, "median_us": median(runs), "runs_us": runs}

        def record_full(decisions: list[Decision]) -> None:
            for d in decisions:
                d.record(
                    latency_ms=812.5,
                    error=False,
                    quality=0.8,
                    cost_usd=0.0021,
                    input_tokens=900,
                    output_tokens=210,
                    model="gpt-x",
                )

        def record_latency(decisions: list[Decision]) -> None:
            for d in decisions:
                d.record(latency_ms=812.5)

        def with_block(_: list[Decision]) -> None:
            route = gate.route
            for key in keys:
                with route(key):
                    pass

        rows = [
            timed("record(): 7 fields", record_full, routed=True),
            timed("record(): latency only", record_latency, routed=True),
            timed("with gate.route(key): route + time + record", with_block, routed=False),
        ]
        canary.close()
    return rows


def sustained(url: str, n: int) -> dict[str, Any]:
    """Route + record ``n`` events with the background flusher on; time until committed."""
    store = Store.open(url)
    _seed(store)
    canary = Canary(store, buffer_size=n + 1, flush_interval=0.05, owns_store=True)
    gate = canary.gate(POLICY)
    keys = [f"user-{i:07d}" for i in range(n)]
    start = time.perf_counter()
    for key in keys:
        _record_full(gate, key)
    produced = time.perf_counter()
    deadline = produced + 300
    while canary.stats().written + canary.stats().dropped < n and time.perf_counter() < deadline:
        time.sleep(0.002)
    committed = time.perf_counter()
    stats = canary.stats()
    with store.read() as conn:
        stored = conn.execute(select(func.count()).select_from(events)).scalar_one()
    canary.close()
    return {
        "events": n,
        "stored": stored,
        "dropped": stats.dropped,
        "producer_seconds": produced - start,
        "seconds": committed - start,
        "events_per_s": n / (committed - start),
    }


def flusher_only(url: str, n: int) -> dict[str, Any]:
    """Fill the buffer first, then time flush() alone: the commit rate of the writer."""
    store = Store.open(url)
    _seed(store)
    canary = Canary(store, background=False, buffer_size=n + 1, owns_store=True)
    gate = canary.gate(POLICY)
    for i in range(n):
        _record_full(gate, f"user-{i:07d}")
    start = time.perf_counter()
    written = canary.flush()
    elapsed = time.perf_counter() - start
    canary.close()
    return {"events": written, "seconds": elapsed, "events_per_s": written / elapsed}


def main() -> None:
    """Measure, print and save both parts."""
    args = parse_args(__doc__.splitlines()[0], n=200_000, repeats=3)
    cost = caller_cost(args.n, args.repeats)
    print_table(
        f"caller's thread: {args.n:,} calls, median of {args.repeats} runs",
        ["operation", "median us", "runs min..max"],
        [
            [
                row["operation"],
                f"{row['median_us']:.3f}",
                f"{min(row['runs_us']):.3f}..{max(row['runs_us']):.3f}",
            ]
            for row in cost
        ],
    )

    backends: list[tuple[str, Callable[[], Any], int]] = [
        ("SQLite (file, WAL)", sqlite_url, TARGET_SQLITE),
        ("PostgreSQL", postgres_url, TARGET_POSTGRES),
    ]
    throughput = []
    for name, make_url, target in backends:
        try:
            runs = []
            alone = []
            for _ in range(args.repeats):
                with make_url() as url:
                    runs.append(sustained(url, args.n))
                with make_url() as url:
                    alone.append(flusher_only(url, args.n))
        except Exception as error:  # an unreachable PostgreSQL is reported, not fatal
            throughput.append({"backend": name, "status": f"unavailable: {error}"})
            continue
        rate = median([r["events_per_s"] for r in runs])
        throughput.append(
            {
                "backend": name,
                "status": "ok",
                "events_per_s": rate,
                "flusher_only_events_per_s": median([r["events_per_s"] for r in alone]),
                "target_events_per_s": target,
                "within_target": rate >= target,
                "ratio_to_target": rate / target,
                "all_stored": all(r["stored"] == r["events"] for r in runs),
                "dropped": sum(r["dropped"] for r in runs),
                "runs": runs,
                "flusher_only_runs": alone,
            }
        )
    print_table(
        f"sustained record() -> committed rows: {args.n:,} events, median of {args.repeats}",
        ["backend", "events/s", "flusher alone", "target", "vs target", "all stored", "status"],
        [
            [
                t["backend"],
                f"{t['events_per_s']:,.0f}" if "events_per_s" in t else "-",
                f"{t['flusher_only_events_per_s']:,.0f}" if "events_per_s" in t else "-",
                f"{t.get('target_events_per_s', 0):,}" if "events_per_s" in t else "-",
                f"{t['ratio_to_target']:.2f}x" if "events_per_s" in t else "-",
                str(t.get("all_stored", "-")),
                t["status"],
            ]
            for t in throughput
        ],
    )
    record_us = cost[0]["median_us"]
    print(
        f"record() {record_us:.3f} us (target <= {TARGET_RECORD_US} us: "
        f"{'met' if record_us <= TARGET_RECORD_US else 'MISSED'}); "
        + "; ".join(
            f"{t['backend']} {t['events_per_s']:,.0f}/s "
            f"({'met' if t['within_target'] else 'MISSED'})"
            for t in throughput
            if "events_per_s" in t
        )
    )
    path = write_json(
        args.out,
        "bench_ingest",
        {
            "n": args.n,
            "repeats": args.repeats,
            "caller": cost,
            "record_target_us": TARGET_RECORD_US,
            "record_within_target": record_us <= TARGET_RECORD_US,
            "throughput": throughput,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
