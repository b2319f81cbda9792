"""User text reaches people as written: never parsed as rich markup, never steering the terminal.

Reasons, messages, authors, actors, names and paths are stored exactly and come back exactly in
``--json``; human output escapes markup (``[/]``, ``[ops]``) and shows control characters as
escapes (``\\x1b``), so no command can crash or lose text on what a user typed.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _cli_support import ISSUE_TEXTS, Cli, Run, make_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.markup import render

# Fragments that broke (or could break) rich: markup tags, emoji codes, escape sequences,
# backslashes before brackets, bidi overrides, carriage returns.
_FRAGMENTS = st.sampled_from(
    ["[/]", "[ops]", "[/INST]", "[bold red]", "[link=x]", ":warning:", "\\", "\\[", "[", "]",
     "\x1b[2J", "\x1b]0;pwned\x07", "\r", "\x9b31m", "\u202e", "\n", "\t", "é", "字"]
)  # fmt: skip
# Command-line arguments cannot hold NUL (or lone surrogates from a terminal).
_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
USER_TEXT = (
    st.lists(st.one_of(_FRAGMENTS, st.text(_CHARS, max_size=6)), min_size=1, max_size=6)
    .map("".join)
    .filter(lambda s: s.strip() != "" and not s.startswith("-"))
    .map(lambda s: s[:60])
)
_names = itertools.count()
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def on_terminal(text: str) -> str:
    """How people see ``text``: controls (not newlines), bidi marks and surrogates as escapes."""
    out = []
    for c in text:
        if c != "\n" and (c in _BIDI or unicodedata.category(c) in ("Cc", "Cs")):
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


@pytest.fixture
def wide_console() -> Iterator[None]:
    """A console wide enough that tables never wrap or truncate a cell."""
    from policy_canary.cli._output import console

    before = console._width
    console.width = 10_000
    yield
    console._width = before


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def assert_in_json(run: Run, text: str) -> None:
    assert run.code == 0, run.stderr
    assert any(text in s for s in _strings(run.json())), (text, run.stdout)


def assert_shown(run: Run, *texts: str) -> None:
    """Exit 0, no control character but newlines on the terminal, every text visible intact."""
    assert run.code == 0, run.stderr
    assert "Traceback" not in run.stderr
    bad = [c for c in run.stdout + run.stderr if c != "\n" and unicodedata.category(c) == "Cc"]
    assert not bad, bad
    for text in texts:
        for line in on_terminal(text).split("\n"):
            if line.strip():
                assert line.strip() in run.stdout, (line, run.stdout)


def _story(cli: Cli, tmp_path: Path, *, name: str, text: str) -> None:
    """Push with the text as message and author, roll out and back with it as reason/actor."""
    for n in (1, 2):
        spec = tmp_path / f"{name}-v{n}.yaml"
        spec.write_text(f"prompt: version {n}\n")
        pushed = cli("policy", "push", name, str(spec), "-m", text, "--author", text, "--json")
        assert_in_json(pushed, text)
    assert_in_json(cli("policy", "versions", name, "--json"), text)
    assert_shown(cli("policy", "versions", name), text)
    assert_shown(cli("policy", "show", f"{name}@v2"), text)

    started = cli("rollout", "start", name, "--candidate", "v2", "--reason", text,
                  "--actor", text, "--json")  # fmt: skip
    assert_in_json(started, text)
    assert_shown(cli("rollout", "pause", name, "--reason", text, "--actor", text))
    assert_shown(cli("rollout", "status", name), text)
    assert_shown(cli("rollout", "rollback", name, "--reason", text, "--actor", text), text)
    for command in (["rollout", "status", name], ["rollout", "history", name],
                    ["incident", "list", "--policy", name], ["alerts", "list"]):  # fmt: skip
        assert_shown(cli(*command), text)
        assert_in_json(cli(*command, "--json"), text)
    (incident,) = cli("incident", "list", "--policy", name, "--json").json()
    assert_shown(cli("incident", "show", incident["id"]), text)

    manual = cli("policy", "set-stable", name, "v2", "--reason", text, "--actor", text, "--json")
    assert_in_json(manual, text)
    assert_shown(cli("policy", "history", name), text)
    assert_in_json(cli("policy", "history", name, "--json"), text)


def test_issue_texts_survive_every_command(cli: Cli, tmp_path: Path, wide_console: None) -> None:
    _story(cli, tmp_path, name="sa", text=" ".join(ISSUE_TEXTS))  # both backends


@pytest.mark.parametrize("text", ISSUE_TEXTS)
def test_each_issue_text_survives_every_command(
    sqlite_url: str, tmp_path: Path, wide_console: None, text: str
) -> None:
    _story(make_cli(sqlite_url), tmp_path, name="sa", text=text)


@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=USER_TEXT)
def test_any_user_text_is_stored_exactly_and_printed_safely(
    tmp_path: Path, wide_console: None, text: str
) -> None:
    cli = make_cli(f"sqlite:///{tmp_path}/text.db")
    _story(cli, tmp_path, name=f"sa{next(_names)}", text=text)


def test_bracketed_words_and_emoji_codes_print_as_written(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "v1.yaml"
    spec.write_text("prompt: hi\n")
    cli("policy", "push", "sa", str(spec), "-m", "[ops] :warning: [link] [self_harm]")
    shown_run = cli("policy", "show", "sa")
    assert "message: [ops] :warning: [link] [self_harm]" in shown_run.stdout


def test_terminal_escapes_are_shown_not_sent(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "v1.yaml"
    spec.write_text("prompt: hi\n")
    cli("policy", "push", "sa", str(spec), "-m", "\x1b]0;pwned\x07\x1b[2J")
    out = cli("policy", "show", "sa").stdout
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "message: \\x1b]0;pwned\\x07\\x1b[2J" in out
    data = cli("policy", "show", "sa", "--json").json()
    assert data["message"] == "\x1b]0;pwned\x07\x1b[2J"


def test_json_output_escapes_c1_controls_and_keeps_the_text(cli: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "v1.yaml"
    spec.write_text("prompt: hi\n")
    cli("policy", "push", "sa", str(spec), "-m", "a\x9b31mb\u202ec")
    run = cli("policy", "show", "sa", "--json")
    assert "\x9b" not in run.stdout
    assert "\u202e" not in run.stdout
    assert json.loads(run.stdout)["message"] == "a\x9b31mb\u202ec"


def test_error_messages_with_markup_are_one_clear_line(cli: Cli) -> None:
    run = cli("policy", "show", "[/]bad name")
    assert run.code == 1
    assert "Traceback" not in run.stderr
    assert "invalid policy name '[/]bad name'" in run.stderr


@given(st.text(st.sampled_from("\\[]/=ab@#"), max_size=12) | USER_TEXT)
def test_shown_text_renders_back_to_exactly_the_printable_text(text: str) -> None:
    from policy_canary.cli._output import shown

    assert render(shown(text), emoji=False).plain == on_terminal(text)


def test_shown_escapes_markup_and_controls() -> None:
    from policy_canary.cli._output import printable, shown

    assert render(shown("[/]rb"), emoji=False).plain == "[/]rb"
    assert render(shown("\\[")).plain == "\\["  # rich.markup.escape loses this backslash
    assert printable("a\x1b[2Jb\rc\nd") == "a\\x1b[2Jb\\x0dc\nd"
    assert printable("\ud800") == "\\ud800"
