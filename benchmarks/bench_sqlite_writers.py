"""Several event-writer processes on one SQLite file: the write queue against the busy handler.

Each writer process opens its own store, prepares its batches of ``--batch`` events first
(as a busy server has the next batch validated before the last one commits) and then writes
them back to back for ``--seconds`` through ``StoreLink.write``, the flusher's and the
server's path. Side by side in the same run, at N = 1, 2, 4 writers:

- ``busy handler``: writers queue in SQLite's busy handler alone (``store/_sqlite.py``'s
  queue switched off in the writer processes, as on a platform without POSIX locks), which
  sleeps 1, 2, 5 ... up to 100 ms between looks at the lock;
- ``write queue``: the current protocol, writers take turns through ``<database>-writers``.

Reported: total committed events/s, each writer's share of the batches (the smallest and
largest; an even split is 1/N each), and the time from asking to write a batch to its
commit, p50 / p99 / max over every batch of every writer. Every run checks that the stored
row count equals what the writers reported. Run: ``python benchmarks/bench_sqlite_writers.py
[--seconds 4] [--batch 1000] [--writers 1,2,4] [--quick]``.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from _common import OUTCOME_TAIL, print_table, save_writer_runs, writer_args
from policy_canary.serving._direct import StoreLink
from policy_canary.store import Store, _sqlite
from policy_canary.store.schema import events

PROTOCOLS = ("busy handler", "write queue")
COLUMNS = ("protocol", "writers", "events/s", "share min-max", "p50 ms", "p99 ms", "max ms")
COLUMNS += ("queue / busy", "stored ok")
#: Events/s the writers together are prepared for: each prepares 1.5x its share of them.
_CEILING = 150_000


def _batch(tag: str, n: int, at: datetime) -> list[tuple[Any, ...]]:
    return [
        (f"{tag}-{i}", "support-agent", None, "stable", "0" * 64, None, 0, 1, True,
         at + timedelta(microseconds=i), *OUTCOME_TAIL)
        for i in range(n)
    ]  # fmt: skip


def _writer(
    url: str, protocol: str, seconds: float, batch: int, pool: int, start: Any, out: Any
) -> None:
    """One writer process: prepared batches back to back until ``seconds`` have passed."""
    if protocol == "busy handler":
        _sqlite._LOCKS = False  # the queue's cross-process part off: SQLite's handler only
    store = Store.open(url, migrate=False)
    link = StoreLink(store)
    me = uuid.uuid4().hex[:8]
    at = datetime.now(UTC)
    batches = [_batch(f"{me}-{b}", batch, at + timedelta(seconds=b)) for b in range(pool)]
    waits: list[float] = []
    start.wait()
    began = time.perf_counter()
    for rows in batches:
        asked = time.perf_counter()
        if asked - began >= seconds:
            break
        link.write(rows, [], retry=False)
        waits.append(time.perf_counter() - asked)
    elapsed = time.perf_counter() - began
    out.put({"written": len(waits) * batch, "batches": len(waits), "seconds": elapsed,
             "waits": waits, "ran_out": len(waits) == pool})  # fmt: skip
    store.close()


def run_once(protocol: str, writers: int, seconds: float, batch: int) -> dict[str, Any]:
    """N writers on a fresh SQLite file; committed events/s, shares and waits."""
    ctx = mp.get_context("spawn")
    pool = max(20, int(1.5 * _CEILING * seconds / batch / writers))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/writers.db"
        Store.open(url).close()  # create and migrate once, before the writers start
        start, results = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_writer, args=(url, protocol, seconds, batch, pool, start, results))
            for _ in range(writers)
        ]
        for p in procs:
            p.start()
        time.sleep(2.0 + 0.5 * writers)  # every process imports, connects and prepares first
        start.set()
        reports = [results.get(timeout=seconds + 300) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        store = Store.open(url, migrate=False)
        with store.read() as conn:
            stored = conn.execute(select(func.count()).select_from(events)).scalar_one()
        store.close()
    written = sum(r["written"] for r in reports)
    waits = sorted(w * 1000 for r in reports for w in r["waits"])
    counts = [r["batches"] for r in reports]
    return {
        "protocol": protocol,
        "writers": writers,
        "written": written,
        "stored": stored,
        "events_per_s": written / max(r["seconds"] for r in reports),
        "share_min": min(counts) / sum(counts),
        "share_max": max(counts) / sum(counts),
        "wait_p50_ms": statistics.median(waits),
        "wait_p99_ms": waits[min(len(waits) - 1, int(0.99 * len(waits)))],
        "wait_max_ms": waits[-1],
        "ran_out": any(r["ran_out"] for r in reports),
    }


def main() -> None:
    """Measure both protocols at each N, print the table and the ratios, save JSON."""
    args, counts = writer_args(__doc__.splitlines()[0])
    runs = [run_once(p, n, args.seconds, args.batch) for n in counts for p in PROTOCOLS]
    rate = {(r["protocol"], r["writers"]): r["events_per_s"] for r in runs}
    for r in runs:
        queue, busy = rate[("write queue", r["writers"])], rate[("busy handler", r["writers"])]
        r["queue_vs_busy"] = queue / busy
    print_table(
        f"SQLite event writers, batches of {args.batch:,}, {args.seconds:g} s per run",
        COLUMNS,
        [
            [
                r["protocol"],
                r["writers"],
                f"{r['events_per_s']:,.0f}",
                f"{r['share_min']:.2f}-{r['share_max']:.2f}",
                f"{r['wait_p50_ms']:.1f}",
                f"{r['wait_p99_ms']:.1f}",
                f"{r['wait_max_ms']:.1f}",
                f"{r['queue_vs_busy']:.2f}x",
                r["stored"] == r["written"],
            ]
            for r in runs
        ],
    )
    if any(r["ran_out"] for r in runs):
        print("a writer ran out of prepared batches before the time was up: its rate is low")
    save_writer_runs(args, "bench_sqlite_writers", runs)


if __name__ == "__main__":
    main()
