"""Every route in the OpenAPI document x every kind of caller: allowed, 401 or 403.

The expected minimum role of each route is written here independently of the server, and
the test fails when the document gains a route this table does not cover.
"""

from __future__ import annotations

from datetime import timedelta

from _api_support import Api, push

from policy_canary.server import OPENAPI_URL
from policy_canary.tokens import Tokens

ORDER = ("viewer", "agent", "operator", "admin")
P = "/api/v1/policies/{name}"

#: (method, path) → (least role, whether a token limited to other policies is refused).
ROUTES: dict[tuple[str, str], tuple[str | None, bool]] = {
    ("GET", "/api/v1/health"): (None, False),
    ("GET", "/api/v1/policies"): ("viewer", False),
    ("GET", f"{P}/versions"): ("viewer", False),
    ("POST", f"{P}/versions"): ("operator", True),
    ("GET", f"{P}/versions/{{ref}}"): ("viewer", False),
    ("GET", f"{P}/versions/{{ref}}/export"): ("viewer", False),
    ("GET", f"{P}/diff"): ("viewer", False),
    ("GET", f"{P}/history"): ("viewer", False),
    ("POST", f"{P}/stable"): ("admin", True),
    ("POST", "/api/v1/policies/import"): ("admin", False),
    ("GET", "/api/v1/rollouts"): ("viewer", False),
    ("GET", "/api/v1/rollouts/{rollout_id}"): ("viewer", False),
    ("GET", f"{P}/rollouts"): ("viewer", False),
    ("POST", f"{P}/rollouts"): ("operator", True),
    ("POST", f"{P}/rollout/pause"): ("operator", True),
    ("POST", f"{P}/rollout/resume"): ("operator", True),
    ("POST", f"{P}/rollout/promote"): ("operator", True),
    ("POST", f"{P}/rollout/rollback"): ("operator", True),
    ("POST", f"{P}/rollout/abort"): ("operator", True),
    ("POST", "/api/v1/plans/check"): ("viewer", False),
    ("GET", "/api/v1/plans/default"): ("viewer", False),
    ("GET", "/api/v1/incidents"): ("viewer", False),
    ("GET", "/api/v1/incidents/{incident_id}"): ("viewer", False),
    ("GET", "/api/v1/incidents/{incident_id}/export"): ("viewer", False),
    ("POST", "/api/v1/incidents/replay"): ("viewer", False),
    ("GET", "/api/v1/alerts"): ("viewer", False),
    ("GET", "/api/v1/audit"): ("viewer", False),
    ("GET", "/api/v1/tokens"): ("admin", False),
    ("POST", "/api/v1/tokens"): ("admin", False),
    ("POST", "/api/v1/tokens/{token_name}/revoke"): ("admin", False),
    ("POST", "/api/v1/events"): ("agent", False),
    ("POST", "/v1/traces"): ("agent", False),
    ("POST", "/api/v1/feedback"): ("agent", False),
    ("POST", "/api/v1/routed"): ("agent", False),
    ("GET", "/api/v1/stream"): ("viewer", False),
    ("GET", "/api/v1/routing"): ("viewer", False),
    ("POST", "/ofrep/v1/evaluate/flags/{key}"): ("agent", True),
    ("POST", "/ofrep/v1/evaluate/flags"): ("agent", False),
}

PARAMS = {
    "name": "support-agent",
    "key": "support-agent",
    "ref": "v1",
    "rollout_id": "ro_missing",
    "incident_id": "in_missing",
    "token_name": "nobody",
}
#: Callers whose token must be refused outright.
REFUSED = ("none", "revoked", "expired", "garbage", "malformed")


def _expected(caller: str, least: str | None, scoped: bool) -> str:
    if least is None:
        return "allowed"
    if caller in REFUSED:
        return "401"
    role, _, limited = caller.partition("-")
    if ORDER.index(role) < ORDER.index(least):
        return "403"
    return "403" if limited and scoped else "allowed"


def _callers(api: Api) -> dict[str, dict[str, str]]:
    tokens = Tokens(api.store, clock=api.clock)
    api.token("agent-limited", "agent", policies=["other"])
    api.token("admin-limited", "admin", policies=["other"])
    api.token("revoked", "admin")
    tokens.revoke("revoked", actor="test")
    api.token("expired", "admin", expires=timedelta(minutes=5))
    api.clock.advance(timedelta(minutes=6))
    bearer = {who: {"Authorization": f"Bearer {api.secrets[who]}"} for who in api.secrets}
    return {
        "none": {},
        "garbage": {"Authorization": "Bearer pc_not-a-real-token"},
        "malformed": {"Authorization": "Token abc"},
        **{who: bearer[who] for who in ORDER},
        "agent-limited": bearer["agent-limited"],
        "admin-limited": bearer["admin-limited"],
        "revoked": bearer["revoked"],
        "expired": bearer["expired"],
    }


def test_every_route_by_every_caller(api: Api) -> None:
    push(api)
    document = api.client.get(OPENAPI_URL).json()
    routes = {(m.upper(), path) for path, ops in document["paths"].items() for m in ops}
    assert routes == set(ROUTES), "a route was added or removed: extend ROUTES"
    callers = _callers(api)
    outcomes: dict[tuple[str, str, str], tuple[str, int]] = {}
    for (method, template), (least, scoped) in ROUTES.items():
        path = template.format(**PARAMS)
        for caller, headers in callers.items():
            if method == "GET":
                response = api.client.get(path, headers=headers, params={"a": "v1", "b": "v1"})
            else:
                response = api.client.post(path, headers=headers, json={})
            assert response.status_code < 500, (method, path, caller, response.text)
            outcomes[(method, template, caller)] = (
                _expected(caller, least, scoped),
                response.status_code,
            )
    wrong = {
        k: v
        for k, v in outcomes.items()
        if (v[0] == "allowed" and v[1] in (401, 403)) or (v[0] != "allowed" and str(v[1]) != v[0])
    }
    assert wrong == {}
    assert len(outcomes) == len(ROUTES) * len(callers) == 38 * 11
    # The matrix exercised all three outcomes for real.
    assert {v[1] for v in outcomes.values()} >= {401, 403, 200}
