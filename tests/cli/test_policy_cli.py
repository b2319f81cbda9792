"""``policy-canary policy ...``: human output, ``--json`` output, exit codes, bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from policy_canary.cli import app

Cli = Callable[..., Any]  # the `cli` fixture of tests/cli/conftest.py


@pytest.fixture
def spec_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "v1.yaml": "prompt: You are helpful.\ntools: [search]\nmodel: small\n",
        "v2.json": '{"prompt": "You are concise.", "tools": ["search"], "model": "small"}',
        "dup.yaml": "prompt: a\ntools: []\nprompt: b\n",
        "broken.yaml": "prompt: [unclosed\ntools: x\n",
        "list.yaml": "- a\n- b\n",
        "nan.yaml": "temperature: .nan\n",
        "nan.json": '{"temperature": NaN}',
        "date.yaml": "released: 2024-01-01\n",
        "empty.yaml": "",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "huge.json").write_text('{"prompt": "' + "x" * (1024 * 1024 + 10) + '"}')
    return {name: tmp_path / name for name in [*files, "huge.json"]}


def test_push_show_versions_diff_history_round_trip(cli: Cli, spec_files: dict[str, Path]) -> None:
    first = cli(
        "policy", "push", "support-agent", str(spec_files["v1.yaml"]), "-m", "first", "--json"
    )
    assert first.code == 0, first.stderr
    data = first.json()
    assert data["created"] is True
    assert data["became_stable"] is True
    assert data["version"]["number"] == 1
    again = cli("policy", "push", "support-agent", str(spec_files["v1.yaml"]), "--json")
    assert again.json()["created"] is False
    assert cli("policy", "push", "support-agent", str(spec_files["v2.json"])).code == 0

    listed = cli("policy", "list", "--json").json()
    assert [(p["name"], p["stable"]["number"], p["latest"]["number"]) for p in listed] == [
        ("support-agent", 1, 2)
    ]
    versions = cli("policy", "versions", "support-agent", "--json").json()
    assert [(v["label"], v["stable"]) for v in versions] == [("v1", True), ("v2", False)]
    shown = cli("policy", "show", "support-agent@v2", "--json").json()
    assert shown["spec"]["prompt"] == "You are concise."
    assert cli("policy", "show", "support-agent", "--json").json()["number"] == 1
    diff = cli("policy", "diff", "support-agent", "v1", "v2", "--json").json()
    assert diff["changed"] == ["prompt"]
    human_diff = cli("policy", "diff", "support-agent", "v1", "v2")
    assert "changed: prompt" in human_diff.stdout

    moved = cli("policy", "set-stable", "support-agent", "v2", "--reason", "better", "--json")
    assert moved.json()["changed"] is True
    history = cli("policy", "history", "support-agent", "--json").json()
    assert [h["kind"] for h in history] == ["bootstrap", "manual"]
    assert history[1]["reason"] == "better"
    assert "manual" in cli("policy", "history", "support-agent").stdout


def test_export_and_import_between_stores(
    cli: Cli, spec_files: dict[str, Path], tmp_path: Path
) -> None:
    cli("policy", "push", "agent", str(spec_files["v1.yaml"]))
    out = tmp_path / "export.json"
    assert cli("policy", "export", "agent@v1", "-o", str(out)).code == 0
    original_id = cli("policy", "show", "agent@v1", "--json").json()["id"]
    runner = CliRunner()
    result = runner.invoke(
        app, ["--db", f"sqlite:///{tmp_path}/other.db", "policy", "import", str(out), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout
    assert '"id": "' + original_id in result.stdout


BIG = 123456789012345678901234567890


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_integers_beyond_2_to_the_53_survive_show_export_and_import_exactly(
    cli: Cli, tmp_path: Path, suffix: str
) -> None:
    spec = tmp_path / f"big{suffix}"
    spec.write_text(
        f"x: {BIG}\ny: {2**53 + 1}\nz: 1.5e+300\n"
        if suffix == ".yaml"
        else f'{{"x": {BIG}, "y": {2**53 + 1}, "z": 1.5e300}}'
    )
    pushed = cli("policy", "push", "agent", str(spec), "--json").json()["version"]
    shown = cli("policy", "show", "agent@v1", "--json").json()
    assert shown["spec"]["x"] == BIG
    assert shown["spec"]["y"] == 2**53 + 1
    assert shown["spec"]["z"] == int(Decimal("1.5e300"))
    out = tmp_path / "export.json"
    assert cli("policy", "export", "agent@v1", "-o", str(out)).code == 0
    assert f'"x": {BIG}' in out.read_text()
    again = cli("policy", "import", str(out), "--json")
    assert again.code == 0, again.stderr
    assert again.json()["version"]["id"] == pushed["id"]
    other = CliRunner().invoke(
        app, ["--db", f"sqlite:///{tmp_path}/other.db", "policy", "import", str(out), "--json"]
    )
    assert other.exit_code == 0, other.stderr
    assert json.loads(other.stdout)["version"]["id"] == pushed["id"]


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("dup.yaml", r"dup.yaml:3:1: duplicate key 'prompt'"),
        ("broken.yaml", r"broken.yaml:2:\d+: malformed YAML"),
        ("list.yaml", "the top level is a list; a policy spec must be a mapping"),
        ("nan.yaml", "nan is not allowed"),
        ("nan.json", "NaN is not allowed"),
        ("date.yaml", "quote it as a string"),
        ("empty.yaml", "the file is empty"),
        ("huge.json", "limit is 1,048,576 bytes"),
    ],
)
def test_bad_spec_files_exit_1_with_a_clear_message_and_store_nothing(
    cli: Cli, spec_files: dict[str, Path], file: str, message: str
) -> None:
    result = cli("policy", "push", "agent", str(spec_files[file]))
    assert result.code == 1
    assert re.search(message, result.stderr), result.stderr
    assert cli("policy", "list", "--json").json() == []


def test_invalid_name_unknown_and_ambiguous_references_exit_1(
    cli: Cli, spec_files: dict[str, Path]
) -> None:
    bad_name = cli("policy", "push", "Bad Name", str(spec_files["v1.yaml"]))
    assert bad_name.code == 1
    assert "invalid policy name" in bad_name.stderr
    cli("policy", "push", "agent", str(spec_files["v1.yaml"]))
    unknown = cli("policy", "show", "agent@v7", "--json")
    assert unknown.code == 1
    assert unknown.json()["error"]["code"] == "not_found"
    assert "it has v1" in unknown.stderr
    missing = cli("policy", "versions", "nope")
    assert missing.code == 1
    assert "no policy named 'nope'" in missing.stderr


def test_missing_file_is_a_user_error(cli: Cli, tmp_path: Path) -> None:
    result = cli("policy", "push", "agent", str(tmp_path / "absent.yaml"))
    assert result.code == 1
    assert "no such file" in result.stderr


def test_usage_errors_exit_2(cli: Cli) -> None:
    assert cli("policy", "push").code == 2
    assert cli("policy", "frobnicate").code == 2


def test_unreachable_store_exits_3() -> None:
    result = CliRunner().invoke(
        app, ["--db", "postgresql+psycopg://postgres@127.0.0.1:1/x", "policy", "list"]
    )
    assert result.exit_code == 3
    assert "unavailable" in result.stderr


def test_not_a_database_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"\x00junk" * 200)
    result = CliRunner().invoke(app, ["--db", str(path), "policy", "list"])
    assert result.exit_code == 3
    assert "not a policy-canary database" in result.stderr
    assert path.read_bytes() == b"\x00junk" * 200


def test_db_upgrade_reports_the_head(cli: Cli) -> None:
    data = cli("db", "upgrade", "--json").json()
    assert data["revision"] == data["head"]
    assert isinstance(data["created"], bool)


def test_db_upgrade_on_a_new_path_says_it_created_the_database(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    first = CliRunner().invoke(app, ["--db", str(path), "db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "created a new, empty database" in first.stdout
    again = CliRunner().invoke(app, ["--db", str(path), "db", "upgrade", "--json"])
    assert again.exit_code == 0, again.output
    assert '"created": false' in again.stdout
    assert "created" not in CliRunner().invoke(app, ["--db", str(path), "db", "upgrade"]).stdout


def test_a_python_tag_in_a_spec_is_refused_and_nothing_is_stored(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "evil.yaml"
    spec.write_text("prompt: hi\ncmd: !!python/object/apply:os.system [echo pwned]\n")
    result = cli("policy", "push", "agent", str(spec))
    assert result.code == 1
    assert "evil.yaml:2:6: YAML tag '!!python/object/apply:os.system' is not allowed" in (
        result.stderr
    )
    assert "no policies yet" in cli("policy", "list").stdout
