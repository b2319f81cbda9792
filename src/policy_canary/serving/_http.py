"""HTTP for the remote link: kept-alive connections per thread, failover across server URLs.

Standard library only (``http.client``), so a remote agent's cold start stays light. Every
request tries the server that answered last, then the others in order; a connection the
server closed while it was idle is retried once on a fresh one (every request the remote
link makes is safe to repeat: routing reads, and event batches the server stores
idempotently by decision id). When no server answers, the error is a
:class:`ServerUnavailableError`, the remote form of "the store is down".
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from policy_canary import __version__
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
    """Requests to the first server of ``servers`` that answers."""

    def __init__(self, servers: Sequence[Server], *, token: str | None, timeout: float) -> None:
        self.servers = list(servers)
        self.timeout = timeout
        self.headers = {"User-Agent": f"policy-canary/{__version__} (remote)"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.current = 0  # the server that answered last
        self._local = threading.local()

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
        """(status, headers, body) from the first server that answers; else unavailable."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        sent = {**self.headers, **(headers or {})}
        if data is not None:
            sent["Content-Type"] = "application/json"
        problems: list[str] = []
        count = len(self.servers)
        for step in range(count):
            index = (self.current + step) % count
            server = self.servers[index]
            for _ in (0, 1):
                conn, reused = self._connection(index)
                try:
                    conn.request(method, server.prefix + path, body=data, headers=sent)
                    response = conn.getresponse()
                    payload = response.read()
                except (OSError, http.client.HTTPException) as error:
                    self._drop(index)
                    if reused and not isinstance(error, TimeoutError):
                        continue  # a kept-alive connection the server had closed (or died on)
                    problems.append(f"{server.url}: {type(error).__name__}: {error}")
                    break
                self.current = index
                return response.status, response.headers, payload
        raise ServerUnavailableError(
            "cannot reach the policy-canary server (" + "; ".join(problems) + ")"
        )

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
