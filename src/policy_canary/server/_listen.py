"""The listening sockets of ``serve --workers N``: on Linux, one per worker.

uvicorn's workers share one listening socket, and asyncio accepts every connection that is
waiting each time a worker wakes up, so a client that opens its connections together
(a load balancer's pool, a benchmark, a fleet restarting) often lands them all on one
worker while the others idle. On Linux each worker instead listens on a socket of its own,
bound to the same address with ``SO_REUSEPORT``, and the kernel spreads new connections
over the workers by a hash of each connection's addresses (nginx's ``reuseport``).

The supervisor holds a :class:`PortHold`: a socket bound to the address that never listens.
It keeps the port for this ``serve`` (a second one fails at start with "address already in
use", as with one shared socket) and is what uvicorn hands each worker it spawns: pickled
into the worker, it arrives as that worker's own socket on the address.

Trade-off, documented in docs/operations.md: connections that are waiting in a worker's
queue when that worker dies are reset, not taken over by the others (with one shared socket
they waited for another worker).
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

from uvicorn.config import STARTUP_FAILURE

logger = logging.getLogger("uvicorn.error")


def balances() -> bool:
    """True where the kernel spreads connections over ``SO_REUSEPORT`` sockets (Linux).

    BSD and macOS accept the option but give every connection to one socket; elsewhere the
    workers keep uvicorn's one shared socket.
    """
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class PortHold(socket.socket):
    """The supervisor's claim on ``host:port``; each worker's copy becomes its own listener.

    Binding first without ``SO_REUSEPORT`` checks that nobody holds the port (a socket with
    the option set would otherwise join a running ``serve``'s workers instead of failing);
    the hold itself sets only ``SO_REUSEPORT``, so the workers' sockets may share its port
    while a later check still fails on it.
    """

    def __init__(self, host: str, port: int) -> None:
        family = _family(host)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
            port = probe.getsockname()[1]  # port 0: the one the kernel chose, for every worker
        super().__init__(family, socket.SOCK_STREAM)
        try:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.bind((host, port))
        except OSError:
            self.close()
            raise
        self.host = host

    def __reduce__(self) -> tuple[Any, ...]:
        return (worker_socket, (self.host, self.getsockname()[1]))


def worker_socket(host: str, port: int) -> socket.socket:
    """A worker's own socket on ``host:port``, beside the others (it listens once served).

    Called while the worker process unpickles what uvicorn sent it. A worker that cannot bind
    exits as a start-up failure, which uvicorn's supervisor does not restart in a loop.
    """
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        logger.error("worker cannot listen on %s:%d: %s", host, port, exc)
        sys.exit(STARTUP_FAILURE)
    return sock
