"""Inputs that used to end in a traceback: each is one clear line, exit 1, and JSON with --json.

Given a command and input it cannot accept (an over-nested or binary file, a version number no
store can hold, a target it cannot write, a malformed URL), when it runs, then it exits 1 with
one ``error:`` line naming what to fix, prints ``{"error": ...}`` on stdout under ``--json``,
and never reports an unexpected error (the CLI's last-resort guard) or a traceback.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from _cli_support import Cli, Run, make_cli
from sqlalchemy import create_engine, text

from _rollout_support import PLAN_YAML

DEEP = "a: " + "[" * 500 + "]" * 500 + "\n"


def assert_clear_error(run: Run, *fragments: str, code: int = 1) -> dict[str, Any]:
    """One ``error:`` line on stderr naming every fragment; with --json the same on stdout."""
    assert run.code == code, (run.code, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    assert "unexpected" not in run.stderr, run.stderr  # a specific message, not the guard's
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error: "), run.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    if run.stdout.strip():
        error: dict[str, Any] = json.loads(run.stdout)["error"]
        assert error["message"] == lines[0].removeprefix("error: ")
        return error
    return {}


@pytest.fixture
def pushed(cli: Cli, tmp_path: Path) -> Path:
    """sa v1 (stable) and v2; returns a plan file."""
    for n in (1, 2):
        spec = tmp_path / f"v{n}.yaml"
        spec.write_text(f"prompt: version {n}\n")
        assert cli("policy", "push", "sa", str(spec)).code == 0
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN_YAML)
    return plan


def test_yaml_nested_500_deep_is_refused_by_every_reader(
    cli: Cli, pushed: Path, tmp_path: Path
) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text(DEEP)
    for args in (
        ["policy", "push", "sa", str(deep)],
        ["plan", "check", str(deep)],
        ["rollout", "start", "sa", "--candidate", "v2", "--plan", str(deep)],
        ["alerts", "dispatch", "--config", str(deep)],
    ):
        error = assert_clear_error(cli(*args, "--json"), "deep.yaml", "nested too deeply")
        assert error["code"] in ("invalid_spec", "invalid_plan", "invalid_input")


def test_a_nul_byte_in_yaml_is_located(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "nul.yaml"
    spec.write_bytes(b"prompt: hi\nnote: a\x00b\n")
    assert_clear_error(cli("policy", "push", "sa", str(spec), "--json"), "nul.yaml:2:8", "'\\x00'")


def test_a_lone_surrogate_in_a_spec_is_refused(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "s.json"
    spec.write_text('{"x": "\\ud800"}')
    assert_clear_error(cli("policy", "push", "sa", str(spec), "--json"), "$.x", "lone surrogate")
    assert "no policies yet" in cli("policy", "list").stdout


@pytest.mark.parametrize("number", ["99999999999999999999", "9" * 5000, "2147483648"])
def test_a_version_number_no_store_can_hold_is_not_found(
    cli: Cli, pushed: Path, number: str
) -> None:
    ref = f"v{number}"
    for args in (
        ["policy", "show", f"sa@{ref}"],
        ["policy", "diff", "sa", "v1", ref],
        ["rollout", "start", "sa", "--candidate", ref, "--plan", str(pushed)],
    ):
        error = assert_clear_error(cli(*args, "--json"), "no version", "it has v1..v2")
        assert error["code"] == "not_found"
        assert len(error["message"]) < 200


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])  # 10**400: tests/plan
def test_plan_traffic_must_be_a_finite_percentage(
    sqlite_url: str, tmp_path: Path, value: str
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN_YAML.replace("traffic: 1,", f"traffic: {value},", 1))
    assert plan.read_text() != PLAN_YAML
    run = make_cli(sqlite_url)("plan", "check", str(plan), "--json")
    assert_clear_error(run, "plan.yaml:", "finite percentage")


def test_plan_check_at_a_trickle_of_traffic_warns_instead_of_overflowing(
    sqlite_url: str, tmp_path: Path
) -> None:
    cli = make_cli(sqlite_url)
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN_YAML)
    run = cli("plan", "check", str(plan), "--rps", "1e-10", "--baseline-rate", "error=0.01",
              "--json")  # fmt: skip
    assert run.code == 0, run.stderr
    assert any("over 100 years" in w for w in run.json()["warnings"])
    assert_clear_error(cli("plan", "check", str(plan), "--rps", "inf"), "--rps", "finite")


def test_export_targets_the_os_refuses_are_clear_errors(
    cli: Cli, pushed: Path, tmp_path: Path
) -> None:
    cases = [
        (tmp_path / "missing" / "x.json", "does not exist"),
        (tmp_path, "is a folder"),
        (Path("/dev/full"), "No space left on device"),
    ]
    for target, fragment in cases:
        run = cli("policy", "export", "sa@v1", "-o", str(target), "--json")
        assert_clear_error(run, fragment)
    cli("rollout", "start", "sa", "--candidate", "v2", "--plan", str(pushed))
    cli("rollout", "rollback", "sa", "--reason", "test")
    (incident,) = cli("incident", "list", "--json").json()
    for target, fragment in cases:
        run = cli("incident", "export", incident["id"], "-o", str(target), "--json")
        assert_clear_error(run, fragment)


def test_replay_of_an_over_nested_incident_file_speaks_of_incidents(
    sqlite_url: str, tmp_path: Path
) -> None:
    nested: Any = 1
    for _ in range(80):
        nested = {"n": nested}
    doc = {"format": "policy-canary.incident/1", "bundle": {"id": "x", "deep": nested}}
    path = tmp_path / "incident.json"
    path.write_text(json.dumps(doc))
    run = make_cli(sqlite_url)("incident", "replay", str(path), "--json")
    error = assert_clear_error(run, "incident export", "nested deeper than")
    assert "spec" not in error["message"]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgresql+psycopg://postgres@127.0.0.1:abc/test", "is not a database URL"),
        ("postgresql+psycopg://postgres@[::1/x", "is not a database URL"),
        ("postgresql+psycopg://u:secret@127.0.0.1:abc/test", "u:***@"),
        ("postgresql+psycopg://postgres@127.0.0.1:99999/test", "port 99999"),
        ("postgresql+psycopg2://postgres@127.0.0.1/test", "'psycopg2' is not installed"),
        ("postgresql+asyncpg://postgres@127.0.0.1/test", "asyncio driver 'asyncpg'"),
        ("postgresql+nope://postgres@127.0.0.1/test", "does not know"),
    ],
)
def test_malformed_db_urls_say_what_to_write(url: str, fragment: str) -> None:
    run = make_cli(url)("policy", "list", "--json")
    error = assert_clear_error(run, fragment)
    assert error["code"] == "invalid_input"
    assert "secret" not in run.stderr


def test_a_postgres_url_without_a_database_name_is_refused() -> None:
    # A role that does not exist: were the URL accepted, libpq would connect to a database
    # named after it (as it does to 'postgres' for postgres@), and fail; nothing is touched.
    role = f"pc_nodb_{uuid.uuid4().hex[:8]}"
    for url in (f"postgresql+psycopg://{role}@127.0.0.1:5432/",
                f"postgresql://{role}@127.0.0.1:5432"):  # fmt: skip
        run = make_cli(url)("policy", "list", "--json")
        assert_clear_error(run, "names no database", "/policy_canary")


def test_a_database_with_foreign_tables_is_a_conflict(db_url: str) -> None:
    """An unrelated ``events`` table: policy-canary refuses to share the database."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE events (x INTEGER)"))
    engine.dispose()
    run = make_cli(db_url)("policy", "list", "--json")
    error = assert_clear_error(run, "already holds tables policy-canary did not create")
    assert error["code"] == "conflict"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://hooks.example:99999/x", "Port out of range"),
        ("http://[::1/x", "Invalid IPv6 URL"),
    ],
)
def test_webhook_urls_that_cannot_be_parsed(
    sqlite_url: str, tmp_path: Path, url: str, fragment: str
) -> None:
    config = tmp_path / "sinks.yaml"
    config.write_text(f"sinks:\n  - type: webhook\n    url: {url!r}\n")
    cli = make_cli(sqlite_url)
    assert_clear_error(cli("alerts", "dispatch", "--config", str(config), "--json"), fragment)
    env_cli = make_cli(sqlite_url, env={"POLICY_CANARY_ALERT_WEBHOOK_URL": url})
    run = env_cli("controller", "--once", "--json")
    assert_clear_error(run, "POLICY_CANARY_ALERT_WEBHOOK_URL", fragment)


def test_a_bad_environment_setting_is_reported_as_json(sqlite_url: str) -> None:
    cli = make_cli(sqlite_url, env={"POLICY_CANARY_MAX_SPEC_BYTES": "abc"})
    error = assert_clear_error(cli("policy", "list", "--json"), "POLICY_CANARY_MAX_SPEC_BYTES")
    assert error["code"] == "invalid_input"
    assert cli("plan", "show-default", "--json").code == 0  # commands that do not need it run


@pytest.mark.parametrize("interval", ["0s", "0.01s"])
def test_loop_intervals_below_the_minimum_are_refused(
    cli: Cli, pushed: Path, interval: str
) -> None:
    run = cli("controller", "--interval", interval, "--json")
    assert_clear_error(run, "--interval", "shorter than 0.1s")
    run = cli("rollout", "status", "sa", "--watch", "--interval", interval, "--json")
    assert_clear_error(run, "--interval", "shorter than 0.1s")


def test_a_later_bootstrap_push_does_not_claim_to_be_the_first_version(
    cli: Cli, tmp_path: Path
) -> None:
    for n in (1, 2):
        (tmp_path / f"v{n}.yaml").write_text(f"prompt: {n}\n")
    assert cli("policy", "push", "sa", str(tmp_path / "v1.yaml"), "--no-bootstrap").code == 0
    second = cli("policy", "push", "sa", str(tmp_path / "v2.yaml"))
    assert "v2 is now stable (sa had no stable version)" in second.stdout
    assert "first version" not in second.stdout
    (entry,) = cli("policy", "history", "sa", "--json").json()
    assert entry["reason"] == "the policy had no stable version yet"


def test_unexpected_errors_are_one_line_with_the_traceback_only_on_request(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from policy_canary.registry import Registry

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(Registry, "policies", broken)
    run = make_cli(sqlite_url)("policy", "list", "--json")
    assert run.code == 1
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        "error: unexpected RuntimeError: boom; this is a bug in policy-canary, please report it "
        "(set POLICY_CANARY_DEBUG=1 to print the traceback)"
    ]
    assert json.loads(run.stdout)["error"]["code"] == "internal_error"
    debug = make_cli(sqlite_url, env={"POLICY_CANARY_DEBUG": "1"})("policy", "list")
    assert "Traceback" in debug.stderr
    assert "RuntimeError: boom" in debug.stderr


def test_an_argument_that_is_not_utf8_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    """A byte such as 0xff on a command line arrives as the surrogate escape '\\udcff'."""
    spec = tmp_path / "v1.yaml"
    spec.write_text("prompt: hi\n")
    cli = make_cli(sqlite_url)
    run = cli("policy", "push", "sa", str(spec), "-m", "bad \udcff byte", "--json")
    assert_clear_error(run, "not valid UTF-8 text (byte 0xff")
    assert cli("policy", "list", "--json").json() == []


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["plan", "check", "plan.yaml", "--rps", "nan"], "Invalid value for '--rps'"),
        (["policy", "push", "--json"], "Missing argument 'name'"),
        (["rollout", "status", "--json", "--watch", "--interval"], "requires an argument"),
        (["policy", "list", "--bogus"], "No such option: --bogus"),
    ],
)
def test_usage_errors_answer_in_json_under_json(
    sqlite_url: str, args: list[str], fragment: str
) -> None:
    """Issue 10 item 16: a usage error (exit 2) is an error path too; --json gets its JSON."""
    run = make_cli(sqlite_url)(*args, *([] if "--json" in args else ["--json"]))
    assert run.code == 2, (run.code, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    error = run.json()["error"]
    assert error["code"] == "usage_error"
    assert fragment in error["message"]
    assert fragment in run.stderr  # the parser's own help box still reaches people
    without = make_cli(sqlite_url)(*[a for a in args if a != "--json"])
    assert (without.code, without.stdout) == (2, "")
