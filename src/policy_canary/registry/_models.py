"""The registry's values: versions, release entries, summaries, diffs, names and references."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from policy_canary.canonical import loads as canonical_loads
from policy_canary.errors import InvalidNameError, NotFoundError

#: The documented charset of policy names.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class ReleaseKind(StrEnum):
    """Why the stable pointer moved."""

    BOOTSTRAP = "bootstrap"
    PROMOTION = "promotion"
    ROLLBACK = "rollback"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Version:
    """One immutable version of a policy."""

    policy: str
    id: str
    number: int
    parent_id: str | None
    author: str
    message: str
    created_at: datetime
    canonical: str

    @property
    def label(self) -> str:
        """``v3``-style label."""
        return f"v{self.number}"

    @property
    def short_id(self) -> str:
        """The first 12 hex characters of the id, enough to be unique in practice."""
        return self.id[:12]

    @property
    def spec(self) -> dict[str, Any]:
        """The spec as a fresh dict (callers may mutate their copy freely)."""
        value: dict[str, Any] = canonical_loads(self.canonical)
        return value

    @property
    def size_bytes(self) -> int:
        """Size of the canonical JSON in UTF-8 bytes."""
        return len(self.canonical.encode("utf-8"))

    def to_dict(self, *, with_spec: bool = False) -> dict[str, Any]:
        """JSON-ready metadata (and optionally the spec); part of the ``--json`` contract."""
        data: dict[str, Any] = {
            "policy": self.policy,
            "id": self.id,
            "number": self.number,
            "label": self.label,
            "parent_id": self.parent_id,
            "author": self.author,
            "message": self.message,
            "created_at": self.created_at.isoformat(),
            "size_bytes": self.size_bytes,
        }
        if with_spec:
            data["spec"] = self.spec
        return data


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """What :meth:`Registry.register` did: the version, and whether it was new."""

    version: Version
    created: bool
    became_stable: bool


@dataclass(frozen=True, slots=True)
class ReleaseEntry:
    """One move of the stable pointer."""

    seq: int
    policy: str
    from_id: str | None
    to_id: str
    kind: ReleaseKind
    actor: str
    reason: str
    at: datetime
    rollout_id: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "seq": self.seq,
            "policy": self.policy,
            "from_id": self.from_id,
            "to_id": self.to_id,
            "kind": self.kind.value,
            "actor": self.actor,
            "reason": self.reason,
            "at": self.at.isoformat(),
            "rollout_id": self.rollout_id,
        }


@dataclass(frozen=True, slots=True)
class PolicySummary:
    """A policy, its stable version and its newest version."""

    name: str
    created_at: datetime
    stable: Version | None
    latest: Version

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "stable": self.stable.to_dict() if self.stable else None,
            "latest": self.latest.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class VersionDiff:
    """The difference between two versions of a policy."""

    a: Version
    b: Version
    unified: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def summary(self) -> str:
        """One line naming the top-level sections that differ."""
        if not (self.added or self.removed or self.changed):
            return f"{self.a.label} and {self.b.label} are identical"
        parts = [
            f"{word}: {', '.join(keys)}"
            for word, keys in (
                ("changed", self.changed),
                ("added", self.added),
                ("removed", self.removed),
            )
            if keys
        ]
        return f"{self.a.label} → {self.b.label}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "summary": self.summary,
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": list(self.changed),
            "unified": self.unified,
        }


def validate_policy_name(name: str) -> str:
    """Return ``name`` if it matches :data:`NAME_PATTERN`, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidNameError(
            f"invalid policy name {name!r}: use 1-64 characters from a-z 0-9 . _ -, "
            "starting with a letter or digit (e.g. 'support-agent')"
        )
    return name


def split_ref(text: str, *, default: str = "stable") -> tuple[str, str]:
    """Split ``NAME@REF`` into ``(name, ref)``; a bare ``NAME`` means ``NAME@default``."""
    name, sep, ref = text.partition("@")
    if sep and not ref:
        raise NotFoundError(f"{text!r}: nothing after '@'; write NAME@REF, e.g. {name}@v2")
    return validate_policy_name(name), (ref if sep else default)
