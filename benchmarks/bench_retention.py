"""Pruning a long history while agents write and the controller ticks: the longest stall.

For each backend (a SQLite file, a PostgreSQL schema) and each way of pruning, side by side:

- ``one transaction``: every old row in one DELETE per policy (the previous ``prune``);
- ``chunks of 10,000``: ``StoreLink.prune`` as it is now (10,000 rows per transaction, a
  pause as long as the last chunk took between them).

``--events`` old events (60 days old, no rollout) are bulk-loaded first; the table's size per
event is reported (PostgreSQL ``pg_total_relation_size`` of events with its indexes; SQLite
the database's growth in pages, WAL included). Then the prune runs while a writer commits a batch of
100 events every 20 ms and a tick-like loop, every 50 ms, opens a write transaction, reads
the new events past its cursor up to the visibility horizon and bumps the routing counter
(what a tick's apply writes). Reported: prune seconds, the longest single write and the
longest tick (each from its start to its commit, retries included), and the ratios.

The default of 200,000 events completes in about two minutes on this 2-core box; the issue's
10M is ``--events 10000000 --chunks-only`` by hand (the one-transaction prune of 10M rows
would stall writers for minutes; it is the baseline of the default size). Run:
``python benchmarks/bench_retention.py [--events 200000] [--quick] [--chunks-only]
[--backend sqlite|postgresql|both]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from _common import OUTCOME_TAIL, RESULTS, print_table, write_json
from bench_ingest import postgres_url
from policy_canary.registry import Registry
from policy_canary.serving._direct import PRUNE_CHUNK, StoreLink
from policy_canary.store import Store, visible_through
from policy_canary.store.schema import events

POLICY = "support-agent"
MODES = (("one transaction", 1 << 62), (f"chunks of {PRUNE_CHUNK:,}", PRUNE_CHUNK))


@contextmanager
def sqlite_url() -> Iterator[str]:
    """A fresh SQLite file, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="policy-canary-retention-") as folder:
        yield f"sqlite:///{folder}/retention.db"


def _rows(n: int, at: datetime, tag: str) -> list[tuple[Any, ...]]:
    return [
        (
            f"{tag}-{i}",
            POLICY,
            None,
            "stable",
            "0" * 64,
            None,
            0,
            1,
            True,
            at,
            *OUTCOME_TAIL,
        )
        for i in range(n)
    ]


def _size(store: Store, url: str) -> int:
    """Bytes the events table holds: with its indexes (PostgreSQL), the database (SQLite)."""
    with store.begin() as conn:
        if store.dialect == "sqlite":
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
            return int(pages) * int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
        return int(conn.exec_driver_sql("SELECT pg_total_relation_size('events')").scalar_one())


def seed(url: str, n: int) -> dict[str, Any]:
    """Bulk-load ``n`` events 60 days old; return the time it took and bytes per event."""
    store = Store.open(url)
    Registry(store).register(POLICY, {"prompt": "v1"}, message="bench", author="bench")
    link = StoreLink(store)
    before = _size(store, url)
    old = datetime.now(UTC) - timedelta(days=60)
    began = time.perf_counter()
    step = 50_000
    for start in range(0, n, step):
        with store.begin() as conn:
            link._insert_events(conn, _rows(min(step, n - start), old, f"s{start}"), fast=True)
    seconds = time.perf_counter() - began
    size = _size(store, url) - before
    store.close()
    return {"seed_seconds": seconds, "bytes_per_event": size / n if n else 0.0}


class _Loop(threading.Thread):
    """Runs ``step`` every ``interval`` s until stopped; keeps each step's duration."""

    def __init__(self, step: Callable[[], None], interval: float) -> None:
        super().__init__(daemon=True)
        self.step, self.interval = step, interval
        self.stop = threading.Event()
        self.durations: list[float] = []
        self.errors = 0

    def run(self) -> None:
        while not self.stop.is_set():
            began = time.perf_counter()
            while True:  # a step that fails (SQLite busy) is retried; its stall counts
                try:
                    self.step()
                    break
                except Exception:
                    self.errors += 1
                    if self.stop.is_set():
                        return
            self.durations.append(time.perf_counter() - began)
            self.stop.wait(self.interval)


def prune_under_load(url: str, chunk: int) -> dict[str, Any]:
    """Prune every old event while a writer and a tick-like loop run; their longest steps."""
    writer_store, ticker_store, pruner_store = Store.open(url), Store.open(url), Store.open(url)
    writer = StoreLink(writer_store)
    batches = iter(range(1 << 30))
    cursor = [0]

    def write() -> None:
        writer.write(
            _rows(100, datetime.now(UTC), f"w{next(batches)}-{uuid.uuid4().hex[:6]}"),
            [],
            retry=True,
        )

    def tick() -> None:
        with ticker_store.begin() as conn:
            bound = visible_through(conn).events
            query = select(events.c.id).where(events.c.id > cursor[0]).order_by(events.c.id)
            if bound is not None:
                query = query.where(events.c.id <= bound)
            ids = conn.execute(query.limit(5_000)).scalars().all()
            if ids:
                cursor[0] = int(ids[-1])
            ticker_store.bump_epoch(conn)

    with ticker_store.read() as conn:
        cursor[0] = int(conn.execute(select(func.max(events.c.id))).scalar_one() or 0)
    loops = [_Loop(write, 0.02), _Loop(tick, 0.05)]
    for loop in loops:
        loop.start()
    time.sleep(0.5)  # the baseline: steps before the prune starts
    began = time.perf_counter()
    result = StoreLink(pruner_store).prune(datetime.now(UTC) - timedelta(days=30), chunk=chunk)
    seconds = time.perf_counter() - began
    time.sleep(0.3)
    for loop in loops:
        loop.stop.set()
        loop.join(timeout=60)
    for store in (writer_store, ticker_store, pruner_store):
        store.close()
    return {
        "deleted": result.events,
        "prune_seconds": seconds,
        "longest_write_s": max(loops[0].durations),
        "longest_tick_s": max(loops[1].durations),
        "writes": len(loops[0].durations),
        "ticks": len(loops[1].durations),
        "write_retries": loops[0].errors,
        "tick_retries": loops[1].errors,
    }


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def main() -> None:
    """Both backends, both prunes; print, save JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="old events to prune")
    parser.add_argument("--quick", action="store_true", help="20,000 events (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    parser.add_argument(
        "--chunks-only",
        action="store_true",
        help="skip the one-transaction prune (for large --events)",
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    n = 20_000 if args.quick else args.events
    backends: list[tuple[str, Callable[[], Any]]] = [
        (name, make)
        for name, make, key in (("SQLite (file, WAL)", sqlite_url, "sqlite"),
                                ("PostgreSQL", postgres_url, "postgresql"))
        if args.backend in (key, "both")
    ]  # fmt: skip
    modes = MODES[1:] if args.chunks_only else MODES
    runs = []
    for backend, make_url in backends:
        for mode, chunk in modes:
            try:
                with make_url() as url:
                    seeded = seed(url, n)
                    runs.append(
                        {
                            "backend": backend,
                            "mode": mode,
                            "events": n,
                            **seeded,
                            **prune_under_load(url, chunk),
                        }
                    )
            except Exception as error:  # an unreachable PostgreSQL is reported, not fatal
                runs.append({"backend": backend, "mode": mode, "status": f"unavailable: {error}"})
    done = [r for r in runs if "deleted" in r]
    for r in done:
        one = next(
            (o for o in done if o["backend"] == r["backend"] and o["mode"] == MODES[0][0]), None
        )
        if one is not None:
            r["longest_write_vs_one_transaction"] = r["longest_write_s"] / one["longest_write_s"]
            r["longest_tick_vs_one_transaction"] = r["longest_tick_s"] / one["longest_tick_s"]
    print_table(
        f"prune {n:,} old events while a writer and a tick loop run",
        (
            "backend",
            "prune",
            "bytes/event",
            "prune s",
            "longest write s",
            "longest tick s",
            "write vs 1 txn",
            "tick vs 1 txn",
        ),
        [
            [
                r["backend"],
                r["mode"],
                f"{r['bytes_per_event']:.0f}",
                f"{r['prune_seconds']:.2f}",
                f"{r['longest_write_s']:.3f}",
                f"{r['longest_tick_s']:.3f}",
                _ratio(r.get("longest_write_vs_one_transaction")),
                _ratio(r.get("longest_tick_vs_one_transaction")),
            ]
            for r in done
        ],
    )
    for r in runs:
        if "status" in r:
            print(f"{r['backend']} {r['mode']}: {r['status']}")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    path = write_json(
        args.out, "bench_retention", {"events": n, "load_average": load, "runs": runs}
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
