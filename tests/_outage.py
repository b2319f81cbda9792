"""Real store outages for tests: a loopback TCP proxy to PostgreSQL, a SQLite folder moved away.

:class:`TcpProxy` sits between a test's agent and the PostgreSQL server. ``stop()`` closes
its listening socket and every connection through it, so the agent's connections break and
new ones are refused exactly as when the server goes away; ``start()`` listens again on the
same port. Only connections the test made through the proxy are affected: other tests on the
same server never notice.

:func:`sqlite_unreadable` renames the folder holding a SQLite database (and its WAL files)
away, so every new connection fails with "unable to open database file", and puts it back.

:func:`eventually` is the one way these tests wait: a condition polled every 20 ms with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy.engine import make_url


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` every 20 ms until it holds or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``target`` until stopped; restartable on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port: int = probe.getsockname()[1]
        probe.close()

    def url_for(self, url: str) -> str:
        """``url`` (a PostgreSQL URL) pointed at the proxy instead of the server."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(False)

    def start(self) -> None:
        """Listen (again) and forward every accepted connection."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="test-tcp-proxy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Refuse new connections and break every open one (the "server" is gone)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _serve(self) -> None:
        assert self._listener is not None
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    if key.data is None:
                        self._accept(selector)
                    else:
                        self._pump(selector, key.fileobj, key.data)  # type: ignore[arg-type]
        finally:
            selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        assert self._listener is not None
        client, _ = self._listener.accept()
        try:
            server = socket.create_connection(self._target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._pairs.append((client, server))
        selector.register(client, selectors.EVENT_READ, server)
        selector.register(server, selectors.EVENT_READ, client)

    def _pump(
        self, selector: selectors.BaseSelector, source: socket.socket, sink: socket.socket
    ) -> None:
        try:
            data = source.recv(65536)
            if data:
                sink.sendall(data)
                return
        except OSError:
            pass
        for sock in (source, sink):  # one side closed: close both, as a dead server would
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(sock)
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def tcp_proxy(url: str) -> Iterator[TcpProxy]:
    """A started :class:`TcpProxy` to the server of PostgreSQL ``url``, stopped afterwards."""
    parsed = make_url(url)
    proxy = TcpProxy((parsed.host or "127.0.0.1", parsed.port or 5432))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@contextlib.contextmanager
def sqlite_unreadable(database: Path) -> Iterator[None]:
    """Move the folder holding ``database`` away for the block, then put it back."""
    folder = database.parent
    away = folder.with_name(folder.name + "-away")
    os.rename(folder, away)
    try:
        yield
    finally:
        os.rename(away, folder)
