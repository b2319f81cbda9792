"""HTTP for the remote link: kept-alive connections per thread, failover across server URLs.

Standard library only (``http.client``), so a remote agent's cold start stays light.

Failover: every request goes first to the server that answered last (requests stick to one
replica while it works), then to the others in their listed order. A server that could not
be reached, timed out, or answered "not now" (502, 503, 504: a replica whose own database
link is down, or a proxy in front of a dead one) is *resting* for a while, doubling from
half a second up to half a minute per failure in a row, and is tried only after every
server that is not resting (so a dead or partitioned replica costs one timeout, not one per
request). When every server fails, the request fails; what the caller does then (the
refresher polls again, the flusher backs off) is the caller's pacing. A connection the
server closed while it was idle is retried once on a fresh one: every request the remote
link makes is safe to repeat (routing reads, and event batches the server stores
idempotently by decision id). When no server answers, the error is a
:class:`ServerUnavailableError`, the remote form of "the store is down".
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from policy_canary import __version__
from policy_canary.clock import exponential_backoff
from policy_canary.errors import (
    AuthenticationError,
    CanaryError,
    ConflictError,
    ErrorCode,
    InputError,
    InvalidMetricError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    StoreError,
    StoreUnavailableError,
    TooLargeError,
)

#: Problem-document codes back to the errors the library raises for them.
_ERRORS: Mapping[str, type[CanaryError]] = {
    ErrorCode.NOT_FOUND.value: NotFoundError,
    ErrorCode.AMBIGUOUS_REFERENCE.value: NotFoundError,
    ErrorCode.CONFLICT.value: ConflictError,
    ErrorCode.UNAUTHENTICATED.value: AuthenticationError,
    ErrorCode.FORBIDDEN.value: PermissionDeniedError,
    ErrorCode.TOO_LARGE.value: TooLargeError,
    ErrorCode.INVALID_METRIC.value: InvalidMetricError,
    ErrorCode.STORE_ERROR.value: StoreError,
    ErrorCode.STORE_UNAVAILABLE.value: StoreUnavailableError,
}
#: Statuses that mean "not now": the request is retried later (events stay buffered).
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Statuses that say "this replica cannot serve now; another may": the next one is tried.
FAILOVER_STATUSES = frozenset({502, 503, 504})
#: How long a failed server rests: doubling from the first to the longest, in seconds.
REST_FIRST = 0.5
REST_LONGEST = 30.0


class ServerUnavailableError(StoreUnavailableError):
    """No policy-canary server could be reached (or it answered "not now")."""


@dataclass(frozen=True, slots=True)
class Server:
    """One server URL, split for ``http.client``."""

    url: str
    https: bool
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Server:
        """``http://host:port[/prefix]``; anything else is an :class:`InputError`."""
        if not isinstance(url, str):
            raise InputError(f"a server URL must be text, e.g. 'http://host:8600'; got {url!r}")
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(
                f"{url!r} is not a server URL; give one like 'http://host:8600' or "
                "'https://canary.example.com'"
            )
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(url, parts.scheme == "https", parts.hostname, port, parts.path.rstrip("/"))


def servers(urls: str | Sequence[str]) -> list[Server]:
    """The parsed list of server URLs (at least one)."""
    listed = [urls] if isinstance(urls, str) else list(urls)
    if not listed:
        raise InputError("Canary.connect() needs at least one server URL, e.g. 'http://host:8600'")
    return [Server.parse(url) for url in listed]


def error_of(status: int, body: bytes, where: str) -> CanaryError:
    """The library error for a server's problem document (or a bare status)."""
    try:
        doc = json.loads(body)
        code, detail = str(doc.get("code", "")), str(doc.get("detail", ""))
    except (ValueError, AttributeError):
        code, detail = "", body[:200].decode("utf-8", "replace")
    message = f"{where}: {detail or f'HTTP {status}'}"
    if status in TRANSIENT_STATUSES:
        if status == 429:
            return RateLimitedError(message)
        return ServerUnavailableError(message)
    return _ERRORS.get(code, InputError)(message)


class Http:
    """Requests to the servers of ``servers``, failing over between them (module docstring).

    ``now`` (seconds, monotonic) is the clock of the resting periods; tests pass their own.
    """

    def __init__(
        self,
        servers: Sequence[Server],
        *,
        token: str | None,
        timeout: float,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = list(servers)
        self.timeout = timeout
        self.headers = {"User-Agent": f"policy-canary/{__version__} (remote)"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.current = 0  # the server that answered last
        self._now = now
        self._health = threading.Lock()
        self._failures = [0] * len(self.servers)  # failures in a row, per server
        self._resting_until = [0.0] * len(self.servers)
        self._local = threading.local()

    # -- which server next ----------------------------------------------------------------

    def order(self) -> list[int]:
        """Server indexes in the order to try: the last good one, the others, resting last."""
        count = len(self.servers)
        with self._health:
            now = self._now()
            ring = [(self.current + step) % count for step in range(count)]
            awake = [i for i in ring if self._resting_until[i] <= now]
            resting = sorted((i for i in ring if self._resting_until[i] > now),
                             key=lambda i: self._resting_until[i])  # fmt: skip
        return awake + resting

    def resting(self) -> list[str]:
        """The URLs of the servers resting after a failure (for status and logs)."""
        with self._health:
            now = self._now()
            return [s.url for s, until in zip(self.servers, self._resting_until, strict=True)
                    if until > now]  # fmt: skip

    def succeeded(self, index: int) -> None:
        """Server ``index`` answered: requests stick to it, and it rests no more."""
        with self._health:
            self.current = index
            self._failures[index] = 0
            self._resting_until[index] = 0.0

    def failed(self, index: int) -> None:
        """Server ``index`` failed: it rests, longer for each failure in a row."""
        with self._health:
            rest = exponential_backoff(self._failures[index], first=REST_FIRST, cap=REST_LONGEST)
            self._failures[index] += 1
            self._resting_until[index] = self._now() + rest

    # -- requests -------------------------------------------------------------------------

    def _connection(self, index: int) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection to server ``index``, and whether it was used before."""
        pool: dict[int, http.client.HTTPConnection] = self._local.__dict__.setdefault("pool", {})
        conn = pool.get(index)
        if conn is not None:
            return conn, True
        server = self.servers[index]
        kind = http.client.HTTPSConnection if server.https else http.client.HTTPConnection
        conn = kind(server.host, server.port, timeout=self.timeout)
        pool[index] = conn
        return conn, False

    def _drop(self, index: int) -> None:
        pool: dict[int, http.client.HTTPConnection] = self._local.__dict__.get("pool", {})
        conn = pool.pop(index, None)
        if conn is not None:
            conn.close()

    def request(
        self, method: str, path: str, *, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """(status, headers, body) from the first server that answers; else unavailable.

        A 502/503/504 moves on to the next server; when every server says so, the last
        such answer is returned (the caller maps it to :class:`ServerUnavailableError`).
        """
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        sent = {**self.headers, **(headers or {})}
        if data is not None:
            sent["Content-Type"] = "application/json"
        problems: list[str] = []
        refused: tuple[int, http.client.HTTPMessage, bytes] | None = None
        for index in self.order():
            server = self.servers[index]
            answer = None
            for conn, reused in self._attempts(index):
                try:
                    conn.request(method, server.prefix + path, body=data, headers=sent)
                    response = conn.getresponse()
                    answer = response.status, response.headers, response.read()
                except (OSError, http.client.HTTPException) as error:
                    self._drop(index)
                    if reused and not isinstance(error, TimeoutError):
                        continue  # a kept-alive connection the server had closed (or died on)
                    problems.append(f"{server.url}: {type(error).__name__}: {error}")
                break
            if answer is None:
                self.failed(index)
                continue
            if answer[0] in FAILOVER_STATUSES:
                self.failed(index)
                problems.append(f"{server.url}: HTTP {answer[0]}")
                refused = answer
                continue
            self.succeeded(index)
            return answer
        if refused is not None:
            return refused
        raise ServerUnavailableError(
            "cannot reach the policy-canary server (" + "; ".join(problems) + ")"
        )

    def _attempts(self, index: int) -> Iterator[tuple[http.client.HTTPConnection, bool]]:
        """This thread's connection to ``index``, then (if that one was stale) a fresh one."""
        for _ in (0, 1):
            yield self._connection(index)

    def json(
        self, method: str, path: str, *, body: Any = None, ok: tuple[int, ...] = (200,)
    ) -> Any:
        """The JSON answer of a request whose status is in ``ok``; else the mapped error."""
        status, _, payload = self.request(method, path, body=body)
        if status not in ok:
            raise error_of(status, payload, f"{method} {path.split('?')[0]}")
        return json.loads(payload)

    def reset(self) -> None:
        """Forget every connection of this process (a forked child's fresh start)."""
        self._local = threading.local()

    def close(self) -> None:
        """Close this thread's connections (the others close with their threads)."""
        for index in list(self._local.__dict__.get("pool", {})):
            self._drop(index)
