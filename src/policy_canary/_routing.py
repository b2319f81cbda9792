"""Routing tables: what a gate needs to answer ``route()`` without touching the store.

A :class:`RouteTable` is an immutable snapshot per policy. The refresher builds new tables
and swaps the gate's reference in one assignment, so ``route()`` reads a consistent table
without a lock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from policy_canary._frozen import freeze
from policy_canary.canonical import loads as canonical_loads
from policy_canary.errors import NotFoundError
from policy_canary.splitter import BUCKETS, salt_prefix, threshold
from policy_canary.store._schema import policies, rollouts, versions

#: Rollout states in which a candidate receives traffic. A paused rollout holds its current
#: share (the design's "pause"): the controller stops advancing it, but units already on the
#: candidate stay there, so users do not flip back and forth while a human looks.
SERVING_STATES = ("running", "paused")


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """A policy version as a decision reports it: id (content digest), number, parsed spec.

    ``spec`` is deeply read-only because it is shared by every request that it serves.
    """

    id: str
    number: int
    spec: Mapping[str, Any]

    @property
    def label(self) -> str:
        """The human name of the version, e.g. ``v3``."""
        return f"v{self.number}"


@dataclass(frozen=True, slots=True)
class RouteTable:
    """One policy's routing snapshot: stable version, and the active rollout if any."""

    policy: str
    stable: VersionInfo
    candidate: VersionInfo | None
    rollout_id: str | None
    rollout_state: str | None
    share_bp: int
    salt: str | None
    stage: str | None
    epoch: int
    #: SHA-256 state after ``salt || 0x00``: route() copies it and hashes only the key.
    #: (Typed Any: hashlib's hash type is private in the stubs.)
    hasher: Any = None
    #: :func:`policy_canary.splitter.threshold` of ``share_bp``.
    bound: bytes = b""


class SpecCache:
    """Parsed, frozen specs by digest: a version never changes, so each is parsed once."""

    def __init__(self) -> None:
        self._specs: dict[str, Mapping[str, Any]] = {}

    def get(self, digest: str, text: str) -> Mapping[str, Any]:
        """Return the frozen spec of version ``digest`` (stored text ``text``)."""
        spec = self._specs.get(digest)
        if spec is None:
            spec = freeze(canonical_loads(text))
            self._specs[digest] = spec
        return spec


def stage_name(plan_text: str, stage_index: int) -> str | None:
    """Return the name of stage ``stage_index`` of a stored plan, or None if it has none.

    The plan's shape belongs to the controller; the gate only needs the name for the
    decision, so anything it does not recognise yields None rather than an error.
    """
    try:
        plan = json.loads(plan_text)
    except ValueError:
        return None
    stages = plan.get("stages") if isinstance(plan, dict) else None
    if not isinstance(stages, list) or not 0 <= stage_index < len(stages):
        return None
    stage = stages[stage_index]
    name = stage.get("name") if isinstance(stage, dict) else None
    return name if isinstance(name, str) else None


def load_tables(
    conn: Connection, names: Iterable[str], *, epoch: int, specs: SpecCache
) -> dict[str, RouteTable]:
    """Read the routing tables of ``names`` in one transaction.

    Raises :class:`NotFoundError` for a policy that does not exist or has no stable version.
    """
    wanted = sorted(set(names))
    if not wanted:
        return {}
    stable_of = dict(
        conn.execute(
            select(policies.c.name, policies.c.stable_digest).where(policies.c.name.in_(wanted))
        ).all()
    )
    missing = [name for name in wanted if name not in stable_of]
    if missing:
        raise NotFoundError(
            f"no policy {missing[0]!r} in the store; register a version of it first, "
            "or check the name and the database URL"
        )
    unstable = [name for name in wanted if stable_of[name] is None]
    if unstable:
        raise NotFoundError(
            f"policy {unstable[0]!r} has no stable version yet; register or promote one"
        )
    active = {
        row.policy: row
        for row in conn.execute(
            select(
                rollouts.c.id,
                rollouts.c.policy,
                rollouts.c.candidate_digest,
                rollouts.c.state,
                rollouts.c.traffic_bp,
                rollouts.c.salt,
                rollouts.c.plan,
                rollouts.c.stage_index,
            ).where(rollouts.c.policy.in_(wanted), rollouts.c.state.in_(SERVING_STATES))
        )
    }
    keys = {(name, stable_of[name]) for name in wanted}
    keys |= {(name, row.candidate_digest) for name, row in active.items()}
    found = {
        (row.policy, row.digest): row
        for row in conn.execute(
            select(versions.c.policy, versions.c.digest, versions.c.number, versions.c.spec).where(
                versions.c.policy.in_(wanted),
                versions.c.digest.in_({digest for _, digest in keys}),
            )
        )
    }

    def info(policy: str, digest: str) -> VersionInfo:
        row = found.get((policy, digest))
        if row is None:  # the schema's foreign keys make this a corrupted store
            raise NotFoundError(f"policy {policy!r} points at unknown version {digest[:12]}")
        return VersionInfo(row.digest, row.number, specs.get(row.digest, row.spec))

    tables: dict[str, RouteTable] = {}
    for name in wanted:
        stable = info(name, stable_of[name])
        ro = active.get(name)
        if ro is None:
            tables[name] = RouteTable(name, stable, None, None, None, 0, None, None, epoch)
            continue
        share = max(0, min(int(ro.traffic_bp), BUCKETS))
        tables[name] = RouteTable(
            policy=name,
            stable=stable,
            candidate=info(name, ro.candidate_digest),
            rollout_id=ro.id,
            rollout_state=ro.state,
            share_bp=share,
            salt=ro.salt,
            stage=stage_name(ro.plan, ro.stage_index),
            epoch=epoch,
            hasher=hashlib.sha256(salt_prefix(ro.salt)),
            bound=threshold(share),
        )
    return tables
