"""``policy-canary serve``: secure by default, a live process, the docs' curl examples."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from _live import start, stop
from sqlalchemy import func, select
from typer.testing import CliRunner

from policy_canary.cli import app as cli_app
from policy_canary.errors import InputError
from policy_canary.registry import Registry
from policy_canary.server._run import check_exposure, is_loopback
from policy_canary.store import Store
from policy_canary.store.schema import events, feedback
from policy_canary.tokens import Tokens

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_no_auth_is_only_for_loopback_and_tokens_are_otherwise_required() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("example.com")
    assert "AUTH DISABLED" in check_exposure(host="127.0.0.1", no_auth=True, usable_tokens=0)
    with pytest.raises(InputError, match="only allowed on loopback"):
        check_exposure(host="0.0.0.0", no_auth=True, usable_tokens=3)
    with pytest.raises(InputError, match="no usable API token"):
        check_exposure(host="0.0.0.0", no_auth=False, usable_tokens=0)
    assert "2 usable" in check_exposure(host="0.0.0.0", no_auth=False, usable_tokens=2)


def test_the_cli_refuses_to_serve_without_a_token(sqlite_url: str) -> None:
    result = CliRunner().invoke(cli_app, ["--db", sqlite_url, "serve", "--port", "1"])
    assert result.exit_code == 1
    assert "no usable API token" in result.stderr
    exposed = CliRunner().invoke(
        cli_app, ["--db", sqlite_url, "serve", "--host", "0.0.0.0", "--no-auth"]
    )
    assert exposed.exit_code == 1
    assert "only allowed on loopback" in exposed.stderr


def test_no_auth_on_loopback_says_so_and_serves(sqlite_url: str) -> None:
    proc, base = start(sqlite_url, "--no-auth")
    try:
        assert httpx.get(f"{base}/api/v1/policies").json() == []
    finally:
        out = stop(proc)
    assert "AUTH DISABLED (--no-auth)" in out
    assert "GET /api/v1/policies" not in out  # no access log unless asked for


def test_workers_share_the_store_and_the_access_log_is_opt_in(sqlite_url: str) -> None:
    """Given ``serve --workers 2 --access-log``, two processes serve the port over one store:
    an OFREP evaluation and its event on one connection, a remote-SDK event on another,
    each request logged; SIGTERM stops every worker and the events are stored."""
    store = Store.open(sqlite_url)
    version = Registry(store).register("support-agent", {"prompt": "hi"}, author="t").version
    secret = Tokens(store).create("agent", role="agent").secret
    proc, base = start(sqlite_url, "--workers", "2", "--access-log")
    auth = {"Authorization": f"Bearer {secret}"}
    try:
        with httpx.Client(base_url=base, headers=auth) as client:
            flag = client.post("/ofrep/v1/evaluate/flags/support-agent",
                               json={"context": {"targetingKey": "u"}})  # fmt: skip
            assert flag.status_code == 200, flag.text
            event = {"decision_id": flag.json()["metadata"]["decisionId"], "latency_ms": 5.0}
            recorded = client.post("/api/v1/events", json={"events": [event]})
            assert recorded.json() == {"accepted": 1}, recorded.text
        remote = {"decision_id": "remote-1", "policy": "support-agent", "arm": "stable",
                  "version_digest": version.id, "at": "2026-01-01T00:00:00+00:00"}  # fmt: skip
        posted = httpx.post(f"{base}/api/v1/events", json={"events": [remote]}, headers=auth)
        assert posted.json() == {"accepted": 1}, posted.text
    finally:
        out = stop(proc)
    assert "2 worker processes" in out
    assert len(set(re.findall(r"Started server process \[(\d+)\]", out))) == 2
    assert '"POST /ofrep/v1/evaluate/flags/support-agent HTTP/1.1" 200' in out
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 2
    store.close()


def _sh_blocks() -> list[str]:
    fence = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
    return [body for lang, body in fence.findall(DOCS.read_text()) if lang == "sh"]


def test_the_docs_curl_examples_run_against_a_live_server(db_url: str, tmp_path: Path) -> None:
    """Given a served store with admin, operator and agent tokens, every ```sh block of
    docs/api.md exits 0 in order; stopping the server writes the recorded event."""
    store = Store.open(db_url)
    tokens = Tokens(store)
    env = {
        **os.environ,
        "ADMIN": tokens.create("admin", role="admin").secret,
        "OPS": tokens.create("ops", role="operator").secret,
        "AGENT": tokens.create("agent", role="agent").secret,
    }
    proc, base = start(db_url)
    env["PC"] = base
    try:
        blocks = _sh_blocks()
        assert len(blocks) >= 8
        for block in blocks:
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", block],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, f"{block}\n--- stdout\n{done.stdout}\n{done.stderr}"
    finally:
        out = stop(proc)
    assert "auth: bearer tokens required (3 usable)" in out
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 1
        assert conn.execute(select(func.count()).select_from(feedback)).scalar_one() == 1
    store.close()
