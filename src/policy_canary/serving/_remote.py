"""The remote link: a canary whose routing tables come from, and events go to, a server.

``Canary.connect("http://host:8600", token=...)`` builds the same :class:`Canary` as
``Canary.open()`` around a :class:`RemoteLink` instead of the store's link, so the gate, the
buffer and the refresher are the same code; only the transport differs:

- routing tables arrive over ``GET /api/v1/stream`` (server-sent events), read by an
  :class:`SseListener`, which is the refresher's :class:`Listener`; ``GET /api/v1/routing``
  with ``If-None-Match`` is the poll that runs every refresh interval regardless, and the
  fallback while the stream is down;
- events and feedback are written in batches to ``POST /api/v1/events`` and
  ``/api/v1/feedback``; a batch counts as written only once the server has committed it,
  so a server that dies mid-traffic loses nothing the agent recorded (the buffer keeps and
  retries it, bounded, drops counted).

No SQLAlchemy, no database driver: the standard library only.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import ssl
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from policy_canary.errors import (
    AuthenticationError,
    ConflictError,
    InputError,
    RateLimitedError,
    StoreUnavailableError,
)
from policy_canary.serving._http import Http, Server, ServerUnavailableError, error_of, servers
from policy_canary.serving._link import EventRow, FeedbackRow, FeedbackWrite, PruneResult
from policy_canary.serving._routed import RoutedRow
from policy_canary.serving._routing import RouteTable, SpecCache
from policy_canary.serving._wire import event_json, feedback_json, routed_json, table_from_json

#: The pushed routing document: (epoch, tables as JSON by policy name).
Pushed = tuple[int, dict[str, Any]]


class RemoteLink:
    """The serving path's side of a policy-canary server (see the module docstring)."""

    def __init__(self, http: Http) -> None:
        self.http = http
        self.pushed: Pushed | None = None
        self._etags: dict[str, tuple[str, int]] = {}

    @property
    def can_listen(self) -> bool:
        """Always: the server pushes routing changes over its event stream."""
        return True

    def listen(self) -> SseListener:
        """Open the event stream (on the first server that answers)."""
        return SseListener.open(self)

    # -- routing ----------------------------------------------------------------------------

    def read_epoch(self) -> int:
        """The server's routing epoch."""
        epoch: int = self.http.json("GET", "/api/v1/routing")["epoch"]
        return epoch

    def load(
        self, names: Iterable[str], *, specs: SpecCache, known_epoch: int | None
    ) -> tuple[int, dict[str, RouteTable]]:
        """The epoch and, if it moved from ``known_epoch``, the tables of ``names``.

        From the last pushed document when it is newer and covers every name (no request),
        else one ``GET /api/v1/routing`` (a 304 when nothing moved).
        """
        wanted = sorted(set(names))
        pushed = self.pushed
        if pushed is not None and (known_epoch is None or pushed[0] > known_epoch):
            epoch, docs = pushed
            if all(name in docs for name in wanted):
                return epoch, _tables(docs, wanted, epoch, specs)
        query = urlencode([("policy", name) for name in wanted])
        path = f"/api/v1/routing?{query}" if query else "/api/v1/routing"
        known = self._etags.get(query)
        headers = {}
        if known is not None and known_epoch is not None and known[1] == known_epoch:
            headers["If-None-Match"] = known[0]
        status, answer, payload = self.http.request("GET", path, headers=headers)
        if status == 304 and known_epoch is not None:
            return known_epoch, {}
        if status != 200:
            raise error_of(status, payload, "GET /api/v1/routing")
        doc = json.loads(payload)
        epoch = int(doc["epoch"])
        if answer.get("ETag"):
            self._etags[query] = (answer["ETag"], epoch)
        if epoch == known_epoch:
            return epoch, {}
        return epoch, _tables(doc["policies"], wanted, epoch, specs)

    def decision_known(self, decision_id: str) -> bool | None:
        """Not asked per call: the server checks each feedback's decision when it is written."""
        return None

    # -- events -----------------------------------------------------------------------------

    def write(
        self, rows: Sequence[EventRow], fb_rows: Sequence[FeedbackRow], *, retry: bool
    ) -> FeedbackWrite:
        """Send one batch; it is written when the server answered 200 (it committed it)."""
        if rows:
            self.http.json("POST", "/api/v1/events", body={"events": [event_json(r) for r in rows]})
        if not fb_rows:
            return FeedbackWrite()
        done = self.http.json(
            "POST", "/api/v1/feedback", body={"feedback": [feedback_json(r) for r in fb_rows]}
        )
        return FeedbackWrite(refused=int(done["refused"]), duplicates=int(done["duplicates"]))

    def write_routed(self, rows: Sequence[RoutedRow]) -> None:
        """Send routed/recorded counts; the server keeps the larger of stored and new."""
        self.http.json("POST", "/api/v1/routed", body={"routed": [routed_json(r) for r in rows]})

    @staticmethod
    def is_transient(error: BaseException) -> bool:
        """True when the server could not be reached or said "not now": keep the batch.

        A refused token (401: revoked or expired) is "not now" too: the batch is kept, the
        outage logged and counted, until the token is replaced (a restart with a new one)
        or the buffer fills; it is no reason to drop events one by one.
        """
        return isinstance(error, StoreUnavailableError | RateLimitedError | AuthenticationError)

    @staticmethod
    def is_duplicate(error: BaseException) -> bool:
        """Never: the server stores a repeated batch idempotently (by decision id)."""
        return False

    def prune(self, cutoff: datetime) -> PruneResult:
        """Refused: old events are pruned where the store is (the server, or a direct canary)."""
        raise ConflictError(
            "a remote canary does not prune the server's store; run prune() on a canary "
            "opened on the database (Canary.open), e.g. in a scheduled job"
        )

    def after_fork(self) -> None:
        """Forget the parent's connections."""
        self.http.reset()

    def close(self) -> None:
        """Close this thread's connections."""
        self.http.close()


def _tables(
    docs: dict[str, Any], names: Sequence[str], epoch: int, specs: SpecCache
) -> dict[str, RouteTable]:
    try:
        return {name: table_from_json(docs[name], epoch=epoch, specs=specs) for name in names}
    except (KeyError, TypeError, ValueError) as error:
        raise ServerUnavailableError(
            f"the server sent a routing table this SDK cannot read ({error!r}); is it a "
            "policy-canary server of a compatible version?"
        ) from error


class SseListener:
    """One ``GET /api/v1/stream`` connection, read by the refresher's thread.

    A raw socket rather than ``http.client`` so that :meth:`wait` can wait on the stream and
    on a wake-up socket at once (``close()`` must interrupt it). The body is chunked or
    close-delimited; both are decoded here.
    """

    def __init__(self, link: RemoteLink, sock: socket.socket, rest: bytes, *, chunked: bool):
        self._link = link
        self._sock = sock
        self._chunked = chunked
        self._raw = b""  # undecoded chunked bytes
        self._need = -1  # chunk bytes still to read; -1: a size line is next; -2: its CRLF
        self._text = b""  # decoded event-stream text not yet parsed
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ, "stream")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._feed(rest)

    @classmethod
    def open(cls, link: RemoteLink) -> SseListener:
        """Connect to the first server that answers; :class:`ServerUnavailableError` if none."""
        http = link.http
        problems = []
        for index in http.order():  # the same order, and the same resting, as requests
            server = http.servers[index]
            try:
                listener = cls._connect(link, server)
            except (OSError, ServerUnavailableError) as error:  # unreachable, or "not now"
                http.failed(index)
                problems.append(f"{server.url}: {type(error).__name__}: {error}")
                continue
            http.succeeded(index)
            return listener
        raise ServerUnavailableError("cannot open the event stream (" + "; ".join(problems) + ")")

    @classmethod
    def _connect(cls, link: RemoteLink, server: Server) -> SseListener:
        sock = socket.create_connection((server.host, server.port), timeout=link.http.timeout)
        try:
            if server.https:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=server.host)
            headers = {**link.http.headers, "Accept": "text/event-stream"}
            headers |= {"Cache-Control": "no-cache", "Host": f"{server.host}:{server.port}"}
            if link.pushed is not None:
                headers["Last-Event-ID"] = str(link.pushed[0])
            lines = [f"GET {server.prefix}/api/v1/stream HTTP/1.1"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("the server closed the stream before answering")
                head += data
            head, _, rest = head.partition(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ")[1])
            fields = {k.strip().lower(): v.strip() for k, _, v in
                      (line.partition(":") for line in header_lines)}  # fmt: skip
            if status != 200:
                raise error_of(status, rest, "GET /api/v1/stream")
            chunked = "chunked" in fields.get("transfer-encoding", "").lower()
            sock.settimeout(None)
            return cls(link, sock, rest, chunked=chunked)
        except BaseException:
            sock.close()
            raise

    @property
    def backend_pid(self) -> int:
        """The local port of the stream's connection (for logs)."""
        port: int = self._sock.getsockname()[1]
        return port

    def wait(self, timeout: float) -> int | None:
        """Block up to ``timeout`` s; the epoch of a routing event received, else None.

        Raises :class:`ServerUnavailableError` when the stream ended or broke.
        """
        import time

        deadline = time.monotonic() + timeout
        while True:
            epoch = self._parse()
            if epoch is not None:
                return epoch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            pending = isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0
            ready = {"stream"} if pending else self._ready(remaining)
            if "wake" in ready:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(64):
                        pass
                return None
            if "stream" in ready:
                try:
                    data = self._sock.recv(65536)
                except OSError as error:
                    raise ServerUnavailableError(f"the event stream broke: {error}") from error
                if not data:
                    raise ServerUnavailableError("the server closed the event stream")
                self._feed(data)

    def _ready(self, timeout: float) -> set[str]:
        try:
            return {key.data for key, _ in self._selector.select(timeout)}
        except (OSError, ValueError) as error:
            raise ServerUnavailableError(f"the event stream failed: {error}") from error

    def _feed(self, data: bytes) -> None:
        if not self._chunked:
            self._text += data
            return
        self._raw += data
        while self._raw:
            if self._need == -1:
                end = self._raw.find(b"\r\n")
                if end < 0:
                    return
                size = int(self._raw[:end].split(b";")[0], 16)
                self._raw = self._raw[end + 2 :]
                if size == 0:
                    raise ServerUnavailableError("the server ended the event stream")
                self._need = size
            elif self._need == -2:
                if len(self._raw) < 2:
                    return
                self._raw, self._need = self._raw[2:], -1
            else:
                take = self._raw[: self._need]
                self._text += take
                self._raw = self._raw[len(take) :]
                self._need -= len(take)
                if self._need == 0:
                    self._need = -2

    def _parse(self) -> int | None:
        """Consume complete events; store the newest routing document, return its epoch."""
        newest = None
        while b"\n\n" in self._text:
            block, self._text = self._text.split(b"\n\n", 1)
            kind, data = "message", []
            for line in block.decode("utf-8").split("\n"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
            if kind == "routing" and data:
                doc = json.loads("\n".join(data))
                newest = int(doc["epoch"])
                self._link.pushed = (newest, doc["policies"])
        return newest

    def wake(self) -> None:
        """Make the current or next :meth:`wait` return None at once (any thread)."""
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def close(self) -> None:
        """Close the stream and the wake-up sockets."""
        with contextlib.suppress(OSError, ValueError):
            self._selector.close()
        with contextlib.suppress(OSError):
            self._sock.close()
        self._wake_r.close()
        self._wake_w.close()


def connect_link(url: str | Sequence[str], *, token: str | None, timeout: float) -> RemoteLink:
    """A :class:`RemoteLink` to the servers at ``url``, checked with one routing read.

    Raises :class:`ServerUnavailableError` when none answers and
    :class:`AuthenticationError` / :class:`PermissionDeniedError` for a refused token.
    """
    if not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        raise InputError(f"timeout={timeout!r} is not allowed; give seconds in (0, 300]")
    if token is not None and (not isinstance(token, str) or not token.isprintable()):
        raise InputError("token must be the secret printed by 'policy-canary token create'")
    link = RemoteLink(Http(servers(url), token=token, timeout=float(timeout)))
    link.read_epoch()
    return link
