"""``serve --workers N`` on Linux: each worker listens on its own socket, the kernel balances.

Which process holds which connection is read from ``/proc``: ``/proc/net/tcp`` maps a
connection's ports to a socket inode, ``/proc/<pid>/fd`` maps the inode to its process.
"""

from __future__ import annotations

import pickle
import socket
import sys
import time
from pathlib import Path

import pytest
from _live import free_port, start, stop
from typer.testing import CliRunner

from policy_canary.cli import app as cli_app
from policy_canary.server._listen import PortHold, balances, worker_socket

#: Linux only: elsewhere the workers keep uvicorn's one shared socket (``balances()``).
linux = pytest.mark.skipif(not balances(), reason="SO_REUSEPORT balancing is Linux's")

LISTEN = "0A"


def _sockets(port: int) -> list[tuple[int, str, int]]:
    """(remote port, state, inode) of every IPv4 socket whose local port is ``port``."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if int(local.split(":")[1], 16) == port:
            found.append((int(remote.split(":")[1], 16), state, inode))
    return found


def _owners(pids: list[int]) -> dict[int, int]:
    """Socket inode -> the pid (of ``pids``) that has it open."""
    owners = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = fd.readlink().name
            except OSError:  # closed while we looked
                continue
            if target.startswith("socket:["):
                owners[int(target[8:-1])] = pid
    return owners


def _children(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


@linux
def test_each_worker_listens_on_its_own_socket_and_connections_reach_both(
    sqlite_url: str,
) -> None:
    """Given ``serve --workers 2``, two sockets listen on the port, one in each worker, and
    16 connections opened at once land on both workers (with one shared socket, the first
    worker awake took them all; a fair hash puts all 16 on one worker once in 32,768)."""
    port = free_port()
    proc, _ = start(sqlite_url, "--no-auth", "--workers", "2", port=port)
    try:
        deadline = time.monotonic() + 60
        while len([s for s in _sockets(port) if s[1] == LISTEN]) < 2:  # the second worker
            assert time.monotonic() < deadline, f"one listener only: {_sockets(port)}"
            time.sleep(0.05)  # bounded polling for a real process to start listening
        workers = _children(proc.pid)
        owners = _owners(workers)
        listeners = [owners[inode] for _, state, inode in _sockets(port) if state == LISTEN]
        assert len(set(listeners)) == len(listeners) == 2

        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(16)]
        try:
            for client in clients:  # an answer means a worker accepted the connection
                client.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: t\r\n\r\n")
                assert client.recv(64).startswith(b"HTTP/1.1 200")
            mine = {client.getsockname()[1] for client in clients}
            owners = _owners(workers)
            served_by = {owners[inode] for remote, _, inode in _sockets(port) if remote in mine}
            assert served_by == set(listeners)
        finally:
            for client in clients:
                client.close()
    finally:
        out = stop(proc)
    assert "2 worker processes on a socket each" in out


@linux
def test_a_second_serve_on_the_port_fails_instead_of_joining(sqlite_url: str) -> None:
    """Sockets with ``SO_REUSEPORT`` may share a port, so a second ``serve --workers 2`` by
    the same user must be refused at start, as it was with one shared socket."""
    port = free_port()
    proc, _ = start(sqlite_url, "--no-auth", "--workers", "2", port=port)
    try:
        second = CliRunner().invoke(
            cli_app,
            ["--db", sqlite_url, "serve", "--no-auth", "--workers", "2", "--port", str(port)],
        )
        assert second.exit_code == 1, second.output
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
        assert "choose another --port" in second.stderr
        assert "policy-canary serve on" not in second.stdout  # no banner for a failed start
    finally:
        stop(proc)


@linux
def test_the_hold_keeps_the_port_and_arrives_in_a_worker_as_its_own_socket() -> None:
    hold = PortHold("127.0.0.1", 0)
    try:
        port = hold.getsockname()[1]
        assert port != 0
        with socket.socket() as plain:  # nobody else takes the port
            plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError, match="in use"):
                plain.bind(("127.0.0.1", port))
        with pytest.raises(OSError, match="in use"):
            PortHold("127.0.0.1", port)  # nor a second hold
        first, second = pickle.loads(pickle.dumps(hold)), pickle.loads(pickle.dumps(hold))
        with first, second:
            assert type(first) is socket.socket
            assert first.fileno() != hold.fileno()
            assert first.getsockname() == second.getsockname() == ("127.0.0.1", port)
            first.listen()
            second.listen()  # two listeners beside the hold
    finally:
        hold.close()


@linux
def test_a_worker_that_cannot_bind_exits_as_a_start_up_failure() -> None:
    """uvicorn restarts a dead worker for ever, unless it exited as a start-up failure (3)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit) as exited:
            worker_socket("127.0.0.1", taken.getsockname()[1])
    assert exited.value.code == 3


def test_balancing_is_claimed_only_on_linux() -> None:
    assert balances() == sys.platform.startswith("linux")
