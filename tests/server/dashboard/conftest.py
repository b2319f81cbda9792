"""Dashboard fixtures: the app over a fresh store (both backends) with a running rollout."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from _story import Story
from fastapi.testclient import TestClient

from policy_canary.clock import ManualClock
from policy_canary.server import create_app
from policy_canary.serving import Canary
from policy_canary.store import Store
from policy_canary.tokens import Tokens


@dataclass
class Dash:
    """A TestClient per role on one app, the story behind it, and the tokens' secrets."""

    app: object
    canary: Canary
    clock: ManualClock
    story: Story
    secrets: dict[str, str] = field(default_factory=dict)
    clients: list[TestClient] = field(default_factory=list)

    def browser(self, who: str | None = None, *, https: bool = False) -> TestClient:
        """A fresh client (its own cookie jar), logged in as ``who`` unless None."""
        base = "https://testserver" if https else "http://testserver"
        client = TestClient(self.app, base_url=base, raise_server_exceptions=False)  # type: ignore[arg-type]
        client.__enter__()
        self.clients.append(client)
        if who is not None:
            response = login(client, self.secrets[who])
            assert response.status_code == 303, response.text
        return client


def nonce(page: str) -> str:
    found = re.search(r'name="nonce" value="([^"]+)"', page)
    assert found, "the login form carries a nonce"
    return found.group(1)


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page carries a CSRF token"
    return found.group(1)


def login(client: TestClient, secret: str, target: str = "/") -> httpx.Response:
    form = client.get("/login").text
    return client.post(
        "/login",
        data={"token": secret, "nonce": nonce(form), "next": target},
        follow_redirects=False,
    )


@pytest.fixture
def dash(store: Store, clock: ManualClock) -> Iterator[Dash]:
    """The app over this test's store with a started rollout; viewer and operator tokens."""
    canary = Canary(store, clock=clock, background=False)
    story = Story(canary)
    app = create_app(canary, auth=True)
    made = Dash(app, canary, clock, story)
    tokens = Tokens(store, clock=clock)
    for role in ("viewer", "operator", "admin"):
        made.secrets[role] = tokens.create(f"{role}-token", role=role, actor="test").secret
    yield made
    for client in made.clients:
        client.__exit__(None, None, None)
    canary.close()
