"""``policy-canary controller`` through a store outage: one line per failed tick, no traceback.

Given the controller running as a process on SQLite, when the database's folder is moved
away for a few ticks and back, then stderr shows one timestamped ERROR line when the outage
starts, one WARNING line per failed tick, an INFO line when ticks work again, and never a
traceback; the loop keeps running and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _outage import eventually, sqlite_unreadable
from policy_canary.store import Store

_MAIN = "from policy_canary.cli import main; main()"
_LINE = re.compile(r"^\d\d:\d\d:\d\d (ERROR|WARNING|INFO) ")


@pytest.mark.slow
def test_a_store_outage_prints_one_line_per_failed_tick_and_no_traceback(tmp_path: Path) -> None:
    database = tmp_path / "db" / "store.db"
    database.parent.mkdir()
    Store.open(str(database)).close()
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _MAIN, "--db", str(database), "controller",
             "--interval", "0.1s", "--no-alerts"],
            stdout=out,
            stderr=err,
            text=True,
        )  # fmt: skip
    try:
        assert eventually(lambda: "no active rollouts" in out_path.read_text(), timeout=20)
        with sqlite_unreadable(database):
            assert eventually(lambda: err_path.read_text().count("WARNING") >= 3)
        assert eventually(lambda: "controller ticks again" in err_path.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    lines = err_path.read_text().splitlines()
    assert "Traceback" not in err_path.read_text()
    assert all(_LINE.match(line) for line in lines), lines
    levels = [_LINE.match(line).group(1) for line in lines]  # type: ignore[union-attr]
    assert levels[0] == "ERROR"
    assert levels.count("ERROR") == 1
    assert levels[-1] == "INFO"
    assert "no longer exists" in lines[0]  # the folder was moved away (store/_sqlite.py)
    assert "lock released" in out_path.read_text()
