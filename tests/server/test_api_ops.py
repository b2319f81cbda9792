"""Incidents, alerts, the audit log and tokens over the API: the CLI's library calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _api_support import SPEC_V2, Api, push
from sqlalchemy import select
from typer.testing import CliRunner

from policy_canary.cli import app as cli_app
from policy_canary.store.schema import alert_deliveries, alerts

NAME = "support-agent"


def cli_json(api: Api, *args: str) -> Any:
    result = CliRunner().invoke(cli_app, ["--db", api.store.url, *args, "--json"])
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def _rolled_back(api: Api) -> str:
    push(api)
    push(api, spec=SPEC_V2)
    api.post(f"/api/v1/policies/{NAME}/rollouts", {"candidate": "v2"}, "operator")
    done = api.post(f"/api/v1/policies/{NAME}/rollout/rollback", {"reason": "bad"}, "operator")
    assert done.status_code == 200, done.text
    found = api.get("/api/v1/incidents", "viewer", params={"policy": NAME}).json()
    assert len(found) == 1
    incident_id: str = found[0]["id"]
    return incident_id


def test_incidents_list_show_export_and_replay(api: Api, tmp_path: Path) -> None:
    incident_id = _rolled_back(api)
    assert api.get("/api/v1/incidents", "viewer").json() == cli_json(api, "incident", "list")
    shown = api.get(f"/api/v1/incidents/{incident_id}", "viewer").json()
    assert shown == cli_json(api, "incident", "show", incident_id)
    document = api.get(f"/api/v1/incidents/{incident_id}/export", "viewer").json()
    out = tmp_path / "incident.json"
    cli_json(api, "incident", "export", incident_id, "-o", str(out))
    assert document == json.loads(out.read_text())
    replayed = api.post("/api/v1/incidents/replay", document, "viewer")
    assert replayed.status_code == 200
    assert replayed.json()["ok"] is True
    assert replayed.json() == cli_json(api, "incident", "replay", str(out))
    broken = api.post("/api/v1/incidents/replay", {"format": "nope"}, "viewer")
    assert broken.status_code == 400


def test_alerts_filter_pending_delivered_and_failed(api: Api) -> None:
    _rolled_back(api)
    everything = api.get("/api/v1/alerts", "viewer").json()
    assert everything == cli_json(api, "alerts", "list")
    assert everything
    assert api.get("/api/v1/alerts", "viewer", params={"status": "pending"}).json() == everything
    assert api.get("/api/v1/alerts", "viewer", params={"status": "failed"}).json() == []
    with api.store.begin() as conn:
        alert_id = conn.execute(select(alerts.c.id)).scalars().first()
        conn.execute(
            alert_deliveries.insert().values(
                alert_id=alert_id, sink="webhook", status="failing", attempts=3,
                last_error="HTTP 500", updated_at=api.clock.now(),
            )
        )  # fmt: skip
    failed = api.get("/api/v1/alerts", "viewer", params={"status": "failed"}).json()
    assert [a["id"] for a in failed] == [alert_id]


def test_the_audit_log_filters_by_actor_and_subject(api: Api) -> None:
    push(api)
    api.post(f"/api/v1/policies/{NAME}/versions", {"spec": SPEC_V2}, "admin")
    by_admin = api.get("/api/v1/audit", "viewer", params={"actor": "admin-token"}).json()
    assert [(a["action"], a["subject"]) for a in by_admin] == [("version.register", f"{NAME}@v2")]
    v1 = api.get("/api/v1/audit", "viewer", params={"subject": f"{NAME}@v1"}).json()
    assert [a["actor"] for a in v1] == ["operator-token"]
    assert len(api.get("/api/v1/audit", "viewer", params={"limit": 1}).json()) == 1


def test_admins_manage_tokens_over_the_api(api: Api) -> None:
    created = api.post("/api/v1/tokens", {"name": "ci", "role": "agent", "expires": "1d"})
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    assert secret.startswith("pc_")
    assert api.post("/ofrep/v1/evaluate/flags", {"context": {}}, secret).status_code == 200
    listed = api.get("/api/v1/tokens").json()
    assert "ci" in [t["name"] for t in listed]
    assert secret not in json.dumps(listed)
    revoked = api.post("/api/v1/tokens/ci/revoke", {"reason": "rotated"})
    assert revoked.json()["state"] == "revoked"
    assert api.post("/ofrep/v1/evaluate/flags", {"context": {}}, secret).status_code == 401
    audit = api.get("/api/v1/audit", "viewer", params={"subject": "token:ci"}).json()
    assert [(a["action"], a["actor"]) for a in audit] == [
        ("token.revoke", "admin-token"),
        ("token.create", "admin-token"),
    ]
    bad = api.post("/api/v1/tokens", {"name": "x", "role": "agent", "expires": "soon"})
    assert bad.status_code == 400
