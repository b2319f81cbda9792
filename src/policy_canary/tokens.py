"""API tokens: roles, the role → permission table, and hashed secrets in the store.

A token is a name, a role and optionally the policies it is limited to. Its secret
(``pc_`` + 43 URL-safe characters = 256 random bits from :mod:`secrets`) is shown once, when it
is created; the store keeps only its SHA-256 digest. A slow password hash (bcrypt, argon2)
exists to make guessing *low-entropy* secrets expensive; a 256-bit random secret cannot be
guessed whatever the hash, so one SHA-256 is enough, and it lets a request be authenticated
by one indexed lookup of the digest (which also reveals nothing through timing: an attacker
would need a preimage of the digest to learn anything).

:data:`ROLE_PERMISSIONS` is the one place that says what each role may do; every surface
asks :meth:`TokenInfo.authorize`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import RowMapping, func, select
from sqlalchemy.exc import IntegrityError

from policy_canary.clock import Clock, SystemClock
from policy_canary.errors import (
    AuthenticationError,
    ConflictError,
    InputError,
    NotFoundError,
    PermissionDeniedError,
)
from policy_canary.registry import validate_policy_name
from policy_canary.store import Store
from policy_canary.store._audit import default_actor, record_audit
from policy_canary.store.schema import api_tokens

__all__ = [
    "POLICY_SCOPED",
    "ROLE_PERMISSIONS",
    "TOKEN_PREFIX",
    "CreatedToken",
    "Permission",
    "Role",
    "TokenInfo",
    "Tokens",
    "token_digest",
]

#: Every secret starts with this, so leaked tokens are recognisable (secret scanners, logs).
TOKEN_PREFIX = "pc_"
_SECRET_BYTES = 32  # 256 bits
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


class Role(StrEnum):
    """What a token may do, from least to most."""

    VIEWER = "viewer"
    AGENT = "agent"
    OPERATOR = "operator"
    ADMIN = "admin"


class Permission(StrEnum):
    """One kind of request a role may be allowed to make."""

    READ = "read"  # every GET, plan check, incident replay
    EVALUATE = "evaluate"  # OFREP evaluation (routing)
    RECORD = "record"  # events and feedback
    PUSH = "push"  # register versions
    ACT = "act"  # start, pause, resume, promote, roll back, abort rollouts
    SET_STABLE = "set_stable"  # move the stable pointer by hand
    IMPORT = "import"  # import exported versions
    MANAGE_TOKENS = "manage_tokens"  # create, list, revoke tokens


_VIEWER = frozenset({Permission.READ})
_AGENT = _VIEWER | {Permission.EVALUATE, Permission.RECORD}
_OPERATOR = _AGENT | {Permission.PUSH, Permission.ACT}
_ADMIN = _OPERATOR | {Permission.SET_STABLE, Permission.IMPORT, Permission.MANAGE_TOKENS}

#: The one role → permission table.
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.VIEWER: _VIEWER,
    Role.AGENT: _AGENT,
    Role.OPERATOR: _OPERATOR,
    Role.ADMIN: _ADMIN,
}

#: Permissions that a token's policy list limits; reads stay global (a viewer reads everything).
POLICY_SCOPED = frozenset(
    {Permission.EVALUATE, Permission.RECORD, Permission.PUSH, Permission.ACT, Permission.SET_STABLE}
)


def token_digest(secret: str) -> str:
    """The stored form of a secret: its SHA-256, hex."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def parse_role(value: str) -> Role:
    """``Role(value)``, or an :class:`InputError` listing the roles."""
    try:
        return Role(value)
    except ValueError:
        names = ", ".join(r.value for r in Role)
        raise InputError(f"unknown role {value!r}; use one of {names}") from None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token (never its secret)."""

    name: str
    role: Role
    policies: tuple[str, ...]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str | None

    def to_dict(self, *, now: datetime) -> dict[str, Any]:
        """JSON-ready form with its :meth:`state` at ``now`` (no secret, no digest)."""
        return {
            "name": self.name,
            "state": self.state(now),
            "role": self.role.value,
            "policies": list(self.policies),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revoked_by": self.revoked_by,
        }

    def state(self, now: datetime) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def allows(self, permission: Permission, policy: str | None = None) -> bool:
        """True when this token's role has ``permission`` (for ``policy``, if scoped)."""
        if permission not in ROLE_PERMISSIONS[self.role]:
            return False
        scoped = permission in POLICY_SCOPED and bool(self.policies)
        return not scoped or (policy is not None and policy in self.policies)

    def authorize(self, permission: Permission, policy: str | None = None) -> None:
        """Raise :class:`PermissionDeniedError` unless :meth:`allows`."""
        self.authorize_role(permission)
        if not self.allows(permission, policy):
            where = f"policy {policy!r}" if policy else "requests not naming a policy"
            raise PermissionDeniedError(
                f"token {self.name!r} is limited to {', '.join(self.policies)}; it may not "
                f"{permission.value.replace('_', ' ')} for {where}"
            )

    def authorize_role(self, permission: Permission) -> None:
        """Raise :class:`PermissionDeniedError` unless the role has ``permission`` at all
        (for requests that then only touch the token's own policies)."""
        if permission not in ROLE_PERMISSIONS[self.role]:
            needed = min(
                (r for r in Role if permission in ROLE_PERMISSIONS[r]), key=list(Role).index
            )
            raise PermissionDeniedError(
                f"token {self.name!r} has role {self.role.value}, which may not "
                f"{permission.value.replace('_', ' ')}; that needs role {needed.value} or above"
            )


@dataclass(frozen=True, slots=True)
class CreatedToken:
    """A new token and its secret: the only time the secret is available."""

    secret: str
    token: TokenInfo

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, secret included."""
        return {**self.token.to_dict(now=self.token.created_at), "secret": self.secret}


class Tokens:
    """Create, list, revoke and authenticate the API tokens of one store."""

    def __init__(self, store: Store, *, clock: Clock | None = None) -> None:
        self.store = store
        self.clock = clock or SystemClock()

    def create(
        self,
        name: str,
        *,
        role: Role | str,
        policies: Sequence[str] = (),
        expires: timedelta | None = None,
        actor: str | None = None,
    ) -> CreatedToken:
        """Create a token; the returned secret is never shown again."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InputError(
                f"invalid token name {name!r}: use 1-64 characters from a-z 0-9 . _ -, "
                "starting with a letter or digit (e.g. 'ci-deploy')"
            )
        the_role = role if isinstance(role, Role) else parse_role(role)
        limited = tuple(sorted({validate_policy_name(p) for p in policies}))
        if expires is not None and expires <= timedelta(0):
            raise InputError(f"--expires must be a positive duration, e.g. 30d; got {expires}")
        now = self.clock.now()
        who = actor or default_actor()
        secret = TOKEN_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)
        expires_at = now + expires if expires is not None else None
        try:
            with self.store.begin() as conn:
                if conn.execute(select(api_tokens.c.name).where(api_tokens.c.name == name)).first():
                    raise ConflictError(
                        f"a token named {name!r} already exists; revoke it or pick another name"
                    )
                conn.execute(
                    api_tokens.insert().values(
                        name=name,
                        role=the_role.value,
                        policies=json.dumps(list(limited)),
                        digest=token_digest(secret),
                        created_at=now,
                        created_by=who,
                        expires_at=expires_at,
                    )
                )
                record_audit(
                    conn,
                    at=now,
                    actor=who,
                    action="token.create",
                    subject=f"token:{name}",
                    details={"role": the_role.value, "policies": list(limited),
                             "expires_at": expires_at},
                )  # fmt: skip
        except IntegrityError:
            raise ConflictError(f"a token named {name!r} already exists") from None
        info = TokenInfo(name, the_role, limited, now, who, expires_at, None, None)
        return CreatedToken(secret, info)

    def list(self) -> list[TokenInfo]:
        """Every token (revoked and expired ones too), by name."""
        with self.store.read() as conn:
            rows = conn.execute(select(api_tokens).order_by(api_tokens.c.name)).mappings()
            return [_info(r) for r in rows]

    def revoke(self, name: str, *, actor: str | None = None, reason: str = "") -> TokenInfo:
        """Revoke a token at once; revoking a revoked token changes nothing."""
        now = self.clock.now()
        who = actor or default_actor()
        with self.store.begin() as conn:
            row = conn.execute(select(api_tokens).where(api_tokens.c.name == name)).mappings()
            found = row.first()
            if found is None:
                raise NotFoundError(f"no token {name!r}; list them with 'policy-canary token list'")
            if found["revoked_at"] is not None:
                return _info(found)
            conn.execute(
                api_tokens.update()
                .where(api_tokens.c.name == name)
                .values(revoked_at=now, revoked_by=who)
            )
            record_audit(
                conn, at=now, actor=who, action="token.revoke", subject=f"token:{name}",
                reason=reason,
            )  # fmt: skip
            return _info({**found, "revoked_at": now, "revoked_by": who})

    def count_usable(self) -> int:
        """How many tokens are neither revoked nor expired."""
        now = self.clock.now()
        with self.store.read() as conn:
            query = select(func.count()).where(
                api_tokens.c.revoked_at.is_(None),
                api_tokens.c.expires_at.is_(None) | (api_tokens.c.expires_at > now),
            )
            return int(conn.execute(query).scalar_one())

    def authenticate(self, secret: str | None) -> TokenInfo:
        """The token whose secret this is; :class:`AuthenticationError` if none is usable."""
        if not secret:
            raise AuthenticationError(
                "this API needs a token: send 'Authorization: Bearer pc_...' "
                "(create one with 'policy-canary token create NAME --role viewer')"
            )
        if not secret.startswith(TOKEN_PREFIX):
            raise AuthenticationError("that is not a policy-canary token (they start with 'pc_')")
        with self.store.read() as conn:
            row = (
                conn.execute(select(api_tokens).where(api_tokens.c.digest == token_digest(secret)))
                .mappings()
                .first()
            )
        if row is None:
            raise AuthenticationError("unknown token; check it, or create a new one")
        info = _info(row)
        state = info.state(self.clock.now())
        if state != "active":
            raise AuthenticationError(f"token {info.name!r} is {state}; ask an admin for a new one")
        return info


def _info(row: RowMapping | Mapping[str, Any]) -> TokenInfo:
    policies: Iterable[str] = json.loads(row["policies"])
    return TokenInfo(
        name=row["name"],
        role=Role(row["role"]),
        policies=tuple(policies),
        created_at=row["created_at"],
        created_by=row["created_by"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
    )
