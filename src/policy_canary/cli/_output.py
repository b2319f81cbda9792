"""How the CLI talks: rich for people, ``--json`` for programs, and one error→exit-code map."""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import typer
from rich.console import Console

from policy_canary.errors import CanaryError, ErrorCode, InputError, first_line
from policy_canary.settings import Settings
from policy_canary.store import Store

#: The one place error codes become exit codes (0 ok, 1 user error, 2 usage, 3 store down).
EXIT_CODES: dict[ErrorCode, int] = {
    ErrorCode.STORE_UNAVAILABLE: 3,
    ErrorCode.STORE_ERROR: 3,
}
EXIT_USER_ERROR = 1

#: Set to 1 to log the traceback of an unexpected error (a bug) after its one-line message.
DEBUG_ENV = "POLICY_CANARY_DEBUG"

# Emoji codes off: user text such as "fix :warning: handling" must print as written.
console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)

# Characters that would steer the terminal (escape sequences, carriage returns, bidi
# overrides) or cannot be encoded at all (lone surrogates); newlines stay, tabs are shown
# as escapes too (rich would expand them into table-breaking runs of spaces).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_JSON_UNSAFE = re.compile("[\u007f-\u009f\u2028\u2029\ud800-\udfff" + "".join(_BIDI) + "]")


def _unsafe(char: str) -> bool:
    if char == "\n":
        return False
    return char in _BIDI or unicodedata.category(char) in ("Cc", "Cs")


def printable(value: object) -> str:
    """``value`` as text with control characters shown as escapes (``\\x1b``), for the terminal.

    For text that rich does not parse as markup (``Syntax``); everywhere else use :func:`shown`.
    """
    text = str(value)
    if not any(_unsafe(c) for c in text):
        return text
    return "".join(_escape_char(c) if _unsafe(c) else c for c in text)


def _escape_char(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: object) -> str:
    """User-supplied text made safe to embed in rich markup: printed exactly as written.

    Every reason, message, author, name, path, guardrail, flag and alert text a command prints
    for people goes through here: rich markup (``[ops]``, ``[/]``) is escaped so it neither
    vanishes nor crashes the command, and control characters cannot reach the terminal.
    ``--json`` output keeps the exact text (see :func:`emit_json`). Markup written right after
    the text must not depend on what precedes it: a trailing backslash would escape it.
    """
    return _MARKUP_OPEN.sub(_escape_open, printable(value))


# rich reads "[" as markup where it opens something tag-like (its own pattern, below); there
# the backslashes before it are halved and an odd one escapes the tag. Any other "\\[" in plain
# text loses its backslash. rich.markup.escape covers only the first case (it eats "\\[" and
# doubles a trailing backslash), so the escaping here handles every "[" itself.
_MARKUP_OPEN = re.compile(r"(\\*)\[")
_TAG = re.compile(r"\[[a-z#/@][^[]*?]")


def _escape_open(match: re.Match[str]) -> str:
    backslashes = match.group(1)
    if _TAG.match(match.string, match.end() - 1):
        return f"{backslashes}{backslashes}\\["  # 2n+1: n literal backslashes, tag escaped
    return f"{backslashes}\\["  # plain text: rich turns "\\[" back into "["


def exit_code_for(error: CanaryError) -> int:
    """The process exit code for an error."""
    return EXIT_CODES.get(error.code, EXIT_USER_ERROR)


@dataclass
class CliState:
    """What the root callback parsed: where the store is, and the settings.

    The environment is read when a command first needs it, inside the command's
    :func:`reporting`, so a bad variable is reported like any other error (JSON with --json).
    """

    db_option: str | None
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    _settings: Settings | None = field(default=None, repr=False)
    _store: Store | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        """The settings from the environment (raises :class:`InputError` on a bad value)."""
        if self._settings is None:
            self._settings = Settings.from_env(self.environ)
        return self._settings

    @property
    def db_url(self) -> str | None:
        """``--db``, else ``$POLICY_CANARY_DB`` (``None``: the default SQLite file)."""
        return self.db_option or self.settings.db_url

    def store(self) -> Store:
        """Open the store on first use (commands that need none never touch the database)."""
        if self._store is None:
            self._store = Store.open(self.db_url)
        return self._store

    def close(self) -> None:
        """Release the store's connections."""
        if self._store is not None:
            self._store.close()
            self._store = None


def state(ctx: typer.Context) -> CliState:
    """The :class:`CliState` of the running command."""
    obj = ctx.find_root().obj
    assert isinstance(obj, CliState), "the root callback sets ctx.obj"
    return obj


@contextmanager
def reporting(json_output: bool) -> Iterator[None]:
    """Turn a :class:`CanaryError` into one clear stderr line and the mapped exit code."""
    try:
        yield
    except CanaryError as error:
        fail(error, json_output=json_output)
    except UnicodeEncodeError as error:  # an argument in another encoding reached the store
        fail(_not_utf8(error), json_output=json_output)
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as error:  # the last resort: no traceback reaches a user
        fail_unexpected(error, json_output=json_output)


def _not_utf8(error: UnicodeEncodeError) -> InputError:
    text = error.object if isinstance(error.object, str) else ""
    char = text[error.start : error.start + 1]
    byte = f" (byte 0x{ord(char) - 0xDC00:02x})" if "\udc80" <= char <= "\udcff" else ""
    return InputError(
        f"{text[:60]!r} is not valid UTF-8 text{byte}; give arguments and files in UTF-8"
    )


def fail(error: CanaryError, *, json_output: bool) -> NoReturn:
    """Report ``error`` and exit with its code."""
    _report(error.code.value, error.message, json_output=json_output)
    raise typer.Exit(exit_code_for(error))


def fail_unexpected(error: BaseException, *, json_output: bool) -> NoReturn:
    """Report an exception no library path anticipated (a bug): one line, exit 1.

    The traceback is logged only with ``POLICY_CANARY_DEBUG=1``.
    """
    message = (
        f"unexpected {type(error).__name__}: {first_line(error)}; this is a bug in "
        f"policy-canary, please report it (set {DEBUG_ENV}=1 to print the traceback)"
    )
    _report(INTERNAL_ERROR, message, json_output=json_output)
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        trace = "".join(traceback.format_exception(error))
        err_console.print(printable(trace), markup=False, highlight=False)
    raise typer.Exit(EXIT_USER_ERROR)


#: The ``--json`` error code of :func:`fail_unexpected` (not an :class:`ErrorCode`: no library
#: error carries it).
INTERNAL_ERROR = "internal_error"
#: The ``--json`` error code of a usage error (exit 2): an unknown option, a missing argument,
#: a value the option's type refuses. Reported by the CLI's parser, not by the library.
USAGE_ERROR = "usage_error"


def emit_usage_error(message: str) -> None:
    """Answer a usage error in JSON on stdout; the parser prints its own help on stderr."""
    emit_json({"error": {"code": USAGE_ERROR, "message": message}})


def _report(code: str, message: str, *, json_output: bool) -> None:
    if json_output:
        emit_json({"error": {"code": code, "message": message}})
    err_console.print(f"[bold red]error:[/] {shown(message)}", highlight=False, soft_wrap=True)


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (the stable machine interface).

    Strings keep their exact text; characters that could steer a terminal or cannot be encoded
    (C1 controls, lone surrogates, bidi overrides) are written as ``\\uXXXX`` escapes, which
    every JSON parser reads back to the same text.
    """
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    sys.stdout.write(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))
    sys.stdout.write("\n")


def render(json_output: bool, data: Any, human: Callable[[], None]) -> None:
    """Emit ``data`` as JSON, or call ``human`` to print for people."""
    if json_output:
        emit_json(data)
    else:
        human()


JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
