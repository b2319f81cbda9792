"""Dashboard sessions: a token exchanged for a random session id held in the server's memory.

The cookie carries only the session id (256 random bits); the token's secret stays in this
process, so every request re-checks the token (a revoked or expired token ends its sessions at
once). Sessions expire a fixed time after login, measured on the server's injectable clock.
They are per process: behind a load balancer with several replicas, pin a browser to one.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from policy_canary.clock import Clock
from policy_canary.errors import InputError

#: The session cookie's name.
COOKIE = "pc_session"
#: How long a login lasts unless the app is told otherwise.
DEFAULT_LIFETIME = timedelta(hours=8)


@dataclass(frozen=True, slots=True)
class Session:
    """One browser's login: which token, its CSRF secret, and when it ends."""

    id: str
    secret: str | None  # the token's secret (None without auth); never sent to the browser
    token: str
    csrf: str
    created_at: datetime
    expires_at: datetime


class Sessions:
    """The open sessions of one server process (bounded: the oldest go first)."""

    def __init__(
        self, *, clock: Clock, lifetime: timedelta = DEFAULT_LIFETIME, most: int = 10_000
    ) -> None:
        if lifetime <= timedelta(0):
            raise InputError(f"the session lifetime must be positive; got {lifetime}")
        self.clock = clock
        self.lifetime = lifetime
        self.most = most
        self._open: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, *, secret: str | None, token: str) -> Session:
        """Start a session for ``token`` (whose secret was just checked)."""
        now = self.clock.now()
        session = Session(
            id=secrets.token_urlsafe(32),
            secret=secret,
            token=token,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self.lifetime,
        )
        with self._lock:
            self._open[session.id] = session
            while len(self._open) > self.most:
                self._open.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id; None when unknown or expired (and then forgotten)."""
        if not session_id:
            return None
        with self._lock:
            session = self._open.get(session_id)
            if session is None:
                return None
            if session.expires_at <= self.clock.now():
                del self._open[session_id]
                return None
            return session

    def close(self, session_id: str | None) -> None:
        """End a session (logout); unknown ids are ignored."""
        if session_id:
            with self._lock:
                self._open.pop(session_id, None)
