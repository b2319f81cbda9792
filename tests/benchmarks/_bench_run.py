"""Run one benchmark script end to end, as a user would, and read back its JSON results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_bench(script: str, out: Path, *args: str, timeout: float = 600) -> dict[str, object]:
    """``python benchmarks/<script> --out <out> <args>``: it exits 0 and writes its JSON."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "results:" in done.stdout
    result: dict[str, object] = json.loads((out / script.replace(".py", ".json")).read_text())
    return result
