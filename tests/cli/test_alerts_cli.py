"""``policy-canary alerts list|dispatch``: stable ``--json``, human output, config errors."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from policy_canary.alerts import enqueue_alert
from policy_canary.store import Store

Cli = Callable[..., Any]  # the `cli` fixture of tests/cli/conftest.py
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_alert_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "POLICY_CANARY_ALERTS_CONFIG",
        "POLICY_CANARY_ALERT_WEBHOOK_URL",
        "POLICY_CANARY_ALERT_WEBHOOK_SECRET",
        "POLICY_CANARY_ALERT_SLACK_URL",
        "POLICY_CANARY_ALERT_LOG",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def seeded(db_url: str) -> None:
    store = Store.open(db_url)
    with store.begin() as conn:
        enqueue_alert(
            conn,
            key="r1:rollback",
            kind="rollback",
            severity="critical",
            summary="support-agent v2 rolled back: failure rate up 80%",
            payload={"guardrail": "failure_rate"},
            at=T0,
            policy="support-agent",
            rollout_id="r1",
        )
    store.close()


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"  # nothing listens there any more


def test_list_pending_json_is_stable_before_and_after_a_dispatch(
    cli: Cli, seeded: None, tmp_path: Path
) -> None:
    before = cli("alerts", "list", "--pending", "--json")
    assert before.code == 0, before.stderr
    [alert] = before.json()
    assert alert == {
        "id": alert["id"],
        "key": "r1:rollback",
        "kind": "rollback",
        "severity": "critical",
        "summary": "support-agent v2 rolled back: failure rate up 80%",
        "created_at": "2026-01-01T00:00:00+00:00",
        "policy": "support-agent",
        "rollout_id": "r1",
        "payload": {"guardrail": "failure_rate"},
        "status": "pending",
        "deliveries": [],
    }

    config = tmp_path / "alerts.yaml"
    url = refused_url()
    config.write_text(f"sinks:\n  - type: webhook\n    url: {url}\n    secret: s\n")
    dispatched = cli("alerts", "dispatch", "--config", str(config), "--json")
    assert dispatched.code == 0, dispatched.stderr
    assert dispatched.json() == {
        "delivered": 1,
        "failed": 1,
        "pending": 1,
        "unconfigured": 0,
        "sinks": ["log", "webhook"],
    }
    # The built-in log sink wrote its JSON line on stderr, keeping stdout machine-readable.
    log_line = json.loads(dispatched.stderr.strip().splitlines()[0])
    assert (log_line["event"], log_line["key"]) == ("policy_canary.alert", "r1:rollback")

    after = cli("alerts", "list", "--pending", "--json")
    [pending] = after.json()
    assert pending["status"] == "pending"
    log, webhook = pending["deliveries"]
    assert (log["sink"], log["status"], log["attempts"], log["last_error"]) == (
        "log",
        "delivered",
        1,
        None,
    )
    assert (webhook["sink"], webhook["status"], webhook["attempts"]) == ("webhook", "pending", 1)
    assert webhook["last_error"].startswith(f"cannot reach {url.removesuffix('/hook')}: ")
    assert webhook["delivered_at"] is None
    assert webhook["next_attempt_at"] > webhook["updated_at"]
    assert sorted(webhook) == [
        "attempts",
        "delivered_at",
        "last_error",
        "next_attempt_at",
        "sink",
        "status",
        "updated_at",
    ]
    # Stable: the same state prints byte for byte the same, keys sorted.
    assert cli("alerts", "list", "--pending", "--json").stdout == after.stdout
    assert after.stdout.index('"created_at"') < after.stdout.index('"deliveries"')


def test_list_prints_a_table_for_people(cli: Cli, seeded: None) -> None:
    shown = cli("alerts", "list")
    assert shown.code == 0, shown.stderr
    assert "support-agent" in shown.stdout
    assert "rollback" in shown.stdout
    assert "none yet" in shown.stdout


def test_empty_outbox_messages(cli: Cli) -> None:
    assert cli("alerts", "list").stdout.strip() == "no alerts yet"
    assert cli("alerts", "list", "--pending").stdout.strip() == "no pending alerts"
    assert cli("alerts", "list", "--json").json() == []


def test_dispatch_reports_for_people_and_a_second_pass_sends_nothing(
    cli: Cli, seeded: None
) -> None:
    first = cli("alerts", "dispatch")
    assert first.code == 0, first.stderr
    assert first.stdout.strip() == "delivered 1, failed 0, still pending 0 (sinks: log)"
    second = cli("alerts", "dispatch", "--json")
    assert second.json() == {
        "delivered": 0,
        "failed": 0,
        "pending": 0,
        "unconfigured": 0,
        "sinks": ["log"],
    }
    assert cli("alerts", "list", "--pending", "--json").json() == []


def test_a_bad_config_file_fails_with_its_location_and_changes_nothing(
    cli: Cli, seeded: None, tmp_path: Path
) -> None:
    config = tmp_path / "alerts.yaml"
    config.write_text("sinks:\n  - type: carrier-pigeon\n")
    failed = cli("alerts", "dispatch", "--config", str(config), "--json")
    assert failed.code == 1
    error = failed.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"] == (
        f"{config}:2:11: unknown sink type 'carrier-pigeon'; use one of log, slack, webhook"
    )
    [alert] = cli("alerts", "list", "--json").json()
    assert alert["deliveries"] == []


def test_every_alerts_command_has_help(cli: Cli) -> None:
    top = cli("alerts", "--help")
    assert top.code == 0
    assert "Inspect and deliver rollout alerts." in top.stdout
    for command in ("list", "dispatch"):
        helped = cli("alerts", command, "--help")
        assert helped.code == 0
        assert "--json" in helped.stdout
