"""``GET /api/v1/stream`` (server-sent events) and ``GET /api/v1/routing`` on a real server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from _served import events, served

from _serving import seed_policy, start_rollout
from policy_canary.clock import ManualClock
from policy_canary.server import Limits, create_app
from policy_canary.serving._canary import Canary
from policy_canary.serving._direct import StoreLink
from policy_canary.serving._routing import SpecCache
from policy_canary.serving._wire import routing_json
from policy_canary.store import Store
from policy_canary.tokens import Tokens

NAME = "support-agent"


@dataclass
class Live:
    base: str
    store: Store
    clock: ManualClock
    canary: Canary
    secrets: dict[str, str]
    loads: list[int]
    watch: Any

    def caught_up(self) -> None:
        """Wait (bounded) until the server's watcher has loaded the store's current epoch."""
        wanted = _direct(self.store, [NAME])["epoch"]
        deadline = time.monotonic() + 10
        while (self.watch.snapshot is None or self.watch.snapshot.epoch < wanted) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.01)

    def headers(self, who: str = "viewer", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[who]}", **extra}

    def stream(self, who: str = "viewer", **kw: Any) -> Any:
        headers = self.headers(who, **kw.pop("headers", {}))
        return httpx.stream("GET", f"{self.base}/api/v1/stream", headers=headers, timeout=10, **kw)


@pytest.fixture
def live(store: Store, clock: ManualClock) -> Iterator[Live]:
    seed_policy(store, clock)
    seed_policy(store, clock, name="billing-agent")
    tokens = Tokens(store, clock=clock)
    secrets = {
        "viewer": tokens.create("viewer", role="viewer", actor="t").secret,
        "agent": tokens.create("agent", role="agent", actor="t").secret,
        "billing": tokens.create(
            "billing", role="agent", policies=["billing-agent"], actor="t"
        ).secret,
    }
    canary = Canary(store, clock=clock, background=False)
    app = create_app(canary, limits=Limits(stream_keepalive=0.2, watch_interval=0.05))
    watch = app.state.server.watch
    loads: list[int] = []
    inner = watch._link.load

    def counted(*args: Any, **kw: Any) -> Any:
        loads.append(1)
        return inner(*args, **kw)

    watch._link = _Counting(watch._link, counted)
    with served(app) as base:
        yield Live(base, store, clock, canary, secrets, loads, watch)
    canary.close()


class _Counting:
    """A link whose load() is counted (everything else passes through)."""

    def __init__(self, link: StoreLink, load: Any) -> None:
        self._link = link
        self.load = load

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)


def _direct(store: Store, names: list[str]) -> dict[str, Any]:
    epoch, tables = StoreLink(store).load(names, specs=SpecCache(), known_epoch=None)
    parsed: dict[str, Any] = json.loads(json.dumps(routing_json(epoch, tables)))  # as sent
    return parsed


def _rollout(live: Live) -> str:
    from policy_canary.registry import Registry

    versions = Registry(live.store, clock=live.clock).versions(NAME)
    return start_rollout(
        live.store, live.clock, baseline=versions[0].id, candidate=versions[1].id, traffic_bp=2_500
    )


def test_the_current_tables_at_once_then_every_change_with_an_ofrep_refetch(live: Live) -> None:
    with live.stream() as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        first = events(response, 1)[0]
        expected = _direct(live.store, [NAME, "billing-agent"])
        assert first.kind == "routing"
        assert first.id == str(expected["epoch"])
        assert first.json() == expected  # exactly what StoreLink.load returns
        rollout_id = _rollout(live)
        routing, note = events(response, 2)
    after = _direct(live.store, [NAME, "billing-agent"])
    assert routing.kind == "routing"
    assert routing.json() == after
    assert routing.id == note.id == str(after["epoch"])
    table = routing.json()["policies"][NAME]
    assert (table["rollout_id"], table["share_bp"], table["rollout_state"]) == (
        rollout_id,
        2_500,
        "running",
    )
    assert table["salt"]
    assert table["candidate"]["number"] == 2
    assert note.kind == "message"
    body = note.json()
    assert body["type"] == "refetchEvaluation"
    assert isinstance(body["etag"], str)
    assert isinstance(body["lastModified"], int)


def test_a_reconnect_gets_the_tables_and_a_refetch_when_it_missed_a_change(live: Live) -> None:
    epoch = _direct(live.store, [NAME])["epoch"]
    with live.stream(headers={"Last-Event-ID": str(epoch)}) as response:
        assert [e.kind for e in events(response, 1)] == ["routing"]
    _rollout(live)
    live.caught_up()  # a client reconnecting gets what the watcher holds: wait until it moved
    with live.stream(headers={"Last-Event-ID": str(epoch)}) as response:
        routing, note = events(response, 2)
    assert routing.kind == "routing"
    assert int(routing.id or 0) > epoch
    assert note.json()["type"] == "refetchEvaluation"


def test_idle_streams_get_keep_alive_comments(live: Live) -> None:
    with live.stream() as response:
        found = events(response, 3, comments=True)
    assert [e.kind for e in found] == ["routing", "comment", "comment"]
    assert found[1].data == [": keep-alive"]


def test_a_token_limited_to_policies_sees_only_those(live: Live) -> None:
    with live.stream("billing") as response:
        assert list(events(response, 1)[0].json()["policies"]) == ["billing-agent"]
    refused = httpx.get(
        f"{live.base}/api/v1/stream", params={"policy": NAME}, headers=live.headers("billing")
    )
    assert refused.status_code == 403
    assert "limited to billing-agent" in refused.json()["detail"]
    polled = httpx.get(f"{live.base}/api/v1/routing", headers=live.headers("billing"))
    assert list(polled.json()["policies"]) == ["billing-agent"]
    assert httpx.get(f"{live.base}/api/v1/stream").status_code == 401


def test_one_watcher_serves_every_subscriber(live: Live) -> None:
    streams = [live.stream() for _ in range(8)]
    responses = [s.__enter__() for s in streams]
    try:
        for response in responses:
            assert events(response, 1)[0].kind == "routing"
        before = len(live.loads)
        _rollout(live)
        for response in responses:
            assert [e.kind for e in events(response, 2)] == ["routing", "message"]
        assert len(live.loads) - before == 1  # one load for eight subscribers
    finally:
        for s in streams:
            s.__exit__(None, None, None)


def test_polling_takes_an_etag_and_answers_304_until_routing_moves(live: Live) -> None:
    url = f"{live.base}/api/v1/routing"
    first = httpx.get(url, params={"policy": NAME}, headers=live.headers())
    assert first.status_code == 200
    assert first.json() == _direct(live.store, [NAME])
    etag = first.headers["etag"]
    again = httpx.get(url, params={"policy": NAME}, headers=live.headers(**{"If-None-Match": etag}))
    assert again.status_code == 304
    _rollout(live)
    for _ in range(200):  # bounded: the watcher polls every 50 ms
        moved = httpx.get(
            url, params={"policy": NAME}, headers=live.headers(**{"If-None-Match": etag})
        )
        if moved.status_code == 200:
            break
    assert moved.status_code == 200
    assert moved.json()["policies"][NAME]["share_bp"] == 2_500
    missing = httpx.get(url, params={"policy": "nope"}, headers=live.headers())
    assert missing.status_code == 404
    assert "no policy 'nope'" in missing.json()["detail"]
