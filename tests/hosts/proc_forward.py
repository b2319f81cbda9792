"""A TCP forwarder: listen inside a network namespace, connect out on this one's loopback.

``python proc_forward.py NETNS_FILE LISTEN_ADDR LISTEN_PORT TARGET_PORT LIFETIME``

Started in the machine's root namespace. The listening socket is created after
``setns()`` into NETNS_FILE (and the thread switched back at once), so the test hosts reach
``LISTEN_ADDR:LISTEN_PORT`` on their switch while every upstream connection goes to
``127.0.0.1:TARGET_PORT`` (PostgreSQL, which listens on loopback only). Prints one JSON line
when it listens; stops on SIGTERM or after LIFETIME seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


def listen_in(netns_file: str, address: str, port: int) -> socket.socket:
    """A listening socket that lives in the namespace at ``netns_file``."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns_file, os.O_RDONLY)
    try:
        _setns(target)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(256)
            sock.setblocking(False)
        finally:
            _setns(home)  # sockets keep their namespace; this thread goes home
    finally:
        os.close(home)
        os.close(target)
    return sock


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main(netns_file: str, address: str, port: int, target: int, lifetime: float) -> None:
    sock = listen_in(netns_file, address, port)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    server = await asyncio.start_server(handle, sock=sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(json.dumps({"kind": "ready", "listen": f"{address}:{port}"}), flush=True)
    async with server:
        with contextlib.suppress(TimeoutError):  # the lifetime is up: stop by itself
            await asyncio.wait_for(stop.wait(), timeout=lifetime)


if __name__ == "__main__":
    ns, addr, lport, tport, life = sys.argv[1:6]
    asyncio.run(main(ns, addr, int(lport), int(tport), float(life)))
