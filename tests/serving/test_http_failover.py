"""The remote link's failover across server URLs, against small loopback HTTP servers.

Given several servers, where some refuse connections, hang, or answer 503 ("not now"), a
request reaches one that works, sticks to it, and skips failed servers while they rest; the
resting clock is injected, so no test waits for a backoff to pass.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from policy_canary import Canary
from policy_canary.errors import InputError, StoreUnavailableError
from policy_canary.serving._http import REST_FIRST, REST_LONGEST, Http, servers


class Replica:
    """A loopback HTTP server answering every request with ``status``; counts its hits."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.hits = 0
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                replica.hits += 1
                body = json.dumps({"epoch": 7, "code": "store_unavailable"}).encode()
                self.send_response(replica.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started = [Replica(), Replica()]
    yield started
    for replica in started:
        replica.close()


def refused_url() -> str:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_dead_first_server_is_skipped_and_requests_stick_to_the_one_that_answered(
    replicas: list[Replica],
) -> None:
    clock = Clock()
    http = Http(servers([refused_url(), replicas[0].url, replicas[1].url]), token=None,
                timeout=2.0, now=clock)  # fmt: skip
    assert http.json("GET", "/api/v1/routing")["epoch"] == 7
    assert (http.current, replicas[0].hits, replicas[1].hits) == (1, 1, 0)
    assert http.resting() == [http.servers[0].url]
    for _ in range(5):
        http.json("GET", "/api/v1/routing")
    assert (replicas[0].hits, replicas[1].hits) == (6, 0)


def test_a_replica_answering_503_hands_the_request_to_the_next(replicas: list[Replica]) -> None:
    clock = Clock()
    replicas[0].status = 503  # e.g. its own database link is down
    http = Http(servers([r.url for r in replicas]), token=None, timeout=2.0, now=clock)
    assert http.json("GET", "/api/v1/routing")["epoch"] == 7
    assert (replicas[0].hits, replicas[1].hits, http.current) == (1, 1, 1)
    # The second replica dies: the first, though resting, is tried rather than giving up.
    replicas[1].close()
    replicas[0].status = 200
    assert http.json("GET", "/api/v1/routing")["epoch"] == 7
    assert http.current == 0
    assert http.resting() == [replicas[1].url]


def test_a_resting_server_is_tried_after_the_others_until_its_rest_is_over(
    replicas: list[Replica],
) -> None:
    clock = Clock()
    http = Http(servers([r.url for r in replicas]), token=None, timeout=2.0, now=clock)
    http.failed(0)
    assert http.order() == [1, 0]
    clock.t += REST_FIRST
    assert http.order() == [0, 1]
    # Each failure in a row doubles the rest, up to the longest.
    for _ in range(20):
        http.failed(0)
    assert http.order() == [1, 0]
    clock.t += REST_LONGEST - 0.001
    assert http.order() == [1, 0]
    clock.t += 0.002
    assert http.order() == [0, 1]
    http.succeeded(0)
    http.failed(0)
    clock.t += REST_FIRST  # a success reset the run of failures
    assert http.order() == [0, 1]


def test_when_every_server_fails_the_error_names_each() -> None:
    dead = [refused_url(), refused_url()]
    http = Http(servers(dead), token=None, timeout=2.0)
    with pytest.raises(StoreUnavailableError) as caught:
        http.request("GET", "/api/v1/routing")
    for url in dead:
        assert url in str(caught.value)


def test_every_replica_answering_503_is_reported_unavailable(replicas: list[Replica]) -> None:
    for replica in replicas:
        replica.status = 503
    http = Http(servers([r.url for r in replicas]), token=None, timeout=2.0)
    with pytest.raises(StoreUnavailableError):
        http.json("GET", "/api/v1/routing")
    assert [r.hits for r in replicas] == [1, 1]


def test_connect_takes_one_url_or_a_list_and_refuses_an_empty_or_malformed_one() -> None:
    assert [s.port for s in servers("http://127.0.0.1:8600")] == [8600]
    assert [s.port for s in servers(("http://a:1", "https://b"))] == [1, 443]
    with pytest.raises(InputError, match="at least one server URL"):
        Canary.connect([])
    with pytest.raises(InputError, match="not a server URL"):
        Canary.connect(["http://127.0.0.1:8600", "ftp://x"])
