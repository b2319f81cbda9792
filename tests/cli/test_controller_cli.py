"""``policy-canary controller`` as a process: it loops, and stops cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from policy_canary.store import Store
from policy_canary.store.schema import leases

_MAIN = "from policy_canary.cli import main; main()"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_controller_loop_stops_on_signal_and_releases_its_lease(
    tmp_path: Path, sig: signal.Signals
) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    Store.open(url).close()
    proc = subprocess.Popen(
        [sys.executable, "-c", _MAIN, "--db", url, "controller", "--interval", "0.1s",
         "--no-alerts", "--holder", "loop-test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()  # the first tick has run: the lease is held
        assert "no active rollouts" in first
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "lock released" in out
    store = Store.open(url)
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(leases)).scalar_one() == 0
    store.close()
