"""Routing tables: what a gate needs to answer ``route()`` without touching the store.

A :class:`RouteTable` is an immutable snapshot per policy. The refresher has the link build
new tables (``_direct.load_tables`` for a store) and swaps the gate's reference in one
assignment, so ``route()`` reads a consistent table without a lock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policy_canary.canonical import loads as canonical_loads
from policy_canary.serving._frozen import freeze

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
    #: :func:`policy_canary.serving._splitter.threshold` of ``share_bp``.
    bound: bytes = b""
    #: The :class:`~policy_canary.serving._routed.Tally` route() counts decisions into, set by
    #: the canary when it installs the table (None: nothing counted, no candidate traffic).
    tally: Any = None


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

    def get_parsed(self, digest: str, value: Mapping[str, Any]) -> Mapping[str, Any]:
        """Return the frozen spec of version ``digest`` given as a parsed JSON object."""
        spec = self._specs.get(digest)
        if spec is None:
            spec = freeze(value)
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
