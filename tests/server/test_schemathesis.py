"""schemathesis against the served OpenAPI document: no 5xx, every response as documented.

A bounded number of generated requests per operation (``EXAMPLES``), as an admin, over a
store holding a policy with a running rollout, so most routes have something to act on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from _serving import seed_policy, start_rollout
from policy_canary.clock import ManualClock
from policy_canary.server import OPENAPI_URL, Limits, create_app
from policy_canary.serving._canary import Canary
from policy_canary.store import Store
from policy_canary.tokens import Tokens

EXAMPLES = 10
_ADMIN: dict[str, str] = {}


@pytest.fixture
def served_schema(sqlite_url: str) -> Iterator[Any]:
    clock = ManualClock()
    store = Store.open(sqlite_url)
    stable, candidate = seed_policy(store, clock)
    start_rollout(store, clock, baseline=stable, candidate=candidate, traffic_bp=1_000)
    _ADMIN["secret"] = Tokens(store, clock=clock).create("admin", role="admin", actor="t").secret
    canary = Canary(store, clock=clock, background=False)
    app = create_app(canary, limits=Limits(stream_seconds=0.05))
    yield schemathesis.openapi.from_asgi(OPENAPI_URL, app)
    app.state.server.watch.close()
    canary.close()
    store.close()


def test_no_server_error_and_every_response_conforms(served_schema: Any) -> None:
    failures: dict[str, str] = {}
    operations = [result.ok() for result in served_schema.get_all_operations()]
    assert len(operations) >= 36

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {_ADMIN['secret']}"},
                checks=[not_a_server_error, response_schema_conformance],
            )

        try:
            check()
        except Exception as failure:  # collected, so one run reports every operation
            failures[operation.label] = str(failure)[:2000]
    assert failures == {}
