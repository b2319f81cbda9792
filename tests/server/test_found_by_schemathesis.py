"""What schemathesis found, pinned as plain tests."""

from __future__ import annotations

from _api_support import Api


def test_a_plan_with_a_control_character_is_a_422_not_a_500(api: Api) -> None:
    response = api.post("/api/v1/plans/check", {"plan": "\x1f"}, "viewer")
    assert response.status_code == 422, response.text
    assert "is not allowed in YAML" in response.json()["detail"]
