"""OFREP evaluation: the OpenAPI contract, the SDK's sticky splitter over HTTP, ETags."""

from __future__ import annotations

import json
from pathlib import Path

from _api_support import SPEC_V1, SPEC_V2, Api, make_api, push

from _serving import start_rollout, update_rollout
from policy_canary.clock import ManualClock
from policy_canary.server import Limits
from policy_canary.store import Store

VECTORS = Path(__file__).parent.parent / "vectors" / "splitter.json"
NAME = "support-agent"
FLAG = f"/ofrep/v1/evaluate/flags/{NAME}"


def _evaluate(api: Api, key: str | None, who: str = "agent", flag: str = NAME) -> dict[str, object]:
    context = {} if key is None else {"targetingKey": key}
    response = api.post(f"/ofrep/v1/evaluate/flags/{flag}", {"context": context}, who)
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def test_without_a_rollout_the_stable_spec_is_static(api: Api) -> None:
    v1 = push(api)["version"]
    body = _evaluate(api, "user-1")
    assert body["key"] == NAME
    assert body["value"] == SPEC_V1
    assert body["variant"] == "v1"
    assert body["reason"] == "STATIC"
    metadata = body["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["versionDigest"] == v1["id"]
    assert metadata["arm"] == "stable"
    assert isinstance(metadata["decisionId"], str)
    assert "rolloutId" not in metadata  # OFREP metadata values are never null


def test_a_rollout_assignment_is_a_split_with_rollout_metadata(api: Api) -> None:
    push(api)
    push(api, spec=SPEC_V2)
    started = api.post(f"/api/v1/policies/{NAME}/rollouts", {"candidate": "v2"}, "operator")
    rollout_id = started.json()["id"]
    update_rollout(api.store, rollout_id, traffic_bp=10_000)
    api.canary.refresh_now()
    body = _evaluate(api, "user-1")
    assert body["reason"] == "SPLIT"
    assert body["value"] == SPEC_V2
    assert body["variant"] == "v2"
    metadata = body["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["rolloutId"] == rollout_id
    assert metadata["stage"] == "canary"
    assert metadata["arm"] == "candidate"


def test_assignments_over_http_match_the_splitter_vectors(api: Api) -> None:
    """Given the shared vectors, when each (salt, key, share) is evaluated over OFREP,
    then the arm is the vector's: the server routes with the SDK's own gate."""
    doc = json.loads(VECTORS.read_text(encoding="utf-8"))
    salts = sorted({case["salt"] for case in doc["cases"]})
    checked = 0
    for i, salt in enumerate(salts):
        name = f"vector-{i}"
        v1 = push(api, name)["version"]["id"]
        v2 = push(api, name, SPEC_V2)["version"]["id"]
        rollout_id = start_rollout(
            api.store, api.clock, policy=name, baseline=v1, candidate=v2, traffic_bp=0, salt=salt
        )
        for share in doc["shares_bp"]:
            # start_rollout draws a salt for an empty one; the vectors include the empty salt
            update_rollout(api.store, rollout_id, traffic_bp=share, salt=salt)
            api.canary.refresh_now()
            for case in (c for c in doc["cases"] if c["salt"] == salt):
                metadata = _evaluate(api, case["key"], flag=name)["metadata"]
                assert isinstance(metadata, dict)
                assert metadata["arm"] == case["arms"][str(share)], (salt, case["key"], share)
                checked += 1
    assert checked == len(doc["cases"]) * len(doc["shares_bp"])


def test_unknown_flag_is_flag_not_found(api: Api) -> None:
    response = api.post(
        "/ofrep/v1/evaluate/flags/nope", {"context": {"targetingKey": "u"}}, "agent"
    )
    assert response.status_code == 404
    assert response.json()["errorCode"] == "FLAG_NOT_FOUND"
    assert response.json()["key"] == "nope"


def test_bad_context_is_invalid_context_and_bad_json_a_parse_error(api: Api) -> None:
    push(api)
    bad = api.post(FLAG, {"context": {"targetingKey": 42}}, "agent")
    assert bad.status_code == 400
    assert bad.json() == {
        "key": NAME,
        "errorCode": "INVALID_CONTEXT",
        "errorDetails": "context.targetingKey must be a string",
    }
    not_object = api.post(FLAG, {"context": "user-1"}, "agent")
    assert not_object.json()["errorCode"] == "INVALID_CONTEXT"
    garbled = api.post(
        FLAG, content=b"{not json", headers={"Content-Type": "application/json"}, who="agent"
    )
    assert garbled.status_code == 400
    assert garbled.json()["errorCode"] == "PARSE_ERROR"


def test_auth_failures_are_401_and_403(api: Api) -> None:
    push(api)
    push(api, "other")
    assert api.post(FLAG, {"context": {}}, None).status_code == 401
    assert api.post(FLAG, {"context": {}}, "viewer").status_code == 403
    api.token("only-other", "agent", policies=["other"])
    assert api.post(FLAG, {"context": {}}, "only-other").status_code == 403
    assert api.post(
        "/ofrep/v1/evaluate/flags/other", {"context": {}}, "only-other"
    ).status_code == (200)


def test_bulk_evaluates_the_tokens_flags_and_honours_if_none_match(api: Api) -> None:
    push(api)
    push(api, "other")
    api.token("only-other", "agent", policies=["other"])
    url = "/ofrep/v1/evaluate/flags"
    everything = api.post(url, {"context": {"targetingKey": "u1"}}, "agent")
    assert everything.status_code == 200
    assert [f["key"] for f in everything.json()["flags"]] == ["other", NAME]
    limited = api.post(url, {"context": {"targetingKey": "u1"}}, "only-other")
    assert [f["key"] for f in limited.json()["flags"]] == ["other"]
    etag = everything.headers["ETag"]
    cached = api.post(
        url, {"context": {"targetingKey": "u1"}}, "agent", headers={"If-None-Match": etag}
    )
    assert cached.status_code == 304
    assert cached.headers["ETag"] == etag
    other_key = api.post(
        url, {"context": {"targetingKey": "u2"}}, "agent", headers={"If-None-Match": etag}
    )
    assert other_key.status_code == 200
    push(api, spec=SPEC_V2)
    api.post(f"/api/v1/policies/{NAME}/stable", {"ref": "v2", "reason": "new"})
    changed = api.post(
        url, {"context": {"targetingKey": "u1"}}, "agent", headers={"If-None-Match": etag}
    )
    assert changed.status_code == 200
    assert changed.headers["ETag"] != etag
    bad = api.post(url, {"context": []}, "agent")
    assert bad.status_code == 400
    assert bad.json()["errorCode"] == "INVALID_CONTEXT"


def test_over_the_rate_limit_is_429_with_retry_after(store: Store, clock: ManualClock) -> None:
    """Given 2 requests/s per token, the third request within a second is refused with
    Retry-After; another token is unaffected; the allowance refills with time."""
    for api in make_api(store, clock, limits=Limits(rate_per_second=2)):
        push(api)
        assert _evaluate(api, "u")["key"] == NAME
        assert _evaluate(api, "u")["key"] == NAME
        refused = api.post(FLAG, {"context": {"targetingKey": "u"}}, "agent")
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["code"] == "rate_limited"
        assert _evaluate(api, "u", who="operator")["key"] == NAME
        clock.advance(0.5)
        assert _evaluate(api, "u")["key"] == NAME
