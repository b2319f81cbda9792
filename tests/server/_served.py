"""A real uvicorn server in a thread on a loopback port, for tests that need to tune the app."""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from _live import free_port
from fastapi import FastAPI


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1:<free port> until the block ends; yield the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # bounded: a real server binding its port
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        app.state.server.watch.close(wait=False)  # ends the streams, as `serve` does
        server.should_exit = True
        thread.join(timeout=15)


@dataclass
class Event:
    """One server-sent event (or a comment line, as ``kind='comment'``)."""

    kind: str
    id: str | None = None
    data: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads("\n".join(self.data))


_LINES: weakref.WeakKeyDictionary[httpx.Response, Iterator[str]] = weakref.WeakKeyDictionary()


def events(response: httpx.Response, count: int, *, comments: bool = False) -> list[Event]:
    """Read ``count`` more events from a streaming response (the client's timeout bounds it)."""
    lines = _LINES.setdefault(response, response.iter_lines())
    found: list[Event] = []
    current = Event("message")
    for line in lines:
        if line.startswith(":"):
            if comments:
                found.append(Event("comment", data=[line]))
        elif line == "":
            if current.data:
                found.append(current)
            current = Event("message")
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                current.kind = value
            elif name == "id":
                current.id = value
            elif name == "data":
                current.data.append(value)
        if len(found) >= count:
            return found
    return found
