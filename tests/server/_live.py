"""A real ``policy-canary serve`` process on loopback, for end-to-end tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CLI = [str(Path(sys.executable).parent / "policy-canary")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(db_url: str, *args: str, port: int | None = None) -> tuple[subprocess.Popen[str], str]:
    port = port or free_port()
    proc = subprocess.Popen(
        [*CLI, "serve", "--db", db_url, "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    # A bound, not a timing claim: on the shared 2-core box under load a start can take 15 s.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)  # bounded polling for a real process to bind its port
    proc.kill()
    out = proc.communicate()[0]
    raise AssertionError(f"the server did not come up:\n{out}")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=20)[0]
    # uvicorn drains, runs the app's shutdown, then re-raises the signal it caught.
    assert proc.returncode in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out
    return out
