"""``policy-canary demo --serve``: the story runs, then its dashboard stays up on loopback."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from _live import CLI, free_port

#: Bounds the wait for the story (about a minute on a quiet machine) and the server.
STORY_SECONDS = 600


@pytest.mark.slow
def test_demo_serve_prints_a_token_that_opens_the_dashboard(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "demo", "--serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STORY_SECONDS
    token = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"\b(pc_[A-Za-z0-9_-]{43})\b", "".join(lines))
            if found:
                try:
                    if httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200:
                        token = found.group(1)
                        break
                except httpx.TransportError:
                    pass
            time.sleep(0.2)  # bounded polling for a real process: the story, then the bind
        assert token is not None, "".join(lines)
        with httpx.Client(base_url=base, timeout=10) as client:
            form = client.get("/login").text
            nonce = re.search(r'name="nonce" value="([^"]+)"', form)
            assert nonce is not None
            client.post("/login", data={"token": token, "nonce": nonce.group(1), "next": "/"})
            overview = client.get("/")
            assert overview.status_code == 200
            assert 'data-policy="support-agent"' in overview.text
            assert "rolled back" in overview.text  # v3, the story's second rollout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    assert "Application shutdown complete" in "".join(lines)
