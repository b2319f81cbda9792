"""Helpers for the server tests: the Api harness, specs, pushing a version."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from fastapi.testclient import TestClient

from policy_canary.clock import ManualClock
from policy_canary.server import Limits, create_app
from policy_canary.serving import Canary
from policy_canary.store import Store
from policy_canary.tokens import Tokens

ROLES = ("viewer", "agent", "operator", "admin")


@dataclass
class Api:
    """A TestClient on the app plus the secrets of one token per role."""

    client: TestClient
    canary: Canary
    store: Store
    clock: ManualClock
    secrets: dict[str, str] = field(default_factory=dict)

    def headers(self, who: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        out = dict(extra or {})
        if who is not None:
            out["Authorization"] = f"Bearer {self.secrets.get(who, who)}"
        return out

    def get(self, path: str, who: str | None = "admin", **kw: Any) -> httpx.Response:
        return self.client.get(path, headers=self.headers(who, kw.pop("headers", None)), **kw)

    def post(
        self, path: str, body: Any = None, who: str | None = "admin", **kw: Any
    ) -> httpx.Response:
        headers = self.headers(who, kw.pop("headers", None))
        if body is not None:
            kw["json"] = body
        return self.client.post(path, headers=headers, **kw)

    def token(self, name: str, role: str, **kw: Any) -> str:
        created = Tokens(self.store, clock=self.clock).create(name, role=role, actor="test", **kw)
        self.secrets[name] = created.secret
        return created.secret


def make_api(
    store: Store, clock: ManualClock, *, limits: Limits | None = None, buffer_size: int = 100_000
) -> Iterator[Api]:
    canary = Canary(store, clock=clock, background=False, buffer_size=buffer_size)
    # Streams end quickly here: a TestClient reads a response to its end.
    app = create_app(canary, auth=True, limits=limits or Limits(stream_seconds=0.2))
    with TestClient(app, raise_server_exceptions=False) as client:
        api = Api(client, canary, store, clock)
        for role in ROLES:
            api.secrets[role] = api.token(f"{role}-token", role)
        yield api
    canary.close()


SPEC_V1 = {"prompt": "You are a helpful support agent.", "tools": ["search"]}
SPEC_V2 = {"prompt": "You are a concise support agent.", "tools": ["search", "refund"]}
HOUR = timedelta(hours=1)


def push(api: Api, name: str = "support-agent", spec: dict[str, Any] | None = None) -> Any:
    response = api.post(f"/api/v1/policies/{name}/versions", {"spec": spec or SPEC_V1}, "operator")
    assert response.status_code == 201, response.text
    return response.json()
