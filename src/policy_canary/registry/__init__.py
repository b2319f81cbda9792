"""The policy registry: immutable content-addressed versions, a stable pointer, its history.

A version's id is the sha256 of its spec's canonical JSON (:mod:`policy_canary.canonical`).
Versions are never edited or deleted (the database refuses it too); the stable pointer moves
only together with an append-only release-history entry, in one transaction
(:func:`move_stable`, the only code that writes it).
"""

from __future__ import annotations

from policy_canary.registry._models import (
    NAME_PATTERN,
    PolicySummary,
    RegisterResult,
    ReleaseEntry,
    ReleaseKind,
    Version,
    VersionDiff,
    split_ref,
    validate_policy_name,
)
from policy_canary.registry._queries import (
    lock_policies,
    lock_policy,
    move_stable,
    require_policy,
    resolve_in,
)
from policy_canary.registry._registry import Registry

__all__ = [
    "NAME_PATTERN",
    "PolicySummary",
    "RegisterResult",
    "Registry",
    "ReleaseEntry",
    "ReleaseKind",
    "Version",
    "VersionDiff",
    "lock_policies",
    "lock_policy",
    "move_stable",
    "require_policy",
    "resolve_in",
    "split_ref",
    "validate_policy_name",
]
