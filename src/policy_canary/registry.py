"""The policy registry: immutable content-addressed versions, a stable pointer, its history.

A version's id is the sha256 of its spec's canonical JSON (:mod:`policy_canary.canonical`).
Versions are never edited or deleted (the database refuses it too); the stable pointer moves
only together with an append-only release-history entry, in one transaction.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, RowMapping, func, select, text
from sqlalchemy.exc import IntegrityError

from policy_canary._audit import default_actor, record_audit
from policy_canary._specfile import EXPORT_FORMAT, dump_export, parse_spec, read_text
from policy_canary.canonical import canonical_json, digest_text
from policy_canary.clock import Clock, SystemClock
from policy_canary.errors import (
    AmbiguousReferenceError,
    ConflictError,
    InvalidNameError,
    InvalidSpecError,
    NotFoundError,
)
from policy_canary.settings import DEFAULT_MAX_SPEC_BYTES
from policy_canary.store import Store
from policy_canary.store._schema import policies, release_history, rollouts, versions

#: The documented charset of policy names.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_MIN_PREFIX = 6
_HEX = re.compile(r"[0-9a-f]+")
_NUMBERED = re.compile(r"v([0-9]+)")
_ACTIVE = ("running", "paused")


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
        value: dict[str, Any] = json.loads(self.canonical)
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


class Registry:
    """Versions, stable pointers and release history of every policy in one store."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        max_spec_bytes: int = DEFAULT_MAX_SPEC_BYTES,
    ) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.max_spec_bytes = max_spec_bytes

    # -- writing --------------------------------------------------------------------------

    def register(
        self,
        policy: str,
        spec: Mapping[str, Any],
        *,
        message: str = "",
        author: str | None = None,
        bootstrap: bool = True,
    ) -> RegisterResult:
        """Store ``spec`` as a version of ``policy``; identical content returns the existing one.

        The first version of a policy becomes stable (kind ``bootstrap``) unless
        ``bootstrap=False``.
        """
        validate_policy_name(policy)
        if not isinstance(spec, Mapping):
            raise InvalidSpecError(
                f"a policy spec must be a JSON object, not {type(spec).__name__}"
            )
        canonical = canonical_json(spec)
        size = len(canonical.encode("utf-8"))
        if size > self.max_spec_bytes:
            raise InvalidSpecError(
                f"the spec is {size:,} bytes of canonical JSON; the limit is "
                f"{self.max_spec_bytes:,} bytes (set POLICY_CANARY_MAX_SPEC_BYTES to change it)"
            )
        version_id = digest_text(canonical)
        actor = author or default_actor()
        for _attempt in range(5):
            try:
                return self._insert(policy, version_id, canonical, message, actor, bootstrap)
            except IntegrityError:
                # Two processes created the same new policy at once (SQLite) or a writer
                # bypassed the lock; the next attempt sees the winner's row.
                continue
        raise ConflictError(f"could not register a version of {policy!r}: too much contention")

    def _insert(
        self, policy: str, version_id: str, canonical: str, message: str, actor: str, boot: bool
    ) -> RegisterResult:
        now = self.clock.now()
        with self.store.begin() as conn:
            lock_policy(self.store, conn, policy)
            row = (
                conn.execute(
                    select(versions).where(
                        versions.c.policy == policy, versions.c.digest == version_id
                    )
                )
                .mappings()
                .first()
            )
            if row is not None:
                return RegisterResult(_version(row), created=False, became_stable=False)
            pol = conn.execute(select(policies).where(policies.c.name == policy)).mappings().first()
            if pol is None:
                conn.execute(policies.insert().values(name=policy, created_at=now))
            latest = conn.execute(
                select(versions.c.digest, versions.c.number)
                .where(versions.c.policy == policy)
                .order_by(versions.c.number.desc())
                .limit(1)
            ).first()
            number = latest.number + 1 if latest else 1
            values = {
                "policy": policy,
                "digest": version_id,
                "number": number,
                "parent_digest": latest.digest if latest else None,
                "spec": canonical,
                "size_bytes": len(canonical.encode("utf-8")),
                "author": actor,
                "message": message,
                "created_at": now,
            }
            conn.execute(versions.insert().values(**values))
            record_audit(
                conn,
                at=now,
                actor=actor,
                action="version.register",
                subject=f"{policy}@v{number}",
                reason=message,
                details={"id": version_id},
            )
            version = _version(values)
            stable = pol["stable_digest"] if pol is not None else None
            became_stable = boot and stable is None
            if became_stable:
                move_stable(
                    self.store,
                    conn,
                    policy=policy,
                    to_id=version_id,
                    kind=ReleaseKind.BOOTSTRAP,
                    actor=actor,
                    reason="first version of the policy",
                    at=now,
                )
            return RegisterResult(version, created=True, became_stable=became_stable)

    def set_stable(
        self, policy: str, ref: str, *, reason: str, actor: str | None = None
    ) -> ReleaseEntry | None:
        """Point ``policy``'s stable at ``ref`` by hand (kind ``manual``).

        Returns ``None`` when ``ref`` already is stable. Refused while a rollout is active,
        because the rollout's baseline is the current stable version.
        """
        if not reason.strip():
            raise InvalidSpecError("give a reason for moving the stable pointer (--reason)")
        target = self.resolve(policy, ref)
        now = self.clock.now()
        with self.store.begin() as conn:
            active = conn.execute(
                select(rollouts.c.id).where(
                    rollouts.c.policy == policy, rollouts.c.state.in_(_ACTIVE)
                )
            ).scalar_one_or_none()
            if active is not None:
                raise ConflictError(
                    f"policy {policy!r} has an active rollout {active}; promote, roll back "
                    "or abort it before moving the stable pointer by hand"
                )
            return move_stable(
                self.store,
                conn,
                policy=policy,
                to_id=target.id,
                kind=ReleaseKind.MANUAL,
                actor=actor or default_actor(),
                reason=reason,
                at=now,
            )

    # -- reading --------------------------------------------------------------------------

    def policies(self) -> list[PolicySummary]:
        """Every policy with its stable and newest version, by name."""
        with self.store.read() as conn:
            pols = conn.execute(select(policies).order_by(policies.c.name)).mappings().all()
            result = []
            for pol in pols:
                latest = (
                    conn.execute(
                        select(versions)
                        .where(versions.c.policy == pol["name"])
                        .order_by(versions.c.number.desc())
                        .limit(1)
                    )
                    .mappings()
                    .one()
                )
                stable = None
                if pol["stable_digest"]:
                    stable = _version(_row(conn, pol["name"], pol["stable_digest"]))
                result.append(
                    PolicySummary(pol["name"], pol["created_at"], stable, _version(latest))
                )
            return result

    def versions(self, policy: str) -> list[Version]:
        """Every version of ``policy``, oldest first."""
        with self.store.read() as conn:
            self._require_policy(conn, policy)
            rows = conn.execute(
                select(versions).where(versions.c.policy == policy).order_by(versions.c.number)
            ).mappings()
            return [_version(row) for row in rows]

    def stable(self, policy: str) -> Version | None:
        """The stable version of ``policy`` (``None`` if it has none yet)."""
        with self.store.read() as conn:
            pol = self._require_policy(conn, policy)
            if not pol["stable_digest"]:
                return None
            return _version(_row(conn, policy, pol["stable_digest"]))

    def resolve(self, policy: str, ref: str) -> Version:
        """Resolve a reference: id, unique id prefix (≥ 6 hex), ``v3``, ``stable``, ``latest``."""
        with self.store.read() as conn:
            return resolve_in(conn, policy, ref)

    def history(self, policy: str) -> list[ReleaseEntry]:
        """Every move of ``policy``'s stable pointer, oldest first."""
        with self.store.read() as conn:
            self._require_policy(conn, policy)
            rows = conn.execute(
                select(release_history)
                .where(release_history.c.policy == policy)
                .order_by(release_history.c.id)
            ).mappings()
            return [_entry(row) for row in rows]

    def diff(self, policy: str, ref_a: str, ref_b: str) -> VersionDiff:
        """Unified diff of two versions' pretty canonical JSON, plus which sections changed."""
        a, b = self.resolve(policy, ref_a), self.resolve(policy, ref_b)
        spec_a, spec_b = a.spec, b.spec
        pretty_a = canonical_json(spec_a, indent=2).splitlines(keepends=True)
        pretty_b = canonical_json(spec_b, indent=2).splitlines(keepends=True)
        unified = "".join(
            difflib.unified_diff(
                pretty_a,
                pretty_b,
                fromfile=f"{policy}@{a.label} ({a.short_id})",
                tofile=f"{policy}@{b.label} ({b.short_id})",
            )
        )
        changed = tuple(
            k
            for k in sorted(spec_a.keys() & spec_b.keys())
            if canonical_json(spec_a[k]) != canonical_json(spec_b[k])
        )
        return VersionDiff(
            a=a,
            b=b,
            unified=unified,
            added=tuple(sorted(spec_b.keys() - spec_a.keys())),
            removed=tuple(sorted(spec_a.keys() - spec_b.keys())),
            changed=changed,
        )

    # -- export / import ------------------------------------------------------------------

    def export_version(self, policy: str, ref: str) -> dict[str, Any]:
        """A self-describing document holding a version's spec, metadata and digest."""
        version = self.resolve(policy, ref)
        return {
            "format": EXPORT_FORMAT,
            "policy": version.policy,
            "id": version.id,
            "number": version.number,
            "parent_id": version.parent_id,
            "author": version.author,
            "message": version.message,
            "created_at": version.created_at.isoformat(),
            "spec": version.spec,
        }

    def export_to_file(self, policy: str, ref: str, path: Path) -> Version:
        """Write :meth:`export_version` to ``path`` and return the exported version."""
        document = self.export_version(policy, ref)
        path.write_text(dump_export(document), encoding="utf-8")
        return self.resolve(policy, document["id"])

    def import_version(
        self, document: Mapping[str, Any], *, source: str = "import"
    ) -> RegisterResult:
        """Register an exported version here, verifying its digest reproduces bit for bit."""
        if document.get("format") != EXPORT_FORMAT:
            raise InvalidSpecError(
                f"{source}: not a policy-canary version export (expected format "
                f"{EXPORT_FORMAT!r}, found {document.get('format')!r})"
            )
        missing = [k for k in ("policy", "id", "spec") if k not in document]
        if missing:
            raise InvalidSpecError(f"{source}: missing field(s) {', '.join(missing)}")
        spec = document["spec"]
        if not isinstance(spec, dict):
            raise InvalidSpecError(f"{source}: 'spec' must be a JSON object")
        actual = digest_text(canonical_json(spec))
        if actual != document["id"]:
            raise InvalidSpecError(
                f"{source}: digest mismatch: the file says {document['id']!r} but its spec "
                f"hashes to {actual!r}; the file was altered or corrupted"
            )
        message = str(document.get("message") or "")
        return self.register(
            str(document["policy"]),
            spec,
            message=message,
            author=str(document.get("author") or default_actor()),
        )

    def import_file(self, path: Path) -> RegisterResult:
        """Import a file written by :meth:`export_to_file`."""
        text = read_text(path, max_bytes=self.max_spec_bytes, what="version export")
        return self.import_version(parse_spec(text, source=str(path), fmt="json"), source=str(path))

    def _require_policy(self, conn: Connection, policy: str) -> RowMapping:
        return require_policy(conn, policy)


# -- functions other modules call inside their own transactions ---------------------------


def lock_policy(store: Store, conn: Connection, policy: str) -> None:
    """Serialise writers of one policy for the rest of the transaction.

    SQLite transactions already hold the database's write lock; PostgreSQL takes an advisory
    lock keyed by the policy name, so concurrent pushes get consecutive numbers, not retries.
    """
    if store.dialect == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"policy:{policy}"}
        )


def require_policy(conn: Connection, policy: str) -> RowMapping:
    """Return the policy's row or raise a NotFoundError listing the policies that exist."""
    validate_policy_name(policy)
    row = conn.execute(select(policies).where(policies.c.name == policy)).mappings().first()
    if row is None:
        names = conn.execute(select(policies.c.name).order_by(policies.c.name).limit(20)).scalars()
        known = ", ".join(names) or "none yet"
        raise NotFoundError(
            f"no policy named {policy!r} (policies: {known}); push one with "
            f"'policy-canary policy push {policy} FILE'"
        )
    return row


def resolve_in(conn: Connection, policy: str, ref: str) -> Version:
    """:meth:`Registry.resolve` inside the caller's transaction."""
    pol = require_policy(conn, policy)
    ref = ref.strip()
    span = _span(conn, policy)
    if ref == "stable":
        if not pol["stable_digest"]:
            raise NotFoundError(f"policy {policy!r} has no stable version yet ({span})")
        return _version(_row(conn, policy, pol["stable_digest"]))
    if ref == "latest":
        row = (
            conn.execute(
                select(versions)
                .where(versions.c.policy == policy)
                .order_by(versions.c.number.desc())
                .limit(1)
            )
            .mappings()
            .one()
        )
        return _version(row)
    numbered = _NUMBERED.fullmatch(ref)
    if numbered:
        found = (
            conn.execute(
                select(versions).where(
                    versions.c.policy == policy, versions.c.number == int(numbered.group(1))
                )
            )
            .mappings()
            .first()
        )
        if found is None:
            raise NotFoundError(f"no version {ref!r} of policy {policy!r}; it has {span}")
        return _version(found)
    lowered = ref.lower()
    if len(lowered) >= _MIN_PREFIX and _HEX.fullmatch(lowered):
        rows = (
            conn.execute(
                select(versions)
                .where(versions.c.policy == policy, versions.c.digest.startswith(lowered))
                .order_by(versions.c.number)
                .limit(10)
            )
            .mappings()
            .all()
        )
        if len(rows) == 1:
            return _version(rows[0])
        if not rows:
            raise NotFoundError(f"no version of policy {policy!r} has id {ref!r}; it has {span}")
        matches = ", ".join(f"v{r['number']} ({r['digest'][:12]})" for r in rows)
        raise AmbiguousReferenceError(
            f"{ref!r} matches several versions of {policy!r}: {matches}; give more characters"
        )
    raise NotFoundError(
        f"cannot read version reference {ref!r} of {policy!r}: use a version id or a unique "
        f"prefix of at least {_MIN_PREFIX} hex characters, vN, 'stable' or 'latest' ({span})"
    )


def move_stable(
    store: Store,
    conn: Connection,
    *,
    policy: str,
    to_id: str,
    kind: ReleaseKind,
    actor: str,
    reason: str,
    at: datetime,
    rollout_id: str | None = None,
) -> ReleaseEntry | None:
    """Move the stable pointer and append its history entry, in the caller's transaction.

    This is the only code that changes ``policies.stable_digest`` (design invariant 2).
    Returns ``None`` when ``to_id`` already is stable.
    """
    current = conn.execute(
        select(policies.c.stable_digest).where(policies.c.name == policy)
    ).scalar_one()
    if current == to_id:
        return None
    conn.execute(policies.update().where(policies.c.name == policy).values(stable_digest=to_id))
    seq = conn.execute(
        release_history.insert()
        .values(
            policy=policy,
            from_digest=current,
            to_digest=to_id,
            kind=kind.value,
            actor=actor,
            reason=reason,
            at=at,
            rollout_id=rollout_id,
        )
        .returning(release_history.c.id)
    ).scalar_one()
    record_audit(
        conn,
        at=at,
        actor=actor,
        action=f"stable.{kind.value}",
        subject=policy,
        reason=reason,
        details={"from": current, "to": to_id, "rollout_id": rollout_id},
    )
    store.bump_epoch(conn)
    return ReleaseEntry(int(seq), policy, current, to_id, kind, actor, reason, at, rollout_id)


def _span(conn: Connection, policy: str) -> str:
    low, high = conn.execute(
        select(func.min(versions.c.number), func.max(versions.c.number)).where(
            versions.c.policy == policy
        )
    ).one()
    if low is None:
        return "no versions"
    return f"v{low}" if low == high else f"v{low}..v{high}"


def _row(conn: Connection, policy: str, version_id: str) -> RowMapping:
    return (
        conn.execute(
            select(versions).where(versions.c.policy == policy, versions.c.digest == version_id)
        )
        .mappings()
        .one()
    )


def _version(row: Mapping[Any, Any]) -> Version:
    return Version(
        policy=row["policy"],
        id=row["digest"],
        number=row["number"],
        parent_id=row["parent_digest"],
        author=row["author"],
        message=row["message"],
        created_at=row["created_at"],
        canonical=row["spec"],
    )


def _entry(row: Mapping[Any, Any]) -> ReleaseEntry:
    return ReleaseEntry(
        seq=row["id"],
        policy=row["policy"],
        from_id=row["from_digest"],
        to_id=row["to_digest"],
        kind=ReleaseKind(row["kind"]),
        actor=row["actor"],
        reason=row["reason"],
        at=row["at"],
        rollout_id=row["rollout_id"],
    )
