"""Fork safety: in a forked child, every live canary renews its identity, buffer and threads.

Threads do not survive ``fork()`` and pooled connections must not be shared with the parent,
so a pre-fork server's workers (gunicorn, uWSGI) would otherwise have no flusher and mint the
parent's decision ids. Objects registered here get their ``_after_fork()`` called in the
child, right after the fork.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class Forkable(Protocol):
    """Something that renews its process-bound state in a forked child."""

    def _after_fork(self) -> None: ...


# Alive in this process; weak, so registering keeps nothing alive.
_LIVE: weakref.WeakSet[Forkable] = weakref.WeakSet()


def renew_after_fork(obj: Forkable) -> None:
    """Call ``obj._after_fork()`` in every child forked while ``obj`` is alive."""
    _LIVE.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_LIVE):
        obj._after_fork()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
