"""The dispatcher: claim, send outside any transaction, record; retries with backoff.

Public names are re-exported by :mod:`policy_canary.alerts`, whose docstring describes the
delivery protocol.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, exists, func, literal, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from policy_canary.alerts._outbox import alert_from_row, routed, undelivered
from policy_canary.alerts._sinks import AlertSink, DeliveryError, HttpSink
from policy_canary.alerts._types import Alert, DeliveryStatus
from policy_canary.clock import Clock, SystemClock, exponential_backoff
from policy_canary.errors import InputError
from policy_canary.store import Store
from policy_canary.store.schema import alert_deliveries, alerts

DEFAULT_BASE_BACKOFF = timedelta(seconds=10)
DEFAULT_MAX_BACKOFF = timedelta(minutes=30)
#: How long a claimed delivery is reserved; after that a crashed sender's claim is retried.
DEFAULT_CLAIM_TIMEOUT = timedelta(minutes=5)
#: After this many failed attempts a delivery shows as ``failing`` (and is still retried).
DEFAULT_FAILING_AFTER = 3
#: Each retry waits between (1 - JITTER) and 1 times its exponential step.
JITTER = 0.2
_ERROR_MAX = 1000

_log = logging.getLogger("policy_canary.alerts")
_d = alert_deliveries


def retry_delay(
    attempts: int, *, key: str, sink: str, base: timedelta, cap: timedelta
) -> timedelta:
    """How long to wait after the ``attempts``-th failed attempt before the next one.

    ``min(cap, base * 2**(attempts - 1))`` shortened by a jitter of up to :data:`JITTER` of
    itself. The jitter is a hash of (key, sink, attempts), not a random draw, so many alerts
    failing together still spread out while every schedule is exactly reproducible.
    """
    if attempts < 1:
        raise ValueError("retry_delay counts failed attempts from 1")
    # In float seconds: 2**attempts grows past what timedelta can hold.
    step = exponential_backoff(attempts - 1, first=base.total_seconds(), cap=cap.total_seconds())
    seed = hashlib.sha256(f"{key}\0{sink}\0{attempts}".encode()).digest()
    fraction = int.from_bytes(seed[:8], "big") / 2**64
    return timedelta(microseconds=round(step * (1 - JITTER * fraction) * 1_000_000))


@dataclass(frozen=True, slots=True)
class DispatchReport:
    """What one dispatcher pass did.

    ``pending`` counts deliveries still owed to the configured sinks after the pass (waiting
    for a retry included); ``unconfigured`` counts deliveries owed to sinks this dispatcher
    does not have (a sink removed from the configuration): they stay listed as pending.
    """

    delivered: int
    failed: int
    pending: int
    unconfigured: int = 0

    def to_dict(self) -> dict[str, int]:
        """Return the JSON-ready form (part of ``alerts dispatch --json``)."""
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "pending": self.pending,
            "unconfigured": self.unconfigured,
        }


@dataclass(frozen=True, slots=True)
class _Claim:
    alert: Alert
    sink: AlertSink
    attempts: int


class Dispatcher:
    """Delivers the outbox: every alert to every sink, with retries and backoff.

    Call :meth:`dispatch_once` from a loop (the controller does) or a cron job
    (``policy-canary alerts dispatch``). Several dispatchers may run at once: each delivery
    is claimed by one of them. An alert reaches a sink added later only if it is still
    pending somewhere, so a new sink does not replay history.
    """

    def __init__(
        self,
        store: Store,
        sinks: Sequence[AlertSink],
        *,
        clock: Clock | None = None,
        max_backoff: timedelta = DEFAULT_MAX_BACKOFF,
        base_backoff: timedelta = DEFAULT_BASE_BACKOFF,
        claim_timeout: timedelta = DEFAULT_CLAIM_TIMEOUT,
        failing_after: int = DEFAULT_FAILING_AFTER,
        max_sends: int = 1000,
    ) -> None:
        names = [sink.name for sink in sinks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InputError(f"two sinks share the name {duplicates[0]!r}; names must be unique")
        if base_backoff <= timedelta(0) or max_backoff < base_backoff:
            raise InputError("backoff must satisfy 0 < base_backoff <= max_backoff")
        if claim_timeout <= timedelta(0) or failing_after < 1 or max_sends < 1:
            raise InputError("claim_timeout, failing_after and max_sends must be positive")
        slow = [
            s.name
            for s in sinks
            if isinstance(s, HttpSink) and timedelta(seconds=s.timeout) >= claim_timeout
        ]
        if slow:
            # A send that outlives its claim lets a second dispatcher send the alert again.
            raise InputError(
                f"sink {slow[0]!r} may wait longer than the claim timeout "
                f"({claim_timeout.total_seconds():g} s); lower its timeout"
            )
        self.store = store
        self.sinks: dict[str, AlertSink] = {sink.name: sink for sink in sinks}
        self.clock = clock or SystemClock()
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.claim_timeout = claim_timeout
        self.failing_after = failing_after
        self.max_sends = max_sends

    def dispatch_once(self) -> DispatchReport:
        """Send every due delivery once (at most ``max_sends``) and report the counts.

        Sink failures are recorded, never raised. If the store itself fails mid-pass, the
        :class:`~policy_canary.errors.StoreError` propagates; a delivery it left claimed is
        retried once its claim expires.
        """
        if self.sinks:
            self._route_new()
        delivered = failed = 0
        for _ in range(self.max_sends):
            claim = self._claim_next()
            if claim is None:
                break
            try:
                claim.sink.send(claim.alert)
            except Exception as exc:  # any sink failure is recorded and retried, never raised
                failed += 1
                self._record_failure(claim, exc)
            else:
                delivered += 1
                self._record_success(claim)
        pending, unconfigured = self._outstanding()
        return DispatchReport(delivered, failed, pending, unconfigured)

    def _route_new(self) -> None:
        """Create the missing delivery rows of every still-pending alert for every sink."""
        now = self.clock.now()
        unsettled = or_(~routed(alerts.c.id), undelivered(alerts.c.id))
        with self.store.begin() as conn:
            insert: Any = (
                postgresql.insert(_d) if conn.dialect.name == "postgresql" else sqlite.insert(_d)
            )
            for name in self.sinks:
                missing = select(
                    alerts.c.id,
                    literal(name),
                    literal(DeliveryStatus.PENDING.value),
                    literal(0),
                    literal(now, _d.c.next_attempt_at.type),
                    literal(now, _d.c.updated_at.type),
                ).where(
                    unsettled,
                    ~exists().where(_d.c.alert_id == alerts.c.id, _d.c.sink == name),
                )
                columns = ["alert_id", "sink", "status", "attempts", "next_attempt_at"]
                # A concurrent dispatcher may insert the same rows: skip them, don't abort.
                conn.execute(
                    insert.from_select([*columns, "updated_at"], missing).on_conflict_do_nothing()
                )

    def _claim_next(self) -> _Claim | None:
        """Claim the most overdue delivery for one of our sinks, or return None."""
        for _ in range(10):  # only a lost race with another dispatcher loops
            now = self.clock.now()
            with self.store.begin() as conn:
                row = conn.execute(
                    select(_d.c.alert_id, _d.c.sink, _d.c.status, _d.c.attempts)
                    .where(
                        _d.c.sink.in_(list(self.sinks)),
                        _d.c.status != DeliveryStatus.DELIVERED.value,
                        _d.c.next_attempt_at <= now,
                    )
                    .order_by(_d.c.next_attempt_at, _d.c.alert_id, _d.c.sink)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                claimed = conn.execute(
                    _d.update()
                    .where(
                        _d.c.alert_id == row.alert_id,
                        _d.c.sink == row.sink,
                        _d.c.status == row.status,
                        _d.c.attempts == row.attempts,
                    )
                    .values(
                        status=DeliveryStatus.SENDING.value,
                        attempts=row.attempts + 1,
                        next_attempt_at=now + self.claim_timeout,
                        updated_at=now,
                    )
                ).rowcount
                if claimed == 1:
                    alert_row = (
                        conn.execute(select(alerts).where(alerts.c.id == row.alert_id))
                        .mappings()
                        .one()
                    )
                    return _Claim(alert_from_row(alert_row), self.sinks[row.sink], row.attempts + 1)
        return None

    def _owned(self, claim: _Claim) -> Any:
        # The claimed attempt number is the compare-and-swap token: if our lease expired and
        # another dispatcher re-claimed the row, attempts moved on and our write matches nothing.
        return and_(
            _d.c.alert_id == claim.alert.id,
            _d.c.sink == claim.sink.name,
            _d.c.status == DeliveryStatus.SENDING.value,
            _d.c.attempts == claim.attempts,
        )

    def _record_success(self, claim: _Claim) -> None:
        now = self.clock.now()
        with self.store.begin() as conn:
            marked = conn.execute(
                _d.update()
                .where(self._owned(claim))
                .values(
                    status=DeliveryStatus.DELIVERED.value,
                    next_attempt_at=None,
                    last_error=None,
                    delivered_at=now,
                    updated_at=now,
                )
            ).rowcount
        if marked != 1:
            _log.warning(
                "alert %s was delivered to %s, but its claim had expired; another dispatcher "
                "owns the delivery now (the receiver can dedupe on the idempotency key)",
                claim.alert.key,
                claim.sink.name,
            )

    def _record_failure(self, claim: _Claim, exc: Exception) -> None:
        now = self.clock.now()
        detail = str(exc) or "no message"
        message = detail if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {detail}"
        message = message[:_ERROR_MAX]
        delay = retry_delay(
            claim.attempts,
            key=claim.alert.key,
            sink=claim.sink.name,
            base=self.base_backoff,
            cap=self.max_backoff,
        )
        failing = claim.attempts >= self.failing_after
        status = DeliveryStatus.FAILING if failing else DeliveryStatus.PENDING
        with self.store.begin() as conn:
            conn.execute(
                _d.update()
                .where(self._owned(claim))
                .values(
                    status=status.value,
                    next_attempt_at=now + delay,
                    last_error=message,
                    updated_at=now,
                )
            )
        _log.warning(
            "alert %s to sink %s failed (attempt %d, retry in %s): %s",
            claim.alert.key,
            claim.sink.name,
            claim.attempts,
            delay,
            message,
        )

    def _outstanding(self) -> tuple[int, int]:
        names = list(self.sinks)
        owed = _d.c.status != DeliveryStatus.DELIVERED.value
        with self.store.read() as conn:
            pending = conn.execute(
                select(func.count()).select_from(_d).where(owed, _d.c.sink.in_(names))
            ).scalar_one()
            unconfigured = conn.execute(
                select(func.count()).select_from(_d).where(owed, _d.c.sink.not_in(names))
            ).scalar_one()
            # With no sinks at all, alerts get no delivery rows; they are owed all the same.
            unrouted = conn.execute(
                select(func.count()).select_from(alerts).where(~routed(alerts.c.id))
            ).scalar_one()
        return int(pending) + int(unrouted), int(unconfigured)
