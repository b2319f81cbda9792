"""Durations in plan files: ``30m``, ``2h``, ``1d``, ``1h30m``, or plain seconds."""

from __future__ import annotations

import math
import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(value: object) -> timedelta:
    """Read ``"30m"``, ``"2h"``, ``"1d"``, ``"1h30m"``, ``"45s"`` or a number of seconds.

    Raises :class:`ValueError` with a message saying what to write instead.
    """
    if isinstance(value, bool):
        raise ValueError("a duration must look like 30m, 2h or 1d")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration must be >= 0 seconds; got {value!r}")
        return timedelta(seconds=float(value))
    if not isinstance(value, str):
        raise ValueError(f"a duration must look like 30m, 2h or 1d; got {type(value).__name__}")
    text = value.strip().lower().replace(" ", "")
    if text in {"0", ""}:
        if text == "":
            raise ValueError("a duration must look like 30m, 2h or 1d; got an empty string")
        return timedelta(0)
    pos, seconds = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ValueError(
            f"cannot read duration {value!r}; write a number and a unit s, m, h or d "
            "(e.g. 30m, 2h, 1d, 1h30m)"
        )
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of a duration in d/h/m/s (``timedelta(minutes=90)`` → 1h30m)."""
    total = value.total_seconds()
    if total == 0:
        return "0s"
    if total != int(total):
        return f"{total:g}s"
    remaining = int(total)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
