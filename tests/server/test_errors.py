"""Problem documents, the status map, and body limits (also after gzip): never a 500."""

from __future__ import annotations

import gzip
import json

import pytest
from _api_support import SPEC_V1, Api, make_api, push
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy_canary.clock import ManualClock
from policy_canary.errors import ErrorCode
from policy_canary.server import Limits
from policy_canary.server._errors import STATUS
from policy_canary.store import Store

NAME = "support-agent"
PUSH = f"/api/v1/policies/{NAME}/versions"


def test_every_error_code_has_a_status_in_the_one_map() -> None:
    assert set(STATUS) == set(ErrorCode)
    assert set(STATUS.values()) == {400, 401, 403, 404, 409, 413, 415, 422, 429, 503}


def test_a_problem_document_has_the_rfc_9457_members_and_the_json_code(api: Api) -> None:
    response = api.get("/api/v1/policies", None)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith("Bearer")
    problem = response.json()
    assert set(problem) == {"type", "title", "status", "detail", "code"}
    assert problem["code"] == "unauthenticated"
    assert problem["title"] == "Unauthorized"


def test_a_body_over_the_limit_is_413_and_stores_nothing(store: Store, clock: ManualClock) -> None:
    for api in make_api(store, clock, limits=Limits(spec_bytes=1000)):
        big = {"spec": {"prompt": "x" * 100_000}}
        response = api.post(PUSH, big, "operator")
        assert response.status_code == 413
        assert response.json()["code"] == "too_large"
        canonical_too_big = api.post(PUSH, {"spec": {"prompt": "x" * 1500}}, "operator")
        assert canonical_too_big.status_code == 422  # the registry's own limit and message
        assert "1,000 bytes" in canonical_too_big.json()["detail"]
        assert api.get("/api/v1/policies", "viewer").json() == []


def test_gzip_bodies_are_limited_after_decompression(store: Store, clock: ManualClock) -> None:
    for api in make_api(store, clock, limits=Limits(spec_bytes=1000)):
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        small = gzip.compress(json.dumps({"spec": SPEC_V1}).encode())
        ok = api.post(PUSH, None, "operator", content=small, headers=headers)
        assert ok.status_code == 201, ok.text
        bomb = gzip.compress(json.dumps({"spec": {"p": "a" * 10_000_000}}).encode())
        assert len(bomb) < 20_000
        refused = api.post(PUSH, None, "operator", content=bomb, headers=headers)
        assert refused.status_code == 413
        corrupt = api.post(PUSH, None, "operator", content=b"\x1f\x8bnot gzip", headers=headers)
        assert corrupt.status_code == 400
        brotli = api.post(PUSH, None, "operator", content=small,
                          headers={**headers, "Content-Encoding": "br"})  # fmt: skip
        assert brotli.status_code == 415


def test_a_declared_length_over_every_limit_is_refused_before_reading(api: Api) -> None:
    response = api.client.post(
        "/api/v1/policies", headers={"Content-Length": str(10**10)}, content=b"{}"
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"{", "application/json", 400),
        (b'{"spec": NaN}', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"spec: {}", "application/yaml", 415),
        (b"", "application/json", 400),
        (b"[1]", "application/json", 400),
        (b'{"spec": {}, "surprise": 1}', "application/json", 201),
    ],
)
def test_bad_bodies_get_clear_4xx(api: Api, content: bytes, content_type: str, status: int) -> None:
    response = api.post(PUSH, None, "operator", content=content,
                        headers={"Content-Type": content_type})  # fmt: skip
    assert response.status_code == status, response.text
    if status >= 400:
        assert response.headers["content-type"] == "application/problem+json"


def test_unknown_routes_and_bad_query_parameters_are_problems(api: Api) -> None:
    missing = api.get("/api/v1/nothing-here", "viewer")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    bad_limit = api.get("/api/v1/incidents", "viewer", params={"limit": "zero"})
    assert bad_limit.status_code == 400
    assert "limit" in bad_limit.json()["detail"]
    bad_status = api.get("/api/v1/alerts", "viewer", params={"status": "lost"})
    assert bad_status.status_code == 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
ENDPOINTS = [
    PUSH,
    f"/api/v1/policies/{NAME}/stable",
    f"/api/v1/policies/{NAME}/rollouts",
    f"/api/v1/policies/{NAME}/rollout/promote",
    "/api/v1/policies/import",
    "/api/v1/plans/check",
    "/api/v1/incidents/replay",
    "/api/v1/events",
    "/api/v1/feedback",
    "/api/v1/tokens",
    f"/ofrep/v1/evaluate/flags/{NAME}",
    "/ofrep/v1/evaluate/flags",
]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(endpoint=st.sampled_from(ENDPOINTS), body=json_values)
def test_no_json_body_makes_any_mutation_fail_with_a_5xx(
    sqlite_api: Api, endpoint: str, body: object
) -> None:
    if not sqlite_api.get("/api/v1/policies", "viewer").json():
        push(sqlite_api)
    response = sqlite_api.client.post(
        endpoint,
        content=json.dumps(body).encode(),
        headers={**sqlite_api.headers("admin"), "Content-Type": "application/json"},
    )
    assert response.status_code < 500, response.text
