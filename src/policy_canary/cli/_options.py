"""Option values the CLI parses itself (beyond what typer's types check)."""

from __future__ import annotations

from datetime import timedelta

from policy_canary.errors import InputError
from policy_canary.plan import format_duration, parse_duration

#: The shortest loop interval the CLI accepts: anything shorter is a busy loop that keeps a
#: core and the database busy for nothing (the controller's default is 5s).
MIN_INTERVAL = timedelta(milliseconds=100)


def parse_interval(text: str, *, option: str = "--interval") -> timedelta:
    """Parse a loop interval such as ``5s`` or ``1m``; refuse one below :data:`MIN_INTERVAL`."""
    try:
        interval = parse_duration(text)
    except ValueError as exc:
        raise InputError(f"{option}: {exc}") from None
    if interval < MIN_INTERVAL:
        raise InputError(
            f"{option} {text!r} is shorter than {format_duration(MIN_INTERVAL)}; a loop that fast "
            "only keeps the CPU and the database busy: give e.g. 5s"
        )
    return interval
