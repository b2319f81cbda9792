"""Routing tables and event rows as JSON: what a server sends a remote SDK, and back.

One module owns both directions, so the server (``server/_stream.py``) and the remote link
(``_remote.py``) cannot drift apart. A table travels as what :meth:`StoreLink.load` reads:
the stable version (id, number, spec), the rollout (id, state, share, salt, stage) and the
routing epoch. An event travels as the keyword arguments of ``Decision.record()`` plus the
decision's own fields (id, policy, arm, rollout, version digest, share, stage, time), so the
server can validate it exactly as ``record()`` did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from policy_canary.serving._link import EventRow, FeedbackRow
from policy_canary.serving._outcomes import AT_INDEX, EVENT_COLUMNS
from policy_canary.serving._routed import RoutedRow
from policy_canary.serving._routing import RouteTable, SpecCache, VersionInfo
from policy_canary.serving._splitter import BUCKETS, salt_prefix, threshold

#: Decision fields of an event on the wire, before record()'s keyword arguments.
DECISION_FIELDS = EVENT_COLUMNS[: AT_INDEX + 1]
_OUTCOME_COLUMNS = EVENT_COLUMNS[AT_INDEX + 1 :]


def _version(info: VersionInfo) -> dict[str, Any]:
    return {"id": info.id, "number": info.number, "spec": info.spec}


def table_json(table: RouteTable) -> dict[str, Any]:
    """One policy's routing table as a JSON object."""
    return {
        "policy": table.policy,
        "stable": _version(table.stable),
        "candidate": _version(table.candidate) if table.candidate else None,
        "rollout_id": table.rollout_id,
        "rollout_state": table.rollout_state,
        "share_bp": table.share_bp,
        "salt": table.salt,
        "stage": table.stage,
    }


def routing_json(epoch: int, tables: Mapping[str, RouteTable]) -> dict[str, Any]:
    """The routing document: the epoch and the tables by policy name."""
    return {"epoch": epoch, "policies": {name: table_json(t) for name, t in tables.items()}}


def _info(data: Any, specs: SpecCache) -> VersionInfo:
    digest, number, spec = data["id"], data["number"], data["spec"]
    if not isinstance(digest, str) or type(number) is not int or not isinstance(spec, dict):
        raise ValueError("a version needs id (text), number (int) and spec (object)")
    return VersionInfo(digest, number, specs.get_parsed(digest, spec))


def table_from_json(data: Any, *, epoch: int, specs: SpecCache) -> RouteTable:
    """A :class:`RouteTable` from :func:`table_json`; ``ValueError``/``KeyError`` if malformed."""
    stable = _info(data["stable"], specs)
    candidate = _info(data["candidate"], specs) if data.get("candidate") else None
    share = int(data.get("share_bp") or 0)
    salt = data.get("salt")
    if candidate is None or not isinstance(salt, str) or not 0 <= share <= BUCKETS:
        share, hasher, bound = 0, None, b""
    else:
        hasher, bound = hashlib.sha256(salt_prefix(salt)), threshold(share)
    return RouteTable(
        policy=str(data["policy"]),
        stable=stable,
        candidate=candidate,
        rollout_id=data.get("rollout_id"),
        rollout_state=data.get("rollout_state"),
        share_bp=share,
        salt=salt if candidate is not None else None,
        stage=data.get("stage"),
        epoch=epoch,
        hasher=hasher,
        bound=bound,
    )


def event_json(row: EventRow) -> dict[str, Any]:
    """An event row as the remote form of ``POST /api/v1/events`` takes it."""
    item = dict(zip(EVENT_COLUMNS, row, strict=True))
    at: datetime = item["at"]
    item["at"] = at.isoformat()
    flags, count = item.pop("safety_flags"), item.pop("flag_count")
    item["safety_flags"] = json.loads(flags) if flags != "[]" else count
    metrics = item["metrics"]
    item["metrics"] = json.loads(metrics) if metrics != "{}" else None
    return {key: value for key, value in item.items() if value is not None}


def feedback_json(row: FeedbackRow) -> dict[str, Any]:
    """A feedback row as the batch form of ``POST /api/v1/feedback`` takes it."""
    decision_id, at, quality, metrics, _, key = row
    item: dict[str, Any] = {"decision_id": decision_id, "at": at.isoformat(), "key": key}
    if quality is not None:
        item["quality"] = quality
    if metrics != "{}":
        item["metrics"] = json.loads(metrics)
    return item


def outcome_fields() -> Sequence[str]:
    """The outcome columns of an event row (after ``at``)."""
    return _OUTCOME_COLUMNS


#: The fields of one routed-counts row on the wire, in :data:`RoutedRow` order.
ROUTED_FIELDS = (
    "policy",
    "rollout_id",
    "source",
    "window_start",
    "window_end",
    "traffic_bp",
    "stage",
    "routed_stable",
    "routed_candidate",
    "recorded_stable",
    "recorded_candidate",
)


def routed_json(row: RoutedRow) -> dict[str, Any]:
    """A routed-counts row as ``POST /api/v1/routed`` takes it."""
    item = dict(zip(ROUTED_FIELDS, row, strict=True))
    item["window_start"] = row[3].isoformat()
    item["window_end"] = row[4].isoformat()
    return item
