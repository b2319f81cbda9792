"""The seam between the serving path and where its state lives.

A canary talks to its store only through a :class:`Link`: load routing tables, write
batches of events and feedback, check a decision id, prune, listen for changes. The direct
link (``_direct.py``, SQLAlchemy) is the store itself; a remote link would be a server. The
gate, the buffer and the refresher are the same whichever link they use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from policy_canary.errors import InputError

if TYPE_CHECKING:
    from policy_canary.serving._routed import RoutedRow
    from policy_canary.serving._routing import RouteTable, SpecCache

#: One event as the buffer holds it: the values of ``EVENT_COLUMNS`` in order.
EventRow = tuple[Any, ...]
#: (decision_id, at, quality, metrics JSON, verified, key): ``verified`` is False when the
#: decision could not be looked up at the call (store down) and must be checked at flush.
FeedbackRow = tuple[str, datetime, float | None, str, bool, str]


@dataclass(frozen=True, slots=True)
class FeedbackWrite:
    """What one batch of feedback came to: calls refused, and values ignored as repeats."""

    refused: int = 0
    duplicates: int = 0


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :meth:`Canary.prune` deleted: rows older than ``cutoff``."""

    cutoff: datetime
    events: int
    feedback: int
    routed: int = 0


def checked_retention(retention: object) -> timedelta:
    """``retention`` if it is a positive timedelta; anything else is refused, not reinterpreted.

    A negative window would put the cutoff in the future (deleting everything) and a zero one
    would delete every row as it lands, so neither is read as "the default".
    """
    if not isinstance(retention, timedelta):
        raise InputError(
            "retention must be a timedelta, e.g. timedelta(days=30); got "
            f"{type(retention).__name__}"
        )
    if retention <= timedelta(0):
        raise InputError(
            f"retention={retention!r} is not allowed: it must be a positive timedelta (rows "
            "older than it are deleted), e.g. timedelta(days=30); pass None to keep everything"
        )
    return retention


class Listener(Protocol):
    """A connection that is told when routing changed (PostgreSQL LISTEN, a server's stream)."""

    @property
    def backend_pid(self) -> int:
        """Which server connection listens (for logs)."""
        ...

    def wait(self, timeout: float) -> int | None:
        """Block up to ``timeout`` seconds; the announced epoch, or None (timeout, woken)."""
        ...

    def wake(self) -> None:
        """End a wait early (from any thread)."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


class Link(Protocol):
    """Where a canary's routing tables come from and its events go."""

    @property
    def can_listen(self) -> bool:
        """Whether :meth:`listen` is supported (otherwise changes are polled)."""
        ...

    def listen(self) -> Listener:
        """Open a listener for routing changes."""
        ...

    def read_epoch(self) -> int:
        """The routing change counter."""
        ...

    def load(
        self, names: Iterable[str], *, specs: SpecCache, known_epoch: int | None
    ) -> tuple[int, dict[str, RouteTable]]:
        """The change counter and, if it moved from ``known_epoch``, the tables of ``names``."""
        ...

    def decision_known(self, decision_id: str) -> bool | None:
        """Whether ``decision_id`` was recorded; None when that cannot be checked now."""
        ...

    def write(
        self, rows: Sequence[EventRow], fb_rows: Sequence[FeedbackRow], *, retry: bool
    ) -> FeedbackWrite:
        """Commit one batch; return what became of its feedback (refused, repeats)."""
        ...

    def write_routed(self, rows: Sequence[RoutedRow]) -> None:
        """Store routed/recorded counts per window (cumulative: the larger value is kept)."""
        ...

    def is_transient(self, error: BaseException) -> bool:
        """True when ``error`` means "cannot reach the store now": keep the batch, retry."""
        ...

    def is_duplicate(self, error: BaseException) -> bool:
        """True when a retried batch hit rows whose first commit did land."""
        ...

    def prune(self, cutoff: datetime) -> PruneResult:
        """Delete events and feedback older than ``cutoff`` that no active rollout needs."""
        ...

    def after_fork(self) -> None:
        """In a forked child: drop the parent's connections without closing them."""
        ...

    def close(self) -> None:
        """Release every connection."""
        ...
