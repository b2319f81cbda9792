"""The policy endpoints call the registry like the CLI does and return its --json shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from _api_support import SPEC_V1, SPEC_V2, Api, push
from typer.testing import CliRunner

from policy_canary.cli import app as cli_app

NAME = "support-agent"


def cli_json(api: Api, *args: str) -> Any:
    result = CliRunner().invoke(cli_app, ["--db", api.store.url, *args, "--json"])
    assert result.exit_code == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_push_registers_a_version_and_names_the_token_as_author(api: Api) -> None:
    body = push(api)
    assert body["created"] is True
    assert body["became_stable"] is True
    assert body["version"]["number"] == 1
    assert body["version"]["author"] == "operator-token"
    again = push(api)
    assert again["created"] is False
    audit = api.get("/api/v1/audit", "viewer").json()
    register = [a for a in audit if a["action"] == "version.register"]
    assert [a["actor"] for a in register] == ["operator-token"]


def test_reads_return_the_cli_json_shapes(api: Api, tmp_path: Path) -> None:
    push(api)
    push(api, spec=SPEC_V2)
    base = f"/api/v1/policies/{NAME}"
    assert api.get("/api/v1/policies", "viewer").json() == cli_json(api, "policy", "list")
    assert api.get(f"{base}/versions", "viewer").json() == cli_json(api, "policy", "versions", NAME)
    assert api.get(f"{base}/versions/v2", "viewer").json() == cli_json(
        api, "policy", "show", f"{NAME}@v2"
    )
    assert api.get(f"{base}/diff", "viewer", params={"a": "v1", "b": "v2"}).json() == cli_json(
        api, "policy", "diff", NAME, "v1", "v2"
    )
    assert api.get(f"{base}/history", "viewer").json() == cli_json(api, "policy", "history", NAME)
    exported = api.get(f"{base}/versions/v1/export", "viewer").json()
    out = tmp_path / "v1.json"
    cli_json(api, "policy", "export", f"{NAME}@v1", "-o", str(out))
    assert exported == json.loads(out.read_text())


def test_set_stable_needs_a_reason_and_records_the_actor(api: Api) -> None:
    push(api)
    push(api, spec=SPEC_V2)
    url = f"/api/v1/policies/{NAME}/stable"
    missing = api.post(url, {"ref": "v2"})
    assert missing.status_code == 400
    assert "reason" in missing.json()["detail"]
    blank = api.post(url, {"ref": "v2", "reason": " "})
    assert blank.status_code == 422
    assert blank.json()["code"] == "invalid_spec"
    moved = api.post(url, {"ref": "v2", "reason": "hotfix"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["changed"] is True
    assert moved.json()["entry"]["actor"] == "admin-token"
    assert api.post(url, {"ref": "v2", "reason": "again"}).json() == {
        "changed": False,
        "entry": None,
    }


def test_import_round_trips_an_export_and_refuses_a_tampered_one(api: Api) -> None:
    push(api)
    document = api.get(f"/api/v1/policies/{NAME}/versions/v1/export", "viewer").json()
    same = api.post("/api/v1/policies/import", document)
    assert same.status_code == 200
    assert same.json()["created"] is False
    tampered = {**document, "spec": {**SPEC_V1, "prompt": "evil"}}
    refused = api.post("/api/v1/policies/import", tampered)
    assert refused.status_code == 422
    assert "digest mismatch" in refused.json()["detail"]


def test_unknown_policy_and_version_are_404_problems(api: Api) -> None:
    missing = api.get("/api/v1/policies/nope/versions", "viewer")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    problem = missing.json()
    assert problem["code"] == "not_found"
    assert problem["status"] == 404
    assert problem["type"] == "urn:policy-canary:error:not_found"
    push(api)
    no_version = api.get(f"/api/v1/policies/{NAME}/versions/v9", "viewer").json()
    assert no_version["code"] == "not_found"
    assert "v9" in no_version["detail"]


def test_a_spec_that_is_not_an_object_is_refused(api: Api) -> None:
    response = api.post(f"/api/v1/policies/{NAME}/versions", {"spec": [1, 2]}, "operator")
    assert response.status_code == 400
    assert "spec" in response.json()["detail"]
    assert api.get("/api/v1/policies", "viewer").json() == []
