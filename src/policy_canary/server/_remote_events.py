"""Events and feedback from remote SDKs: decided client-side, validated here, written at once.

A remote SDK (``Canary.connect``) routes locally, so its events carry the whole decision:
id, policy, arm, rollout, version digest, share, stage, scheme, stickiness and time, next to
the same outcome fields as ``record()``. Each is validated as ``record()`` validates it (the
same function, the same messages, ``events[i]:`` in front) and against the store: the
version must be one of the policy's, the rollout the policy's, the candidate arm must name
a rollout. A token limited to policies may only write those.

The batch is committed before the answer (idempotently by decision id), so a 200 means
stored: the SDK keeps the batch until then, and a server killed mid-request loses nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from policy_canary.errors import CanaryError, InputError, NotFoundError
from policy_canary.serving._link import EventRow, FeedbackRow, FeedbackWrite, Link
from policy_canary.serving._outcomes import (
    NO_FLAGS,
    metrics_json,
    outcome,
    quality_value,
    text_problem,
)
from policy_canary.serving._splitter import BUCKETS, SCHEME_VERSION
from policy_canary.store import Store
from policy_canary.store.schema import events, rollouts, versions
from policy_canary.tokens import Permission

if TYPE_CHECKING:
    from policy_canary.server._auth import Principal

#: The fields of a remote event that describe its decision (record()'s follow).
DECISION_KEYS = (
    "decision_id",
    "policy",
    "arm",
    "rollout_id",
    "version_digest",
    "stage",
    "traffic_bp",
    "scheme",
    "sticky",
    "at",
)
MAX_DECISION_ID = 40
MAX_STAGE = 200
_OUTCOME_KEYS = (
    "latency_ms",
    "error",
    "quality",
    "safety_flags",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "model",
    "metrics",
)
_ALL_KEYS = frozenset(DECISION_KEYS + _OUTCOME_KEYS)


def is_remote(item: Any) -> bool:
    """True for an event in the remote form (it names its policy)."""
    return isinstance(item, dict) and "policy" in item


class KnownRefs:
    """Versions and rollouts seen to exist (both are immutable), so a batch costs no lookup."""

    def __init__(self) -> None:
        self._versions: set[tuple[str, str]] = set()
        self._rollouts: dict[str, str] = {}
        self._lock = threading.Lock()

    def check(
        self, store: Store, wanted_versions: set[tuple[str, str]], wanted_rollouts: set[str]
    ) -> tuple[set[tuple[str, str]], dict[str, str]]:
        """The known subset of the wanted versions, and the policy of each known rollout."""
        with self._lock:
            new_versions = wanted_versions - self._versions
            new_rollouts = wanted_rollouts - set(self._rollouts)
        if new_versions or new_rollouts:
            with store.read() as conn:
                found_v: set[tuple[str, str]] = set()
                if new_versions:
                    query = select(versions.c.policy, versions.c.digest).where(
                        versions.c.digest.in_(sorted({d for _, d in new_versions}))
                    )
                    found_v = {(r.policy, r.digest) for r in conn.execute(query)}
                found_r = {}
                if new_rollouts:
                    query = select(rollouts.c.id, rollouts.c.policy).where(
                        rollouts.c.id.in_(sorted(new_rollouts))
                    )
                    found_r = {row.id: row.policy for row in conn.execute(query)}
            with self._lock:
                self._versions |= found_v
                self._rollouts.update(found_r)
        with self._lock:
            return wanted_versions & self._versions, {
                r: self._rollouts[r] for r in wanted_rollouts if r in self._rollouts
            }


def _text(where: str, name: str, value: Any, most: int) -> str:
    # The common case in one expression (plain ASCII without NUL is always storable); the
    # checks below run only to refuse with the exact message, or for non-ASCII text.
    if type(value) is str and 0 < len(value) <= most and value.isascii() and "\x00" not in value:
        return value
    if not isinstance(value, str) or not 0 < len(value) <= most:
        raise InputError(f"{where}: {name} must be text of 1..{most} characters")
    problem = text_problem(value)
    if problem:
        raise InputError(f"{where}: {name} is not allowed: {problem}")
    return value


def _at(where: str, value: Any) -> datetime:
    try:
        at = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise InputError(
            f"{where}: at must be an ISO 8601 time with its offset, e.g. 2026-01-01T00:00:00+00:00"
        )
    return at


def _row(item: Any, index: int) -> EventRow:
    """One remote event as an event row, validated like record() (no store lookups yet)."""
    where = f"events[{index}]"
    if not isinstance(item, dict):
        raise InputError(f"{where}: an event is a JSON object, got {type(item).__name__}")
    if not _ALL_KEYS.issuperset(item):
        unknown = sorted(set(item) - _ALL_KEYS)
        raise InputError(
            f"{where}: unknown field {unknown[0]!r}; a remote event has "
            + ", ".join(DECISION_KEYS + _OUTCOME_KEYS)
        )
    decision_id = _text(where, "decision_id", item.get("decision_id"), MAX_DECISION_ID)
    policy = _text(where, "policy", item.get("policy"), 200)
    arm = item.get("arm")
    if arm not in ("stable", "candidate"):
        raise InputError(f"{where}: arm must be 'stable' or 'candidate', got {arm!r}")
    rollout_id = item.get("rollout_id")
    if rollout_id is not None:
        rollout_id = _text(where, "rollout_id", rollout_id, 64)
    elif arm == "candidate":
        raise InputError(f"{where}: a candidate decision names its rollout_id")
    digest = _text(where, "version_digest", item.get("version_digest"), 64)
    stage = item.get("stage")
    if stage is not None:
        stage = _text(where, "stage", stage, MAX_STAGE)
    share = item.get("traffic_bp", 0)
    if type(share) is not int or not 0 <= share <= BUCKETS:
        raise InputError(f"{where}: traffic_bp must be an integer in 0..{BUCKETS}")
    if item.get("scheme", SCHEME_VERSION) != SCHEME_VERSION:
        raise InputError(f"{where}: scheme must be {SCHEME_VERSION}, the splitter's hash scheme")
    sticky = item.get("sticky", False)
    if type(sticky) is not bool:
        raise InputError(f"{where}: sticky must be true or false")
    at = _at(where, item.get("at"))
    flags = item.get("safety_flags", NO_FLAGS)
    if isinstance(flags, list):
        flags = tuple(flags)
    try:  # the same validation (and messages) as record()
        out = outcome(
            item.get("latency_ms"),
            item.get("error"),
            item.get("quality"),
            flags,
            item.get("cost_usd"),
            item.get("input_tokens"),
            item.get("output_tokens"),
            item.get("model"),
            item.get("metrics"),
        )
    except CanaryError as exc:
        raise type(exc)(f"{where}: {exc.message}") from None
    return (
        decision_id,
        policy,
        rollout_id,
        arm,
        digest,
        stage,
        share,
        SCHEME_VERSION,
        sticky,
        at,
        *out,
    )


def remote_rows(
    items: Sequence[Any], principal: Principal, store: Store, refs: KnownRefs
) -> list[EventRow]:
    """Validate a batch of remote events (all or none); the rows to write."""
    rows = [_row(item, i) for i, item in enumerate(items)]
    ids = [row[0] for row in rows]
    if len(set(ids)) != len(ids):
        raise InputError("the batch names a decision twice; record each decision once")
    for policy in sorted({row[1] for row in rows}):
        principal.authorize(Permission.RECORD, policy)
    wanted_v = {(row[1], row[4]) for row in rows}
    wanted_r = {row[2] for row in rows if row[2] is not None}
    known_v, known_r = refs.check(store, wanted_v, wanted_r)
    for i, row in enumerate(rows):
        if (row[1], row[4]) not in known_v:
            raise NotFoundError(
                f"events[{i}]: policy {row[1]!r} has no version {row[4][:12]!r}; send "
                "decisions made from this server's routing tables"
            )
        if row[2] is not None and known_r.get(row[2]) != row[1]:
            raise NotFoundError(f"events[{i}]: policy {row[1]!r} has no rollout {row[2]!r}")
    return rows


def write_events(link: Link, rows: Sequence[EventRow]) -> None:
    """Commit ``rows`` now; a repeated batch (the SDK retrying) is written idempotently."""
    try:
        link.write(rows, [], retry=False)
    except Exception as error:
        if not link.is_duplicate(error):
            raise
        link.write(rows, [], retry=True)


class _Batch:
    """One request's validated rows, waiting for the commit that stores them."""

    __slots__ = ("done", "error", "rows")

    def __init__(self, rows: Sequence[EventRow]) -> None:
        self.rows = rows
        self.done = False
        self.error: BaseException | None = None


class GroupCommit:
    """Commits concurrent requests' event batches together: one transaction for all waiting.

    Each transaction has a fixed cost (on SQLite a connection, its pragmas, the write lock
    and the commit; on PostgreSQL the round trips and the writer lock, see
    ``StoreLink.write``) and the store takes one writer at a time anyway, so requests that
    arrive while a commit runs do not queue for a transaction each: the next commit takes
    all of them. Every request still answers only after the commit holding its rows (or
    with that commit's error), so a 200 still means stored. Rows were validated before, and
    a repeated decision id makes the commit fall back to the idempotent form
    (:func:`write_events`), exactly as for one batch alone.
    """

    def __init__(self, link: Link) -> None:
        self._link = link
        self._changed = threading.Condition()
        self._waiting: list[_Batch] = []
        self._writing = False

    def write(self, rows: Sequence[EventRow]) -> None:
        """Store ``rows`` (with whatever else is waiting); return once committed, or raise."""
        mine = _Batch(rows)
        with self._changed:
            self._waiting.append(mine)
            while self._writing and not mine.done:
                self._changed.wait()
            if mine.done:  # another request's commit took these rows
                if mine.error is not None:
                    raise mine.error
                return
            self._writing = True
            group, self._waiting = self._waiting, []
        error: BaseException | None = None
        try:
            write_events(self._link, [row for batch in group for row in batch.rows])
        except BaseException as caught:
            error = caught
        with self._changed:
            for batch in group:
                batch.done, batch.error = True, error
            self._writing = False
            self._changed.notify_all()
        if error is not None:
            raise error


def feedback_rows(items: Any, principal: Principal, store: Store) -> list[FeedbackRow]:
    """Validate a batch of feedback by decision id (as ``Canary.feedback`` does)."""
    if not isinstance(items, list) or not items:
        raise InputError("'feedback' must be a non-empty list of feedback objects")
    rows: list[FeedbackRow] = []
    for i, item in enumerate(items):
        where = f"feedback[{i}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: feedback is a JSON object")
        unknown = sorted(set(item) - {"decision_id", "quality", "metrics", "at", "key"})
        if unknown:
            raise InputError(
                f"{where}: unknown field {unknown[0]!r}; feedback has decision_id, quality, "
                "metrics, at, key"
            )
        decision_id = _text(where, "decision_id", item.get("decision_id"), MAX_DECISION_ID)
        key = _text(where, "key", item.get("key"), 60)
        quality, metrics = item.get("quality"), item.get("metrics")
        try:
            if quality is None and not metrics:
                raise InputError("feedback needs a quality score or metrics, got neither")
            score = quality_value(quality) if quality is not None else None
            text = metrics_json(metrics)
        except CanaryError as exc:
            raise type(exc)(f"{where}: {exc.message}") from None
        rows.append((decision_id, _at(where, item.get("at")), score, text, False, key))
    with store.read() as conn:
        query = select(events.c.decision_id, events.c.policy).where(
            events.c.decision_id.in_({row[0] for row in rows})
        )
        policy_of = {row.decision_id: row.policy for row in conn.execute(query)}
    for policy in sorted(set(policy_of.values())):
        principal.authorize(Permission.RECORD, policy)
    return rows


def write_feedback(link: Link, rows: Sequence[FeedbackRow]) -> FeedbackWrite:
    """Commit feedback now: unknown decisions refused, repeats ignored (both counted)."""
    return link.write([], rows, retry=True)
