"""Shared plumbing for the benchmark scripts: arguments, timing, tables, JSON results."""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

#: A typical recorded outcome, as the tail of an event row (latency 812.5 ms, no error,
#: quality 0.8, no flags, $0.0021, 900 + 210 tokens on "gpt-x", no custom metrics); the
#: benchmarks that insert rows directly put a decision's columns in front of it.
OUTCOME_TAIL: tuple[Any, ...] = (812.5, False, 0.8, "[]", 0, 0.0021, 900, 210, "gpt-x", "{}")
RESULTS = Path(__file__).parent / "results"
# Wide enough for the tables even when stdout is a pipe (CI logs, files).
console = Console(width=160)


def parse_args(description: str, *, n: int, repeats: int) -> argparse.Namespace:
    """The common options: problem size, repeats, and where the JSON goes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n", type=int, default=n, help=f"operations per run (default {n:,})")
    parser.add_argument(
        "--repeats", type=int, default=repeats, help=f"timed runs (default {repeats})"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    return parser.parse_args()


def writer_args(description: str) -> tuple[argparse.Namespace, list[int]]:
    """The options of the writer benchmarks (N processes writing batches), and the Ns.

    ``--quick`` (the smoke test) is 1 s runs of batches of 200 at N = 1, 2.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=4.0, help="per run (default 4)")
    parser.add_argument("--batch", type=int, default=1000, help="events per transaction")
    parser.add_argument("--writers", default="1,2,4", help="writer counts (default 1,2,4)")
    parser.add_argument("--quick", action="store_true", help="1 s runs, N = 1, 2 (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = parser.parse_args()
    counts = [int(n) for n in args.writers.split(",")]
    if args.quick:
        args.seconds, args.batch, counts = 1.0, 200, [1, 2]
    return args, counts


@contextmanager
def no_gc() -> Iterator[None]:
    """Keep the cyclic collector out of timed loops (as :mod:`timeit` does)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def per_call_us(run: Callable[[], int], repeats: int) -> list[float]:
    """Time ``run`` (which performs and returns a number of calls) ``repeats`` times.

    Returns the mean microseconds per call of each run; callers report the median run, so
    one run disturbed by a neighbour on the box does not move the result.
    """
    results = []
    for _ in range(repeats):
        with no_gc():
            start = time.perf_counter()
            calls = run()
            elapsed = time.perf_counter() - start
        results.append(elapsed / calls * 1e6)
    return results


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return statistics.median(values)


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print one results table for people."""
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console.print(table)


def write_json(out: Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus machine details) to ``out/name.json``; return the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(
        json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=2) + "\n",
        encoding="utf-8",
    )
    return path


def save_writer_runs(args: argparse.Namespace, name: str, runs: list[dict[str, Any]]) -> None:
    """The writer benchmarks' ending: print the load average, save the runs as JSON."""
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    payload = {"seconds": args.seconds, "batch": args.batch, "load_average": load, "runs": runs}
    print(f"results: {write_json(args.out, name, payload)}")


@contextmanager
def pg_schema(pg_url: str) -> Iterator[tuple[str | None, str | None]]:
    """A fresh schema on the PostgreSQL at ``pg_url``: (its URL, None), dropped afterwards.

    (None, why) when PostgreSQL is unreachable: the benchmark reports that part as missing
    instead of timing it.
    """
    from sqlalchemy import create_engine, text  # only the benchmarks that use PostgreSQL

    schema = f"bench_{os.urandom(6).hex()}"
    try:
        admin = create_engine(pg_url, connect_args={"connect_timeout": 5})
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as error:  # reported, not timed
        yield None, str(error).splitlines()[0]
        return
    sep = "&" if "?" in pg_url else "?"
    try:
        yield f"{pg_url}{sep}options={quote(f'-csearch_path={schema}')}", None
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
