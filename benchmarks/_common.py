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

from rich.console import Console
from rich.table import Table

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
