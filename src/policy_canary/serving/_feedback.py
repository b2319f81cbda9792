"""Late feedback counts once: the first value per decision and metric wins.

Judges and queues deliver at least once, so the same score can arrive many times, from
retries in one process or from a new process after a restart. Each decision therefore holds
at most one observation per metric (``quality``, ``metrics.<name>``): the first one stored.
The value the request recorded itself (``record(quality=...)``) comes first; later feedback
for a metric the decision already has is ignored and counted
(:attr:`IngestStats.feedback_duplicates`).

Why first, not latest: the monitors' tests are e-processes, products of bets placed on each
observation as it arrives. Retracting an observation would mean un-placing a bet whose
outcome has already moved the wealth (and possibly a decision), which the anytime-valid
guarantee does not allow; ignoring a later value keeps every past step of the test intact.

Enforced twice. In storage, each stored row carries one metric and ``feedback`` is unique on
``(decision_id, metric)`` (migration 0004), so no writer, process or restart can store a
second value. In the controller's fold (:func:`first_observations`), rows written before 0004
(several metrics per row, no ``metric``) are reduced the same way before they reach the
monitors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from policy_canary.serving._link import FeedbackRow, FeedbackWrite
from policy_canary.store.schema import events, feedback

QUALITY = "quality"
_METRIC_PREFIX = "metrics."


def observations(quality: float | None, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics one feedback (or event) carries, keyed as guardrails name them."""
    found: dict[str, Any] = {} if quality is None else {QUALITY: quality}
    for name, value in metrics.items():
        found[_METRIC_PREFIX + name] = value
    return found


def _metrics(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text and text != "{}" else {}


def insert_feedback(conn: Connection, rows: Sequence[FeedbackRow]) -> FeedbackWrite:
    """Store the first value per (decision, metric) of ``rows``; refuse unknown decisions.

    Rows verified at the call go in; the others (accepted while the store was unreachable)
    are checked against ``events`` now, after this batch's events went in. Each value becomes
    one row keyed ``(decision_id, metric)``; a value the decision's event or an earlier
    feedback already holds is not stored (``ON CONFLICT DO NOTHING``) and is counted.
    """
    decided = {
        r.decision_id: r
        for r in conn.execute(
            select(events.c.decision_id, events.c.quality, events.c.metrics).where(
                events.c.decision_id.in_({row[0] for row in rows})
            )
        )
    }
    refused = offered = 0
    claimed: set[tuple[str, str]] = set()
    values: list[dict[str, Any]] = []
    for decision_id, at, quality, metrics_text, verified, key in rows:
        event = decided.get(decision_id)
        if event is None and not verified:
            refused += 1
            continue
        held = observations(event.quality, _metrics(event.metrics)) if event else {}
        for i, (metric, value) in enumerate(observations(quality, _metrics(metrics_text)).items()):
            offered += 1
            if metric in held or (decision_id, metric) in claimed:
                continue
            claimed.add((decision_id, metric))
            values.append(_row(decision_id, at, metric, value, f"{key}/{i}"))
    stored = 0
    if values:
        insert = sqlite_insert(feedback) if conn.dialect.name == "sqlite" else pg_insert(feedback)
        # No conflict target: a repeated (decision_id, metric) and a retried batch's key
        # are both ignored.
        result = conn.execute(insert.on_conflict_do_nothing().returning(feedback.c.id), values)
        stored = len(result.all())
    return FeedbackWrite(refused=refused, duplicates=offered - stored)


def _row(decision_id: str, at: datetime, metric: str, value: Any, key: str) -> dict[str, Any]:
    is_quality = metric == QUALITY
    return {
        "decision_id": decision_id,
        "at": at,
        "metric": metric,
        "quality": value if is_quality else None,
        "metrics": "{}"
        if is_quality
        else json.dumps({metric[len(_METRIC_PREFIX) :]: value}, separators=(",", ":")),
        "key": key,
    }


#: (decision_id, quality, metrics JSON) of a stored feedback row.
StoredFeedback = tuple[str, float | None, str | None]


def first_observations(
    held: Mapping[str, tuple[float | None, str | None]],
    earlier: Iterable[StoredFeedback],
    fresh: Sequence[StoredFeedback],
) -> list[tuple[float | None, dict[str, Any]] | None]:
    """For each fresh feedback row: the values it adds to its decision, or None.

    ``held`` maps each decision of the rollout to its event's own ``(quality, metrics)``;
    ``earlier`` is the feedback already folded and ``fresh`` the new rows, both in store
    order. A metric counts once per decision, at its first appearance; a row of a decision
    not in ``held`` adds nothing.
    """
    seen = {d: set(observations(q, _metrics(m))) for d, (q, m) in held.items()}
    for decision_id, quality, metrics_text in earlier:
        if decision_id in seen:
            seen[decision_id].update(observations(quality, _metrics(metrics_text)))
    out: list[tuple[float | None, dict[str, Any]] | None] = []
    for decision_id, quality, metrics_text in fresh:
        known = seen.get(decision_id)
        new = {}
        if known is not None:
            offered = observations(quality, _metrics(metrics_text))
            new = {metric: value for metric, value in offered.items() if metric not in known}
            known.update(new)
        if not new:
            out.append(None)
            continue
        metrics = {m[len(_METRIC_PREFIX) :]: v for m, v in new.items() if m != QUALITY}
        out.append((new.get(QUALITY), metrics))
    return out
