"""Tokens: the secret is shown once and stored only as a hash; roles, limits, expiry, CLI."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from typer.testing import CliRunner

from policy_canary.cli import app as cli_app
from policy_canary.clock import ManualClock
from policy_canary.errors import (
    AuthenticationError,
    ConflictError,
    InputError,
    PermissionDeniedError,
)
from policy_canary.store import Store
from policy_canary.store.schema import api_tokens, audit
from policy_canary.tokens import (
    ROLE_PERMISSIONS,
    TOKEN_PREFIX,
    Permission,
    Role,
    Tokens,
    token_digest,
)


def test_a_secret_is_prefixed_high_entropy_and_only_its_hash_is_stored(
    store: Store, clock: ManualClock
) -> None:
    created = Tokens(store, clock=clock).create("ci", role="operator", actor="alice")
    secret = created.secret
    assert secret.startswith(TOKEN_PREFIX)
    assert len(secret) - len(TOKEN_PREFIX) >= 43  # 32 random bytes, URL-safe base64
    with store.read() as conn:
        row = conn.execute(select(api_tokens)).mappings().one()
    assert row["digest"] == token_digest(secret)
    assert secret not in json.dumps(dict(row), default=str)
    assert Tokens(store, clock=clock).authenticate(secret).name == "ci"


def test_revoked_and_expired_tokens_are_refused(store: Store, clock: ManualClock) -> None:
    tokens = Tokens(store, clock=clock)
    short = tokens.create("short", role="viewer", expires=timedelta(hours=1)).secret
    gone = tokens.create("gone", role="viewer").secret
    tokens.revoke("gone", actor="bob", reason="leaked")
    with pytest.raises(AuthenticationError, match="'gone' is revoked"):
        tokens.authenticate(gone)
    assert tokens.authenticate(short).name == "short"
    clock.advance(timedelta(hours=1))
    with pytest.raises(AuthenticationError, match="'short' is expired"):
        tokens.authenticate(short)
    with pytest.raises(AuthenticationError, match="unknown token"):
        tokens.authenticate(TOKEN_PREFIX + "x" * 43)
    assert tokens.count_usable() == 0
    with store.read() as conn:
        rows = conn.execute(select(audit).order_by(audit.c.id)).mappings().all()
    assert [(r["action"], r["actor"]) for r in rows][-1] == ("token.revoke", "bob")


def test_bad_names_roles_durations_and_duplicates_are_refused(
    store: Store, clock: ManualClock
) -> None:
    tokens = Tokens(store, clock=clock)
    with pytest.raises(InputError, match="invalid token name"):
        tokens.create("Bad Name", role="viewer")
    with pytest.raises(InputError, match="unknown role 'root'; use one of viewer, agent"):
        tokens.create("x", role="root")
    with pytest.raises(InputError, match="positive duration"):
        tokens.create("x", role="viewer", expires=timedelta(0))
    tokens.create("x", role="viewer")
    with pytest.raises(ConflictError, match="already exists"):
        tokens.create("x", role="admin")
    assert [t.name for t in tokens.list()] == ["x"]


def test_roles_are_ordered_and_policy_limits_apply_to_actions(
    store: Store, clock: ManualClock
) -> None:
    order = list(Role)
    for lower, higher in itertools.pairwise(order):
        assert ROLE_PERMISSIONS[lower] < ROLE_PERMISSIONS[higher]
    tokens = Tokens(store, clock=clock)
    secret = tokens.create("bot", role="agent", policies=["support-agent"]).secret
    bot = tokens.authenticate(secret)
    bot.authorize(Permission.EVALUATE, "support-agent")
    bot.authorize(Permission.READ, "anything")
    with pytest.raises(PermissionDeniedError, match="limited to support-agent"):
        bot.authorize(Permission.EVALUATE, "billing-agent")
    with pytest.raises(PermissionDeniedError, match="needs role operator"):
        bot.authorize(Permission.PUSH, "support-agent")


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(guess=st.text(max_size=60))
def test_no_guess_authenticates(sqlite_url: str, guess: str) -> None:
    store = Store.open(sqlite_url)
    try:
        tokens = Tokens(store)
        if not tokens.list():
            tokens.create("real", role="admin")
        with pytest.raises(AuthenticationError):
            tokens.authenticate(TOKEN_PREFIX + guess)
        with pytest.raises(AuthenticationError):
            tokens.authenticate(guess)
    finally:
        store.close()


def _cli(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli_app, ["--db", url, "token", *args])
    return result.exit_code, result.stdout, result.stderr


def test_the_cli_creates_lists_and_revokes(db_url: str) -> None:
    code, out, _ = _cli(db_url, "create", "ci", "--role", "agent", "--policy", "support-agent",
                        "--expires", "30d", "--actor", "alice", "--json")  # fmt: skip
    assert code == 0
    created = json.loads(out)
    assert created["secret"].startswith("pc_")
    assert created["policies"] == ["support-agent"]
    assert created["created_by"] == "alice"
    code, out, _ = _cli(db_url, "list", "--json")
    listed = json.loads(out)
    assert [t["name"] for t in listed] == ["ci"]
    assert "secret" not in listed[0]
    assert created["secret"] not in out
    code, out, _ = _cli(db_url, "revoke", "ci", "--reason", "rotated", "--json")
    assert code == 0
    assert json.loads(out)["state"] == "revoked"
    code, human, _ = _cli(db_url, "create", "people", "--role", "viewer")
    assert code == 0
    assert "pc_" in human
    assert "shown once" in human


def test_the_cli_explains_bad_input(db_url: str) -> None:
    code, _, err = _cli(db_url, "create", "ci", "--role", "root")
    assert code == 1
    assert "unknown role 'root'" in err
    code, _, err = _cli(db_url, "create", "ci", "--role", "viewer", "--expires", "soon")
    assert code == 1
    assert "--expires" in err
    code, out, _ = _cli(db_url, "revoke", "nobody", "--json")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "not_found"
