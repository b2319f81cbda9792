"""Several event-writer processes on one PostgreSQL: committed events/s, old lock vs floors.

Each writer process opens its own store and writes batches of ``--batch`` events in a loop
for ``--seconds``, exactly as a canary's flusher does (one transaction per batch, ``COPY``),
under one of two protocols, side by side in the same run:

- ``global lock``: the previous protocol, every batch under one exclusive advisory lock
  (ids become visible in order because writers take turns);
- ``floors``: the current one (``StoreLink.write``: each writer announces where its ids
  start; the controller reads only below the smallest one still in flight,
  store/_visibility.py).

Reported: total committed events/s for N = 1, 2, 4 writers, the ratio to N = 1 of the same
protocol, and floors vs global lock at each N. Every run checks that the stored row count
equals what the writers reported, and a reader reading up to the horizon while they write
sees every row exactly once. Run: ``python benchmarks/bench_writers.py [--seconds 4]
[--batch 1000] [--writers 1,2,4] [--quick]``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from _common import OUTCOME_TAIL, print_table, save_writer_runs, writer_args
from bench_ingest import postgres_url
from policy_canary.serving._direct import EVENT_WRITER_LOCK, StoreLink
from policy_canary.store import Store, visible_through
from policy_canary.store.schema import events

PROTOCOLS = ("global lock", "floors")
COLUMNS = ("protocol", "writers", "events/s", "vs N=1", "floors / lock", "stored ok")
COLUMNS += ("reader saw all once",)


def _rows(n: int, tag: str) -> list[tuple[Any, ...]]:
    at = datetime.now(UTC)
    return [
        (
            f"{tag}-{i}-{uuid.uuid4().hex[:8]}",
            "support-agent",
            "bench-rollout",
            "stable" if i % 20 else "candidate",
            "0" * 64,
            "canary",
            100,
            1,
            True,
            at,
            *OUTCOME_TAIL,
        )
        for i in range(n)
    ]


def _writer(url: str, protocol: str, seconds: float, batch: int, start: Any, out: Any) -> None:
    """One writer process: batches until ``seconds`` after ``start``; report rows written."""
    store = Store.open(url, migrate=False)
    link = StoreLink(store)
    pid = os.getpid()
    written = batches = 0
    start.wait()
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        rows = _rows(batch, f"{pid}-{batches}")
        if protocol == "global lock":
            with store.begin() as conn:
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({EVENT_WRITER_LOCK})")
                link._insert_events(conn, rows, fast=True)
        else:
            link.write(rows, [], retry=False)
        written += len(rows)
        batches += 1
    out.put({"written": written, "batches": batches, "seconds": time.perf_counter() - began})
    store.close()


def _reader(url: str, protocol: str, stop: Any, out: Any) -> None:
    """Read past a cursor (up to the horizon under floors) until ``stop``, then once more."""
    store = Store.open(url, migrate=False)
    through, seen, duplicates = 0, 0, 0
    last = 0

    def read() -> None:
        nonlocal through, seen, duplicates, last
        query = select(events.c.id).where(events.c.id > through).order_by(events.c.id)
        if protocol == "floors":
            with store.read() as conn:
                query = query.where(events.c.id <= visible_through(conn).events)
        with store.read() as conn:
            ids = conn.execute(query).scalars()
            for i in ids:
                duplicates += i <= last
                last = i
                seen += 1
                through = i

    while not stop.is_set():
        read()
        time.sleep(0.05)
    read()
    out.put({"seen": seen, "duplicates": duplicates})
    store.close()


def run_once(protocol: str, writers: int, seconds: float, batch: int) -> dict[str, Any]:
    """N writers and a reader on a fresh schema; committed events/s."""
    ctx = mp.get_context("spawn")
    with postgres_url() as url:
        Store.open(url).close()  # migrate once, before the writers start
        start, stop = ctx.Event(), ctx.Event()
        results, seen = ctx.Queue(), ctx.Queue()
        procs = [
            ctx.Process(target=_writer, args=(url, protocol, seconds, batch, start, results))
            for _ in range(writers)
        ]
        reader = ctx.Process(target=_reader, args=(url, protocol, stop, seen))
        for p in procs:
            p.start()
        reader.start()
        time.sleep(1.5)  # let every process import and connect before the clock starts
        start.set()
        reports = [results.get(timeout=seconds + 120) for _ in procs]
        stop.set()
        read = seen.get(timeout=120)
        for p in [*procs, reader]:
            p.join(timeout=60)
        store = Store.open(url, migrate=False)
        with store.read() as conn:
            stored = conn.execute(select(func.count()).select_from(events)).scalar_one()
        store.close()
    written = sum(r["written"] for r in reports)
    wall = max(r["seconds"] for r in reports)
    return {
        "protocol": protocol,
        "writers": writers,
        "written": written,
        "stored": stored,
        "reader_seen": read["seen"],
        "reader_duplicates": read["duplicates"],
        "seconds": wall,
        "events_per_s": written / wall,
    }


def main() -> None:
    """Measure both protocols at each N, print the table and the ratios, save JSON."""
    args, counts = writer_args(__doc__.splitlines()[0])
    runs = [run_once(p, n, args.seconds, args.batch) for n in counts for p in PROTOCOLS]
    rate = {(r["protocol"], r["writers"]): r["events_per_s"] for r in runs}
    for r in runs:
        r["vs_one_writer"] = r["events_per_s"] / rate[(r["protocol"], counts[0])]
        r["floors_vs_global_lock"] = (
            rate[("floors", r["writers"])] / rate[("global lock", r["writers"])]
        )
    print_table(
        f"PostgreSQL event writers, batches of {args.batch:,}, {args.seconds:g} s per run",
        COLUMNS,
        [
            [
                r["protocol"],
                r["writers"],
                f"{r['events_per_s']:,.0f}",
                f"{r['vs_one_writer']:.2f}x",
                f"{r['floors_vs_global_lock']:.2f}x",
                r["stored"] == r["written"],
                r["reader_seen"] == r["stored"] and r["reader_duplicates"] == 0,
            ]
            for r in runs
        ],
    )
    save_writer_runs(args, "bench_writers", runs)


if __name__ == "__main__":
    main()
