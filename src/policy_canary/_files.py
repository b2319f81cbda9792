"""Reading input files with a hard size limit: the one way policy-canary reads a user's file.

``stat()`` says 0 bytes for ``/dev/zero``, a pipe or a FIFO, so a size check before reading
protects nothing. :func:`read_text` reads at most ``limit + 1`` bytes and refuses the file if
the extra byte arrived, so no input can make us hold more than its limit in memory.
"""

from __future__ import annotations

from pathlib import Path

from policy_canary.errors import InputError


def read_text(
    path: Path,
    *,
    limit: int,
    what: str,
    error: type[InputError] = InputError,
    hint: str = "",
) -> str:
    """Read ``path`` as UTF-8 text of at most ``limit`` bytes, or raise ``error`` saying why.

    ``what`` names the kind of file in messages ("spec file", "plan file" ...); ``hint`` is
    appended to the too-large message (e.g. which setting raises the limit).
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such file; check the path of the {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder; give a {what}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read this {what} ({exc.strerror or exc})") from None
    if len(raw) > limit:
        raise error(f"{path}: the {what} is larger than {limit:,} bytes, the most accepted" + hint)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path}: not UTF-8 text (byte {exc.start}); save the {what} as UTF-8"
        ) from None
