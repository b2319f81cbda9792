"""Incident bundles: everything needed to reproduce a rollback, written in its transaction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from policy_canary.canonical import MAX_DEPTH, canonical_json, digest, jsonable
from policy_canary.controller._model import Action, notice
from policy_canary.controller._monitoring import Ledger
from policy_canary.controller._rows import Cursors, Rollout
from policy_canary.monitoring import Verdict
from policy_canary.registry import resolve_in
from policy_canary.store.schema import incidents, rollout_ticks

#: Identifies an exported incident file; bump the suffix on an incompatible change.
INCIDENT_FORMAT = "policy-canary.incident/1"
#: A bundle embeds both specs three levels down (``versions.candidate.spec``): a spec nested as
#: deep as a spec may be must still make a bundle, or the rollback could not be recorded.
BUNDLE_MAX_DEPTH = MAX_DEPTH + 3


def incident_id(rollout_id: str, kind: str) -> str:
    """A deterministic id: one incident per rollout and kind, however often a write retries."""
    return "inc_" + hashlib.sha256(f"{rollout_id}:{kind}".encode()).hexdigest()[:16]


def trace(conn: Connection, rollout_id: str) -> list[dict[str, Any]]:
    """The rollout's decision trace: every recorded tick, oldest first."""
    rows = conn.execute(
        select(rollout_ticks)
        .where(rollout_ticks.c.rollout_id == rollout_id)
        .order_by(rollout_ticks.c.seq)
    ).mappings()
    return [
        {
            "seq": int(r["seq"]),
            "at": r["at"].isoformat(),
            "revision": int(r["revision"]),
            "stage_index": int(r["stage_index"]),
            "traffic_bp": int(r["traffic_bp"]),
            "action": r["action"],
            "message": r["reason"],
            "verdicts": json.loads(r["verdicts"]),
            "inputs": json.loads(r["inputs"]),
            "events_through": int(r["events_through"]),
            "feedback_through": int(r["feedback_through"]),
        }
        for r in rows
    ]


def write_incident(
    conn: Connection,
    *,
    before: Rollout,
    after: Rollout,
    kind: str,
    action: Action,
    verdicts: Sequence[Verdict],
    ledger: Ledger,
    cursors: Cursors,
    at: datetime,
) -> str:
    """Build the bundle of a rollback (after its tick is recorded) and store it; return its id."""
    ident = incident_id(after.id, kind)
    baseline = resolve_in(conn, after.policy, after.baseline_digest)
    candidate = resolve_in(conn, after.policy, after.candidate_digest)
    summary = notice(
        "incident",
        policy=after.policy,
        candidate=candidate.label,
        baseline=baseline.label,
        message=action.message,
    )
    bundle: dict[str, Any] = {
        "format": INCIDENT_FORMAT,
        "id": ident,
        "kind": kind,
        "created_at": at.isoformat(),
        "summary": summary,
        "rollout": {**after.to_dict(), "before": before.to_dict()},
        "plan": json.loads(after.plan_text),
        "plan_hash": after.plan_hash,
        "versions": {
            "baseline": {
                "id": baseline.id,
                "label": baseline.label,
                "spec": baseline.spec,
            },
            "candidate": {
                "id": candidate.id,
                "label": candidate.label,
                "spec": candidate.spec,
            },
        },
        "decision": {**action.to_dict(), "at": at.isoformat()},
        "verdicts": [v.to_dict() for v in verdicts],
        "stages": ledger.to_dict()["stages"],
        "events": {
            "first_at": ledger.first_event_at.isoformat() if ledger.first_event_at else None,
            "last_at": ledger.last_event_at.isoformat() if ledger.last_event_at else None,
            "events_through": cursors.events_through,
            "feedback_through": cursors.feedback_through,
        },
        "trace": trace(conn, after.id),
    }
    bundle = jsonable(bundle)
    conn.execute(
        incidents.insert().values(
            id=ident,
            rollout_id=after.id,
            policy=after.policy,
            created_at=at,
            kind=kind,
            summary=summary,
            bundle=canonical_json(bundle, max_depth=BUNDLE_MAX_DEPTH),
            bundle_hash=bundle_hash(bundle),
        )
    )
    return ident


def bundle_hash(bundle: Mapping[str, Any]) -> str:
    """The sha256 an incident's bundle is stored and exported with."""
    return digest(bundle, max_depth=BUNDLE_MAX_DEPTH)
