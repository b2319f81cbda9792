"""What every route shares: running a mutation once per idempotency key, and rendering it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request
from starlette.responses import Response

from policy_canary.server._auth import Principal
from policy_canary.server._idempotency import request_hash
from policy_canary.server._render import render_json
from policy_canary.server._state import server_state

#: Documents the header on every mutation.
IDEMPOTENCY_HEADER = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": 200},
            "description": "Retrying with the same key returns the first response; never acts "
            "twice.",
        }
    ]
}


def mutation(
    request: Request,
    principal: Principal,
    raw: bytes,
    act: Callable[[], Any],
    *,
    status: int = 200,
    refresh: bool = True,
) -> Response:
    """Run ``act`` (a library call) at most once per ``Idempotency-Key``, then render it.

    The server's own routing tables are refreshed afterwards (unless ``refresh`` is False:
    writing events changes no routing), so its next OFREP evaluation sees what the mutation
    changed.
    """
    state = server_state(request)
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    key = request.headers.get("idempotency-key")
    (code, data), replayed = state.idempotency.run(
        actor=principal.actor,
        key=key,
        # Only a keyed request is compared with an earlier one; hashing a 16 MB batch of
        # events without a key would cost time for nothing.
        fingerprint=request_hash(request.method, target, raw) if key is not None else "",
        act=lambda: (status, act()),
    )
    if refresh:
        state.canary.refresh_now()
    return render_json(
        data, status=code, headers={"Idempotent-Replayed": "true"} if replayed else {}
    )


def with_extra(*parts: dict[str, Any]) -> dict[str, Any]:
    """Merge ``openapi_extra`` fragments."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                merged[key] = value
    return merged
