"""Polling the routing tables: the fast path, and a policy registered a moment ago.

Given remote agents polling ``GET /api/v1/routing`` with the ETag they hold, when nothing
moved, then the middleware answers the 304 itself; in every other case (no or an old ETag,
an unknown or uncached token, a policy the token may not read, an unknown policy, any other
parameter or method, the rate limit) the full route answers, so the server's answer is the
same with the fast path as without it. And a policy registered after the server's routing
watch last looked is served when an agent asks for it by name, not refused as unknown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _api_support import Api, make_api, push
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _serving import start_rollout
from policy_canary.clock import ManualClock
from policy_canary.server import Limits
from policy_canary.server._state import ServerState
from policy_canary.server._stream import RoutingPollFastPath, _etag
from policy_canary.store import Store

ROUTING = "/api/v1/routing"
NAME = "support-agent"
#: Tokens stay cached for the whole test (the default second could lapse on a loaded box).
LIMITS = Limits(stream_seconds=0.2, token_cache_seconds=3600)


@pytest.fixture
def fast_api(store: Store, clock: ManualClock) -> Iterator[Api]:
    yield from make_api(store, clock, limits=LIMITS)


def _state(api: Api) -> ServerState:
    state = api.client.app.state.server  # type: ignore[attr-defined]
    assert isinstance(state, ServerState)
    return state


class _Inner:
    """The app behind the fast path: counts what reached it, answers 599."""

    def __init__(self) -> None:
        self.reached = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.reached += 1
        await send({"type": "http.response.start", "status": 599, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def _through_fast_path(
    state: ServerState, method: str, path: str, headers: dict[str, str]
) -> tuple[httpx.Response, int]:
    inner = _Inner()

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=RoutingPollFastPath(inner, state=state))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(go()), inner.reached


def _world(api: Api) -> None:
    """Two policies, one of them in a rollout; a token limited to the other."""
    v1 = push(api)["version"]["id"]
    v2 = push(api, spec={"prompt": "shorter"})["version"]["id"]
    push(api, "billing-agent")
    start_rollout(api.store, api.clock, policy=NAME, baseline=v1, candidate=v2, traffic_bp=500)
    api.canary.refresh_now()
    api.token("billing", "agent", policies=["billing-agent"])
    _settle(api)


def _settle(api: Api) -> None:
    """Bring the server's routing watch up to the last commit now, so no ETag taken after
    this moves under the test (the watch's own thread would catch up within its interval)."""
    assert _state(api).watch.refresh() is None


def test_an_unchanged_poll_is_answered_before_the_app_with_the_full_routes_bytes(
    fast_api: Api,
) -> None:
    _world(fast_api)
    state = _state(fast_api)
    for who, query in [("agent", ""), ("agent", f"?policy={NAME}"), ("billing", "")]:
        etag = fast_api.get(ROUTING + query, who).headers["etag"]
        fast_api.token(f"fresh-{who}-{len(query)}", "viewer")  # not cached: the full route
        fresh = {"If-None-Match": etag}
        if who == "billing":
            full = fast_api.get(ROUTING + query, who, headers=fresh)
        else:
            full = fast_api.get(ROUTING + query, f"fresh-{who}-{len(query)}", headers=fresh)
        answer, reached = _through_fast_path(
            state, "GET", ROUTING + query, fast_api.headers(who, fresh)
        )
        assert reached == 0, (who, query)
        assert full.status_code == answer.status_code == 304
        assert answer.headers.multi_items() == full.headers.multi_items() == [("etag", etag)]
        assert answer.content == full.content == b""


def test_every_other_poll_reaches_the_full_route(fast_api: Api) -> None:
    _world(fast_api)
    state = _state(fast_api)
    etag = fast_api.get(ROUTING, "agent").headers["etag"]
    scoped = fast_api.get(f"{ROUTING}?policy={NAME}", "agent").headers["etag"]
    fast_api.get(ROUTING, "billing")  # cached too
    # The ETag an unknown policy would have: only a crafted one, as the full route says 404.
    unknown = _etag(state.watch.current(), {"nope"})
    cases: list[tuple[str, str, str | None, dict[str, str]]] = [
        ("GET", ROUTING, "agent", {}),  # nothing to compare
        ("GET", ROUTING, "agent", {"If-None-Match": '"0-000000000000"'}),  # an old ETag
        ("GET", ROUTING, "agent", {"If-None-Match": scoped}),  # another scope's ETag
        ("GET", ROUTING, None, {"If-None-Match": etag}),  # no token
        ("GET", ROUTING, "pc_not-a-known-token", {"If-None-Match": etag}),
        ("GET", ROUTING, "agent", {"If-None-Match": etag, "Authorization": "Basic abc"}),
        ("GET", f"{ROUTING}?policy={NAME}", "billing", {"If-None-Match": scoped}),  # not its own
        ("GET", f"{ROUTING}?policy=nope", "agent", {"If-None-Match": unknown}),
        ("GET", f"{ROUTING}?policy={NAME}&x=1", "agent", {"If-None-Match": scoped}),
        ("HEAD", ROUTING, "agent", {"If-None-Match": etag}),
        ("POST", ROUTING, "agent", {"If-None-Match": etag}),
        ("GET", ROUTING + "/", "agent", {"If-None-Match": etag}),
    ]
    for method, path, who, extra in cases:
        headers = fast_api.headers(who)
        headers.update(extra)
        answer, reached = _through_fast_path(state, method, path, headers)
        assert (answer.status_code, reached) == (599, 1), (method, path, who, extra)


def test_a_poll_after_a_change_gets_the_new_tables(fast_api: Api) -> None:
    v1 = push(fast_api)["version"]["id"]
    v2 = push(fast_api, spec={"prompt": "shorter"})["version"]["id"]
    _settle(fast_api)
    first = fast_api.get(ROUTING, "agent")
    etag = first.headers["etag"]
    assert fast_api.get(ROUTING, "agent", headers={"If-None-Match": etag}).status_code == 304
    start_rollout(
        fast_api.store, fast_api.clock, policy=NAME, baseline=v1, candidate=v2, traffic_bp=700
    )
    _settle(fast_api)
    moved = fast_api.get(ROUTING, "agent", headers={"If-None-Match": etag})
    assert moved.status_code == 200
    assert moved.headers["etag"] != etag
    assert moved.json()["policies"][NAME]["share_bp"] == 700


def test_the_fast_path_counts_against_the_rate_limit(store: Store, clock: ManualClock) -> None:
    for api in make_api(store, clock, limits=Limits(rate_per_second=2, token_cache_seconds=3600)):
        push(api)
        _settle(api)
        etag = api.get(ROUTING, "agent").headers["etag"]  # takes one of the two
        polls = [api.get(ROUTING, "agent", headers={"If-None-Match": etag}) for _ in range(3)]
        assert [p.status_code for p in polls] == [304, 429, 429]
        assert polls[1].json()["code"] == "rate_limited"


_WHO = st.sampled_from(["agent", "viewer", "billing", "pc_unknown", None])
_QUERY = st.sampled_from(
    ["", f"?policy={NAME}", "?policy=billing-agent", "?policy=nope", f"?policy={NAME}&y=2",
     f"?policy={NAME}&policy=billing-agent"]
)  # fmt: skip
_TAG = st.sampled_from(["none", "own", "other", "list", "junk"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(requests=st.lists(st.tuples(_WHO, _QUERY, _TAG), min_size=1, max_size=8))
def test_the_answer_is_the_same_with_and_without_the_fast_path(
    sqlite_api: Api, monkeypatch: pytest.MonkeyPatch, requests: list[tuple[Any, str, str]]
) -> None:
    api = sqlite_api
    if "billing" not in api.secrets:
        _world(api)
    tags = {
        q: api.get(ROUTING + q, "agent").headers.get("etag", "") for q in ("", f"?policy={NAME}")
    }
    for who, query, tag in requests:
        own = api.get(ROUTING + query, who).headers.get("etag")
        value = {
            "none": None,
            "own": own,
            "other": tags[""] if own != tags[""] else tags[f"?policy={NAME}"],
            "list": f'"x", {own}',
            "junk": "*",
        }[tag]
        extra = {} if value is None else {"If-None-Match": value}
        answers = []
        for fast in (True, False):
            with monkeypatch.context() as patch:
                if not fast:
                    patch.setattr(RoutingPollFastPath, "_unchanged", lambda self, scope: None)
                answer = api.get(ROUTING + query, who, headers=extra)
            answers.append((answer.status_code, answer.headers.multi_items(), answer.content))
        assert answers[0] == answers[1], (who, query, tag)


def test_a_policy_registered_a_moment_ago_is_served_when_asked_for_by_name(
    store: Store, clock: ManualClock
) -> None:
    """The watch's own thread would take an hour here: the route reloads for the miss."""
    limits = Limits(stream_seconds=0.2, watch_interval=3600)
    for api in make_api(store, clock, limits=limits):
        assert _state(api).watch.current().tables == {}  # loaded before the policy existed
        push(api)
        polled = api.get(f"{ROUTING}?policy={NAME}", "agent")
        assert polled.status_code == 200, polled.text
        assert list(polled.json()["policies"]) == [NAME]
        push(api, "billing-agent")
        with api.client.stream("GET", "/api/v1/stream?policy=billing-agent",
                               headers=api.headers("agent")) as streamed:  # fmt: skip
            assert streamed.status_code == 200
            first = next(streamed.iter_lines())
        assert first.startswith("retry:")
        unknown = api.get(f"{ROUTING}?policy=nope", "agent")
        assert unknown.status_code == 404
        assert "no policy 'nope'" in unknown.json()["detail"]
