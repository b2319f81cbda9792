"""Routed counts from remote SDKs: validated here, then stored like the direct link stores them.

A remote SDK counts its routed decisions and recorded outcomes per routing window
(``serving/_routed.py``) and sends them to ``POST /api/v1/routed`` with its flushes. Each row
is checked (fields, types, bounds, the rollout must be its policy's, a token limited to
policies may only write those) and upserted keeping the larger count, so a retried batch
changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from policy_canary.errors import InputError, NotFoundError
from policy_canary.limits import MAX_MAGNITUDE
from policy_canary.serving._routed import RoutedRow
from policy_canary.serving._splitter import BUCKETS
from policy_canary.serving._wire import ROUTED_FIELDS
from policy_canary.store import Store
from policy_canary.tokens import Permission

if TYPE_CHECKING:
    from policy_canary.server._auth import Principal
    from policy_canary.server._remote_events import KnownRefs

#: Most rows in one batch (an SDK sends one per window and share that changed).
MAX_ROUTED_ROWS = 10_000
_COUNTS = ROUTED_FIELDS[7:]


def _text(where: str, name: str, value: Any, most: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= most or "\x00" in value:
        raise InputError(f"{where}: {name} must be text of 1..{most} characters")
    return value


def _time(where: str, name: str, value: Any) -> datetime:
    try:
        at = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise InputError(f"{where}: {name} must be an ISO 8601 time with its offset")
    return at


def _row(item: Any, index: int) -> RoutedRow:
    where = f"routed[{index}]"
    if not isinstance(item, dict):
        raise InputError(f"{where}: a routed row is a JSON object")
    unknown = sorted(set(item) - set(ROUTED_FIELDS))
    if unknown:
        raise InputError(
            f"{where}: unknown field {unknown[0]!r}; a routed row has " + ", ".join(ROUTED_FIELDS)
        )
    share = item.get("traffic_bp")
    if type(share) is not int or not 0 < share <= BUCKETS:
        raise InputError(f"{where}: traffic_bp must be an integer in 1..{BUCKETS}")
    stage = item.get("stage")
    counts = []
    for name in _COUNTS:
        value = item.get(name)
        if type(value) is not int or not 0 <= value <= MAX_MAGNITUDE:
            raise InputError(f"{where}: {name} must be an integer >= 0")
        counts.append(value)
    start = _time(where, "window_start", item.get("window_start"))
    end = _time(where, "window_end", item.get("window_end"))
    if end < start:
        raise InputError(f"{where}: window_end is before window_start")
    return (
        _text(where, "policy", item.get("policy"), 200),
        _text(where, "rollout_id", item.get("rollout_id"), 40),
        _text(where, "source", item.get("source"), 40),
        start,
        end,
        share,
        None if stage is None else _text(where, "stage", stage, 64),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
    )


def routed_rows(
    items: Any, principal: Principal, store: Store, refs: KnownRefs
) -> Sequence[RoutedRow]:
    """Validate a batch of routed rows (all or none); the rows to write."""
    if not isinstance(items, list) or not items:
        raise InputError("the body needs 'routed': a non-empty list of routed rows")
    if len(items) > MAX_ROUTED_ROWS:
        raise InputError(
            f"{len(items):,} routed rows in one batch; send at most {MAX_ROUTED_ROWS:,}"
        )
    rows = [_row(item, i) for i, item in enumerate(items)]
    for policy in sorted({row[0] for row in rows}):
        principal.authorize(Permission.RECORD, policy)
    _, known = refs.check(store, set(), {row[1] for row in rows})
    for i, row in enumerate(rows):
        if known.get(row[1]) != row[0]:
            raise NotFoundError(f"routed[{i}]: policy {row[0]!r} has no rollout {row[1]!r}")
    return rows
