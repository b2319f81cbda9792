"""Incidents: the record of every rollback, exported as a file and replayable through decide().

A bundle holds the rollout, its frozen plan, both versions' specs and digests, the verdicts
with their evidence, per-stage aggregates per arm, the whole decision trace (each tick's
action and the inputs decide() saw) and the time range of the events. ``replay`` calls
:func:`~policy_canary.controller.decide` again on every automatic tick of the trace and
checks that it reaches the same decision at the same point.

What a file proves: ``bundle_hash`` guards against accidents only (anyone can re-hash an
edit); the envelope is checked against the hashed bundle; with ``POLICY_CANARY_INCIDENT_KEY``
set, exports carry an HMAC signature that replay verifies, which proves the file comes from
a holder of the key (see ``_seal.py``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from policy_canary.clock import utc
from policy_canary.controller._bundle import BUNDLE_MAX_DEPTH, INCIDENT_FORMAT, bundle_hash
from policy_canary.controller._decide import decide
from policy_canary.controller._model import ActionKind, RolloutSnapshot
from policy_canary.controller._seal import check_signature, envelope_problems, sign
from policy_canary.documents import load_document, read_text, write_text
from policy_canary.errors import (
    AmbiguousReferenceError,
    CanaryError,
    InputError,
    InvalidSpecError,
    NotFoundError,
    PlanError,
)
from policy_canary.limits import check_limit
from policy_canary.monitoring import Verdict
from policy_canary.plan import RolloutPlan
from policy_canary.store import Store
from policy_canary.store.schema import incidents

__all__ = ["INCIDENT_FORMAT", "Incident", "Incidents", "ReplayResult", "ReplayStep", "replay"]

#: Largest incident file ``replay`` reads.
MAX_INCIDENT_BYTES = 50_000_000


@dataclass(frozen=True, slots=True)
class Incident:
    """One stored incident and its bundle."""

    id: str
    rollout_id: str
    policy: str
    created_at: datetime
    kind: str
    summary: str
    bundle: Mapping[str, Any]
    bundle_hash: str

    def to_dict(self, *, with_bundle: bool = False) -> dict[str, Any]:
        """JSON-ready metadata (and optionally the bundle)."""
        data: dict[str, Any] = {
            "id": self.id,
            "rollout_id": self.rollout_id,
            "policy": self.policy,
            "created_at": self.created_at.isoformat(),
            "kind": self.kind,
            "summary": self.summary,
            "bundle_hash": self.bundle_hash,
        }
        if with_bundle:
            data["bundle"] = dict(self.bundle)
        return data

    def export_document(self, *, key: bytes | None = None) -> dict[str, Any]:
        """The self-describing document ``incident export`` writes, signed when ``key`` is given."""
        document: dict[str, Any] = {
            "format": INCIDENT_FORMAT,
            "incident": self.to_dict(),
            "bundle": dict(self.bundle),
            "bundle_hash": self.bundle_hash,
        }
        if key is not None:
            document["signature"] = sign(self.bundle, key)
        return document


@dataclass(frozen=True, slots=True)
class ReplayStep:
    """One automatic tick of the trace: what was recorded and what decide() says again."""

    seq: int
    at: str
    recorded: str
    replayed: str
    recorded_reason: str
    replayed_reason: str

    @property
    def matches(self) -> bool:
        """True when the replayed action and reason code equal the recorded ones."""
        return self.recorded == self.replayed and self.recorded_reason == self.replayed_reason

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "seq": self.seq,
            "at": self.at,
            "recorded": self.recorded,
            "replayed": self.replayed,
            "recorded_reason": self.recorded_reason,
            "replayed_reason": self.replayed_reason,
            "matches": self.matches,
        }


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """The verdict of a replay: ``ok`` when every step matches and the rollback lands where it did.

    ``decisive_seq`` is the tick that rolled back in the trace; ``replayed_decisive_seq`` the
    first tick at which decide() rolls back on replay (for a manual rollback, both name the
    manual step, and only the automatic ticks before it are replayed).
    """

    incident_id: str
    ok: bool
    steps: tuple[ReplayStep, ...]
    decisive_seq: int | None
    replayed_decisive_seq: int | None
    manual: bool
    problems: tuple[str, ...] = field(default_factory=tuple)
    #: ``verified`` (signature checked with the key), ``unchecked`` (signed, but no key
    #: given) or ``unsigned``; only ``verified`` shows the file is what a key holder exported.
    signature: str = "unsigned"
    #: The incident's summary, read from the hashed bundle.
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "incident_id": self.incident_id,
            "ok": self.ok,
            "signature": self.signature,
            "summary": self.summary,
            "manual": self.manual,
            "decisive_seq": self.decisive_seq,
            "replayed_decisive_seq": self.replayed_decisive_seq,
            "problems": list(self.problems),
            "steps": [s.to_dict() for s in self.steps],
        }


class Incidents:
    """Read and export the incidents of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def list(self, *, policy: str | None = None, limit: int = 100) -> list[Incident]:
        """Incidents, newest first (of ``policy`` or all)."""
        check_limit(limit)
        query = select(incidents).order_by(incidents.c.created_at.desc(), incidents.c.id)
        if policy is not None:
            query = query.where(incidents.c.policy == policy)
        with self.store.read() as conn:
            return [_incident(r) for r in conn.execute(query.limit(limit)).mappings()]

    def get(self, incident_id: str) -> Incident:
        """One incident by id or unique id prefix."""
        with self.store.read() as conn:
            rows = (
                conn.execute(
                    select(incidents).where(incidents.c.id.startswith(incident_id)).limit(5)
                )
                .mappings()
                .all()
            )
        exact = [r for r in rows if r["id"] == incident_id]
        if exact:
            return _incident(exact[0])
        if not rows or not incident_id:
            raise NotFoundError(
                f"no incident {incident_id!r}; list them with 'policy-canary incident list'"
            )
        if len(rows) > 1:
            ids = ", ".join(r["id"] for r in rows)
            raise AmbiguousReferenceError(f"{incident_id!r} matches incidents {ids}; give more")
        return _incident(rows[0])

    def export(self, incident_id: str, path: Path, *, key: bytes | None = None) -> Incident:
        """Write the incident's export document to ``path`` (signed with ``key``, if given)."""
        incident = self.get(incident_id)
        document = json.dumps(
            incident.export_document(key=key), indent=2, sort_keys=True, ensure_ascii=False
        )
        write_text(path, document + "\n", what="incident export")
        return incident


def replay_file(path: Path, *, key: bytes | None = None) -> ReplayResult:
    """Read an exported incident file and :func:`replay` it (verifying it with ``key``)."""
    text = read_text(path, limit=MAX_INCIDENT_BYTES, what="incident file")
    document = load_document(text, source=str(path), fmt="json").value
    if not isinstance(document, Mapping):
        raise InputError(f"{path}: not an incident export (expected a JSON object)")
    return replay(document, source=str(path), key=key)


def replay(
    document: Mapping[str, Any], *, source: str = "incident", key: bytes | None = None
) -> ReplayResult:
    """Re-run decide() on an exported incident's trace and compare with what was recorded.

    With ``key``, the export's signature must verify (a missing or wrong one is refused).
    """
    bundle, plan, trace, problems, signature = _read_export(document, source, key)
    run = _Replay()
    for entry in trace:
        run.step(plan, entry)
    problems += run.problems
    decisive, replayed_decisive = run.decisive, run.replayed_decisive
    if run.manual:
        replayed_decisive = decisive
    if decisive is None:
        problems.append("the trace records no rollback")
    elif replayed_decisive != decisive:
        problems.append(
            f"the rollback was recorded at tick {decisive} but decide() rolls back at "
            f"{'tick ' + str(replayed_decisive) if replayed_decisive else 'no tick'}"
        )
    return ReplayResult(
        incident_id=str(bundle.get("id", "?")),
        ok=not problems,
        steps=tuple(run.steps),
        decisive_seq=decisive,
        replayed_decisive_seq=replayed_decisive,
        manual=run.manual,
        problems=tuple(problems),
        signature=signature,
        summary=str(bundle.get("summary", "")),
    )


def _read_export(
    document: Mapping[str, Any], source: str, key: bytes | None
) -> tuple[Mapping[str, Any], RolloutPlan, list[Any], list[str], str]:
    """The bundle, its plan and trace, the problems of its hashes, and its signature state.

    InputError if unreadable, or if ``key`` is given and the signature does not verify.
    """
    if document.get("format") != INCIDENT_FORMAT:
        raise InputError(
            f"{source}: not a policy-canary incident export (expected format "
            f"{INCIDENT_FORMAT!r}, found {document.get('format')!r})"
        )
    bundle = document.get("bundle")
    if not isinstance(bundle, Mapping):
        raise InputError(f"{source}: the export has no 'bundle' object")
    signature = check_signature(document, bundle, key, source=source)
    problems: list[str] = []
    try:
        recomputed = bundle_hash(bundle)
    except InvalidSpecError as exc:
        raise InputError(
            f"{source}: the bundle cannot be an incident export: {_bundle_problem(exc)}"
        ) from None
    if recomputed != document.get("bundle_hash"):
        problems.append(
            "the bundle does not hash to its recorded bundle_hash: the file was altered "
            "after export, so the replay below is not evidence of the original decision"
        )
    problems.extend(envelope_problems(document, bundle))
    try:
        plan = RolloutPlan.from_dict(bundle["plan"], source=f"{source}: plan")
        trace = _trace(bundle["trace"])
    except (KeyError, TypeError, ValueError, PlanError) as exc:
        raise InputError(f"{source}: the bundle is incomplete or malformed ({exc})") from None
    if plan.digest != bundle.get("plan_hash"):
        problems.append("the plan does not hash to the rollout's frozen plan_hash")
    return bundle, plan, trace, problems, signature


@dataclass
class _Replay:
    """A replay in progress: the steps so far and where the rollback was and is."""

    steps: list[ReplayStep] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    decisive: int | None = None
    replayed_decisive: int | None = None
    manual: bool = False

    def step(self, plan: RolloutPlan, entry: Mapping[str, Any]) -> None:
        """Replay one trace entry (manual and non-decision entries are only noted)."""
        inputs = entry.get("inputs", {})
        if entry.get("action") == ActionKind.ROLLBACK.value:
            self.decisive = int(entry["seq"])
            self.manual = bool(inputs.get("manual"))
        recorded = entry.get("action")
        if inputs.get("manual") or not isinstance(recorded, str) or recorded not in _ACTIONS:
            return
        try:
            snapshot = RolloutSnapshot.from_dict(inputs["snapshot"])
            verdicts = [Verdict.from_dict(v) for v in entry["verdicts"]]
            now = utc(datetime.fromisoformat(inputs["now"]))
            recorded_reason = str(inputs["decision"]["reason"])
            action = decide(plan, snapshot, verdicts, now)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, CanaryError) as exc:
            self.problems.append(f"tick {entry.get('seq')}: unreadable inputs ({exc})")
            return
        step = ReplayStep(
            seq=int(entry["seq"]),
            at=str(entry.get("at", "?")),
            recorded=str(entry["action"]),
            replayed=action.kind.value,
            recorded_reason=recorded_reason,
            replayed_reason=action.reason.value,
        )
        self.steps.append(step)
        if action.kind is ActionKind.ROLLBACK and self.replayed_decisive is None:
            self.replayed_decisive = step.seq
        if not step.matches:
            self.problems.append(
                f"tick {step.seq} at {step.at}: recorded {step.recorded} ({step.recorded_reason})"
                f" but decide() now says {step.replayed} ({step.replayed_reason})"
            )


#: The recorded action names decide() can replay (strings only: a list is no action).
_ACTIONS = frozenset(kind.value for kind in ActionKind)


def _bundle_problem(error: InvalidSpecError) -> str:
    # canonical JSON speaks of specs; an incident file is not one.
    if "nested deeper than" in error.message:
        return (
            f"it is nested deeper than {BUNDLE_MAX_DEPTH} levels, deeper than any bundle "
            "policy-canary writes; the file was altered or is not an incident export"
        )
    return error.message


def _trace(value: Any) -> list[Mapping[str, Any]]:
    """The trace's ticks, each a mapping with an integer ``seq`` and mapping ``inputs``."""
    if not isinstance(value, list):
        raise TypeError(f"'trace' must be a list of ticks, not {type(value).__name__}")
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise TypeError(f"trace[{i}] must be an object, not {type(entry).__name__}")
        seq = entry.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise TypeError(f"trace[{i}].seq must be an integer, not {seq!r}")
        if not isinstance(entry.get("inputs", {}), Mapping):
            raise TypeError(f"trace[{i}].inputs must be an object")
    return value


def _incident(row: Mapping[Any, Any]) -> Incident:
    return Incident(
        id=row["id"],
        rollout_id=row["rollout_id"],
        policy=row["policy"],
        created_at=utc(row["created_at"]),
        kind=row["kind"],
        summary=row["summary"],
        bundle=json.loads(row["bundle"]),
        bundle_hash=row["bundle_hash"],
    )
