"""The :class:`Registry`: register, resolve, diff, export and import policy versions."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, RowMapping, select
from sqlalchemy.exc import IntegrityError

from policy_canary.canonical import canonical_json, digest_text
from policy_canary.clock import Clock, SystemClock
from policy_canary.documents import write_text
from policy_canary.errors import ConflictError, InvalidSpecError
from policy_canary.registry._models import (
    PolicySummary,
    RegisterResult,
    ReleaseEntry,
    ReleaseKind,
    Version,
    VersionDiff,
    validate_policy_name,
)
from policy_canary.registry._queries import (
    entry_from_row,
    latest_version_row,
    lock_policy,
    move_stable,
    require_policy,
    resolve_in,
    version_from_row,
    version_row,
)
from policy_canary.registry._specfile import (
    EXPORT_FORMAT,
    check_export,
    dump_export,
    parse_spec,
    read_spec_text,
)
from policy_canary.settings import DEFAULT_MAX_SPEC_BYTES
from policy_canary.store import Store
from policy_canary.store._audit import actor_or_default, check_text, record_audit
from policy_canary.store.schema import policies, release_history, rollouts, versions

_ACTIVE = ("running", "paused")


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

        A new version of a policy that has no stable version (normally its first) becomes
        stable (kind ``bootstrap``) unless ``bootstrap=False``.
        """
        validate_policy_name(policy)
        actor = actor_or_default(author, option="--author")
        check_text(message, what="--message")
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
                return RegisterResult(version_from_row(row), created=False, became_stable=False)
            pol = conn.execute(select(policies).where(policies.c.name == policy)).mappings().first()
            if pol is None:
                conn.execute(policies.insert().values(name=policy, created_at=now))
            latest = latest_version_row(conn, policy)
            number = latest["number"] + 1 if latest else 1
            values = {
                "policy": policy,
                "digest": version_id,
                "number": number,
                "parent_digest": latest["digest"] if latest else None,
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
            version = version_from_row(values)
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
                    reason="first version of the policy"
                    if number == 1
                    else "the policy had no stable version yet",
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
        check_text(reason, what="--reason")
        who = actor_or_default(actor)
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
                actor=who,
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
                latest = latest_version_row(conn, pol["name"])
                assert latest is not None, "a policy row exists only with its first version"
                stable = None
                if pol["stable_digest"]:
                    stable = version_from_row(version_row(conn, pol["name"], pol["stable_digest"]))
                result.append(
                    PolicySummary(pol["name"], pol["created_at"], stable, version_from_row(latest))
                )
            return result

    def versions(self, policy: str) -> list[Version]:
        """Every version of ``policy``, oldest first."""
        with self.store.read() as conn:
            self._require_policy(conn, policy)
            rows = conn.execute(
                select(versions).where(versions.c.policy == policy).order_by(versions.c.number)
            ).mappings()
            return [version_from_row(row) for row in rows]

    def stable(self, policy: str) -> Version | None:
        """The stable version of ``policy`` (``None`` if it has none yet)."""
        with self.store.read() as conn:
            pol = self._require_policy(conn, policy)
            if not pol["stable_digest"]:
                return None
            return version_from_row(version_row(conn, policy, pol["stable_digest"]))

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
            return [entry_from_row(row) for row in rows]

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
        write_text(path, dump_export(document), what="export")
        return self.resolve(policy, document["id"])

    def import_version(
        self, document: Mapping[str, Any], *, source: str = "import"
    ) -> RegisterResult:
        """Register an exported version here, verifying its digest reproduces bit for bit."""
        check_export(document, source=source)
        spec = document["spec"]
        if not isinstance(spec, dict):
            raise InvalidSpecError(f"{source}: 'spec' must be a JSON object")
        actual = digest_text(canonical_json(spec))
        if actual != document["id"]:
            raise InvalidSpecError(
                f"{source}: digest mismatch: the file says {document['id']!r} but its spec "
                f"hashes to {actual!r}; the file was altered or corrupted"
            )
        return self.register(
            document["policy"],
            spec,
            message=document.get("message") or "",
            author=document.get("author") or None,
        )

    def import_file(self, path: Path) -> RegisterResult:
        """Import a file written by :meth:`export_to_file`."""
        text = read_spec_text(path, max_bytes=self.max_spec_bytes, what="version export")
        return self.import_version(parse_spec(text, source=str(path), fmt="json"), source=str(path))

    def _require_policy(self, conn: Connection, policy: str) -> RowMapping:
        return require_policy(conn, policy)
