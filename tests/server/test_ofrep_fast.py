"""The OFREP fast path: the plain case answered before FastAPI, everything else handed on intact.

The full route's own behaviour (errors, auth, limits) is pinned by test_ofrep.py, which runs
through the fast path too; these tests pin what the fast path adds: the same bytes, and a
request it does not answer reaching the full route with its body unchanged.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import httpx
from _api_support import SPEC_V1, SPEC_V2, Api, push

from _serving import start_rollout, update_rollout
from policy_canary.server._ofrep_body import evaluation
from policy_canary.server._ofrep_fast import OfrepFastPath
from policy_canary.server._render import dumps
from policy_canary.server._state import ServerState, TokenCache
from policy_canary.tokens import Tokens

NAME = "support-agent"
FLAG = f"/ofrep/v1/evaluate/flags/{NAME}"
UNICODE_SPEC = {"prompt": "Réponds en français — «poliment» 🙂", "nested": {"b": [1, 2.5, None]}}


def _state(api: Api) -> ServerState:
    state = api.client.app.state.server  # type: ignore[attr-defined]
    assert isinstance(state, ServerState)
    return state


def test_cached_bodies_are_the_full_encoding_byte_for_byte(api: Api) -> None:
    """Given decisions of every kind (static, a rollout at 0 %, the candidate arm with a
    stage, a non-sticky draw), the cached encoding equals encoding the whole document, and
    follows the routing table when it changes."""
    v1 = push(api, spec=UNICODE_SPEC)["version"]["id"]
    v2 = push(api, spec=SPEC_V2)["version"]["id"]
    bodies = _state(api).bodies
    gate = api.canary.gate(NAME)

    def check(unit: str | None) -> dict[str, Any]:
        decision = gate.route(unit)
        expected = dumps({**evaluation(decision), "cacheable": False})
        assert bodies.body(decision) == expected
        assert bodies.body(decision) == expected  # the cached parts, second time
        parsed: dict[str, Any] = json.loads(expected)
        return parsed

    assert check("user-1")["reason"] == "STATIC"
    rollout = start_rollout(
        api.store, api.clock, policy=NAME, baseline=v1, candidate=v2, traffic_bp=0
    )
    api.canary.refresh_now()
    assert check("user-1")["reason"] == "DEFAULT"
    update_rollout(api.store, rollout, traffic_bp=10_000)
    api.canary.refresh_now()
    candidate = check("user-1")
    assert (candidate["reason"], candidate["variant"]) == ("SPLIT", "v2")
    assert candidate["metadata"]["rolloutId"] == rollout
    assert check(None)["metadata"]["sticky"] is False


class _Inner:
    """The app behind the fast path: records what reached it, answers 599."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _post(
    state: ServerState, inner: _Inner, path: str, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=OfrepFastPath(inner, state=state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, content=content, headers=headers)

    return asyncio.run(go())


def test_the_plain_case_is_answered_and_its_decision_can_be_recorded(api: Api) -> None:
    push(api)
    assert api.post(FLAG, {"context": {"targetingKey": "u"}}, "agent").status_code == 200
    inner = _Inner()
    headers = {"Content-Type": "application/json", **api.headers("agent")}
    answer = _post(_state(api), inner, FLAG, b'{"context": {"targetingKey": "u"}}', headers)
    assert inner.bodies == []  # answered before the app
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert (body["key"], body["value"], body["reason"]) == (NAME, SPEC_V1, "STATIC")
    event = {"decision_id": body["metadata"]["decisionId"], "latency_ms": 12.0}
    recorded = api.post("/api/v1/events", {"events": [event]}, "agent")
    assert recorded.json() == {"accepted": 1}


def test_every_other_request_reaches_the_full_route_with_its_body_intact(api: Api) -> None:
    """Given a loaded policy and a cached agent token, each request the fast path must not
    answer alone reaches the app behind it with exactly the bytes the client sent."""
    push(api)
    push(api, "other")
    api.token("only-other", "agent", policies=["other"])
    for who in ("agent", "only-other"):
        api.post("/ofrep/v1/evaluate/flags/other", {"context": {}}, who)
    state, plain = _state(api), {"Content-Type": "application/json"}
    agent = {**plain, **api.headers("agent")}
    big = json.dumps({"context": {"targetingKey": "u", "pad": "x" * 70_000}}).encode()
    cases = [
        (FLAG, b'{"context": {}}', {**plain, **api.headers("pc_not-a-known-token")}),
        (FLAG, b'{"context": {}}', {**plain, **api.headers("only-other")}),  # another policy
        (FLAG, b'{"context": {}}', plain),  # no token
        ("/ofrep/v1/evaluate/flags/never-pushed", b'{"context": {}}', agent),
        (FLAG, b'{"context": {"targetingKey": 42}}', agent),
        (FLAG, b"{not json", agent),
        (FLAG, b'{"context": {}}', {**api.headers("agent"), "Content-Type": "text/plain"}),
        (FLAG, gzip.compress(b'{"context": {}}'), {**agent, "Content-Encoding": "gzip"}),
        (FLAG, big, agent),  # over the OFREP body limit
    ]
    for path, content, headers in cases:
        inner = _Inner()
        answer = _post(state, inner, path, content, headers)
        assert answer.status_code == 599, (path, headers)
        assert inner.bodies == [content]


def test_a_stale_token_is_rechecked_once_while_the_others_keep_it_for_a_moment(api: Api) -> None:
    """Given a cache entry past its second, the first lookup starts the re-check (None) and
    the lookups meanwhile get the token; a refused re-check forgets it; peek never starts a
    re-check."""
    secret = api.secrets["agent"]
    token = Tokens(api.store, clock=api.clock).authenticate(secret)
    now = [100.0]
    cache = TokenCache(1.0, now=lambda: now[0])
    cache.put(secret, token)
    assert cache.get(secret) == cache.peek(secret) == token
    now[0] += 1.5
    assert cache.peek(secret) is None  # stale, and peeking does not claim the re-check
    assert cache.get(secret) is None  # this caller re-checks
    assert cache.get(secret) == cache.peek(secret) == token  # the others meanwhile
    now[0] += TokenCache.RECHECK_SECONDS + 0.1
    assert cache.get(secret) is None  # the re-check never came back: someone tries again
    cache.forget(secret)  # it was refused
    assert cache.get(secret) is None
    assert cache.get(secret) is None
