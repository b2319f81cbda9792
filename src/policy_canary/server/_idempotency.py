"""``Idempotency-Key``: a retried mutation returns the first response and never acts twice.

The first request with a key stores (actor, key, hash of method + path + body) as *pending*
before it acts, then the response it produced. A retry with the same key and request gets
the stored response; the same key with a different request is refused (409). A request that
failed with an error frees its key (nothing was done, so a retry may act). A key left pending
by a server that died between acting and storing the response stays refused: the server
cannot tell whether it acted, so it never guesses (the client checks the state, then uses a
new key). Keys are kept for :data:`KEEP_FOR`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.exc import IntegrityError

from policy_canary.clock import Clock
from policy_canary.errors import ConflictError, InputError
from policy_canary.store import Store
from policy_canary.store.schema import idempotency_keys

KEEP_FOR = timedelta(hours=24)
MAX_KEY = 200

Outcome = tuple[int, Any]


def request_hash(method: str, path: str, raw: bytes) -> str:
    """What makes two requests "the same" for an idempotency key."""
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    digest.update(raw)
    return digest.hexdigest()


class Idempotency:
    """Stored idempotency keys of one store."""

    def __init__(self, store: Store, *, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def run(
        self, *, actor: str, key: str | None, fingerprint: str, act: Callable[[], Outcome]
    ) -> tuple[Outcome, bool]:
        """Run ``act`` once per (actor, key); return its outcome and whether it was replayed."""
        if key is None:
            return act(), False
        if not 0 < len(key) <= MAX_KEY or not key.isascii() or not key.isprintable():
            raise InputError(f"Idempotency-Key must be 1-{MAX_KEY} printable ASCII characters")
        stored = self._claim(actor, key, fingerprint)
        if stored is not None:
            return stored, True
        where = and_(idempotency_keys.c.actor == actor, idempotency_keys.c.key == key)
        try:
            status, data = act()
        except BaseException:
            with self.store.begin() as conn:
                conn.execute(delete(idempotency_keys).where(where))
            raise
        with self.store.begin() as conn:
            conn.execute(
                update(idempotency_keys)
                .where(where)
                .values(status=status, response=json.dumps(data, sort_keys=True, default=str))
            )
        return (status, data), False

    def _claim(self, actor: str, key: str, fingerprint: str) -> Outcome | None:
        now = self.clock.now()
        try:
            with self.store.begin() as conn:
                conn.execute(
                    delete(idempotency_keys).where(idempotency_keys.c.created_at < now - KEEP_FOR)
                )
                row = (
                    conn.execute(
                        select(idempotency_keys).where(
                            idempotency_keys.c.actor == actor, idempotency_keys.c.key == key
                        )
                    )
                    .mappings()
                    .first()
                )
                if row is None:
                    conn.execute(
                        idempotency_keys.insert().values(
                            actor=actor, key=key, request_hash=fingerprint, created_at=now
                        )
                    )
                    return None
        except IntegrityError:
            raise ConflictError(
                f"a request with Idempotency-Key {key!r} is being handled right now; retry it "
                "in a moment to get its response"
            ) from None
        if row["request_hash"] != fingerprint:
            raise ConflictError(
                f"Idempotency-Key {key!r} was already used for a different request; use a new "
                "key for a new request"
            )
        if row["status"] is None:
            raise ConflictError(
                f"the request with Idempotency-Key {key!r} is still being handled, or the "
                "server stopped while handling it; check the state, then retry with a new key"
            )
        return int(row["status"]), json.loads(row["response"])
