"""The dashboard's pages and forms through the real app and store (both backends)."""

from __future__ import annotations

import re
from datetime import timedelta

from _story import NASTY, POLICY

from conftest import Dash, csrf, login
from policy_canary.controller import RolloutState
from policy_canary.server.dashboard import COOKIE, DEFAULT_LIFETIME


def test_pages_need_a_login(dash: Dash) -> None:
    dash.story.begin()
    client = dash.browser()
    for path in ("/", f"/rollouts/{dash.story.rollout_id}", f"/policies/{POLICY}", "/alerts"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")


def test_login_sets_a_strict_httponly_cookie_and_returns_to_the_page(dash: Dash) -> None:
    client = dash.browser()
    response = login(client, dash.secrets["viewer"], "/alerts")
    assert response.status_code == 303
    assert response.headers["location"] == "/alerts"
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith(COOKIE))
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" not in cookie
    assert dash.secrets["viewer"] not in cookie  # the cookie is a session id, not the token


def test_the_cookie_is_secure_over_tls(dash: Dash) -> None:
    client = dash.browser(https=True)
    response = login(client, dash.secrets["viewer"])
    cookie = next(h for h in response.headers.get_list("set-cookie") if h.startswith(COOKIE))
    assert "Secure" in cookie


def test_a_wrong_token_is_refused_with_the_reason(dash: Dash) -> None:
    client = dash.browser()
    response = login(client, "pc_not-a-token")
    assert response.status_code == 401
    assert "unknown token" in response.text
    assert COOKIE not in client.cookies


def test_login_without_the_forms_nonce_is_refused(dash: Dash) -> None:
    client = dash.browser()
    response = client.post(
        "/login", data={"token": dash.secrets["admin"], "nonce": "forged"}, follow_redirects=False
    )
    assert response.status_code == 401
    assert COOKIE not in client.cookies


def test_login_goes_back_to_this_site_only(dash: Dash) -> None:
    client = dash.browser()
    response = login(client, dash.secrets["viewer"], "//evil.example/")
    assert response.headers["location"] == "/"


def test_the_session_expires_on_the_servers_clock(dash: Dash) -> None:
    client = dash.browser("viewer")
    assert client.get("/", follow_redirects=False).status_code == 200
    dash.clock.advance(DEFAULT_LIFETIME + timedelta(seconds=1))
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 303
    assert "ended=1" in response.headers["location"]
    assert "Your session has ended" in client.get(response.headers["location"]).text


def test_revoking_the_token_ends_its_sessions(dash: Dash) -> None:
    from policy_canary.tokens import Tokens

    client = dash.browser("viewer")
    Tokens(dash.canary.store, clock=dash.clock).revoke("viewer-token", actor="test")
    dash.clock.advance(timedelta(seconds=5))  # past the server's token cache
    dash.app.state.server.token_cache.clear()  # type: ignore[attr-defined]
    assert client.get("/", follow_redirects=False).status_code == 303


def test_logout_ends_the_session(dash: Dash) -> None:
    client = dash.browser("viewer")
    page = client.get("/").text
    response = client.post("/logout", data={"csrf": csrf(page)}, follow_redirects=False)
    assert response.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


def test_overview_shows_the_policy_and_its_rollout(dash: Dash) -> None:
    dash.story.begin()
    dash.story.traffic(100)
    dash.story.tick()
    page = dash.browser("viewer").get("/").text
    assert f'data-policy="{POLICY}"' in page
    assert "stage 1/2 canary at 20.0%" in page
    assert "start by <strong>carol</strong>" in page


def test_rollout_page_draws_every_guardrail_with_its_numbers(dash: Dash) -> None:
    dash.story.begin()
    for _ in range(3):
        dash.story.traffic(80)
        dash.story.tick()
    page = dash.browser("viewer").get(f"/rollouts/{dash.story.rollout_id}").text
    for name in ("error_rate", "latency"):
        assert f'data-figure="{name}"' in page
    assert "Numbers behind the chart (3 ticks)" in page
    figures = re.search(r'<script type="application/json" id="figures">(.*?)</script>', page, re.S)
    assert figures
    assert '"e-value"' in figures.group(1)
    assert '"tolerance"' in figures.group(1)
    assert "Frozen plan" in page
    assert "strict" in page


def test_viewer_sees_no_actions_and_a_forged_post_is_refused(dash: Dash) -> None:
    dash.story.begin()
    client = dash.browser("viewer")
    page = client.get(f"/rollouts/{dash.story.rollout_id}").text
    assert "/actions/" not in page
    assert "Actions" not in page
    response = client.post(
        f"/policies/{POLICY}/actions/rollback",
        data={"csrf": csrf(page), "reason": "forged", "confirm": "yes"},
    )
    assert response.status_code == 403
    assert "has role viewer" in response.text
    assert dash.canary.rollouts.get(dash.story.rollout_id).rollout.state is RolloutState.RUNNING


def test_an_action_without_the_csrf_token_is_refused(dash: Dash) -> None:
    dash.story.begin()
    client = dash.browser("operator")
    for form in (
        {"reason": "no token", "confirm": "yes"},
        {"reason": "wrong token", "confirm": "yes", "csrf": "guessed"},
    ):
        response = client.post(f"/policies/{POLICY}/actions/pause", data=form)
        assert response.status_code == 403
        assert "CSRF" in response.text
    assert dash.canary.rollouts.get(dash.story.rollout_id).rollout.state is RolloutState.RUNNING


def test_a_cross_site_form_is_refused(dash: Dash) -> None:
    dash.story.begin()
    client = dash.browser("operator")
    page = client.get(f"/rollouts/{dash.story.rollout_id}").text
    response = client.post(
        f"/policies/{POLICY}/actions/pause",
        data={"csrf": csrf(page), "reason": "x", "confirm": "yes"},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert dash.canary.rollouts.get(dash.story.rollout_id).rollout.state is RolloutState.RUNNING


def test_an_action_needs_a_reason_and_a_confirmation(dash: Dash) -> None:
    dash.story.begin()
    client = dash.browser("operator")
    token = csrf(client.get(f"/rollouts/{dash.story.rollout_id}").text)
    path = f"/policies/{POLICY}/actions/pause"
    response = client.post(path, data={"csrf": token, "reason": "  ", "confirm": "yes"})
    assert response.status_code == 400
    assert "give a reason" in response.text
    response = client.post(path, data={"csrf": token, "reason": "hold on"})
    assert response.status_code == 400
    assert "confirm" in response.text
    assert dash.canary.rollouts.get(dash.story.rollout_id).rollout.state is RolloutState.RUNNING


def test_operator_pauses_resumes_and_rolls_back(dash: Dash) -> None:
    dash.story.begin()
    client = dash.browser("operator")
    page = client.get(f"/rollouts/{dash.story.rollout_id}").text
    assert 'action="/policies/support-agent/actions/pause"' in page
    token = csrf(page)
    for verb, state in (
        ("pause", RolloutState.PAUSED),
        ("resume", RolloutState.RUNNING),
        ("rollback", RolloutState.ROLLED_BACK),
    ):
        response = client.post(
            f"/policies/{POLICY}/actions/{verb}",
            data={"csrf": token, "reason": f"{verb} it", "confirm": "yes"},
            follow_redirects=False,
        )
        assert response.status_code == 303, response.text
        assert response.headers["location"] == f"/rollouts/{dash.story.rollout_id}?done={verb}"
        assert dash.canary.rollouts.get(dash.story.rollout_id).rollout.state is state
    page = client.get(f"/rollouts/{dash.story.rollout_id}?done=rollback").text
    assert "Rolled back: traffic is back on the stable version." in page
    assert "/actions/" not in page  # nothing left to act on
    audit = dash.canary.store  # the actor is the token's name, as through the API
    from policy_canary.store._audit import audit_entries

    assert audit_entries(audit, limit=1)[0]["actor"] == "operator-token"


def test_incident_page_replays_and_exports(dash: Dash) -> None:
    dash.story.begin()
    dash.story.traffic(60)
    dash.story.tick()
    dash.canary.rollouts.rollback(POLICY, reason="bad answers", actor="test")
    incident = dash.canary.incidents.list()[0] if hasattr(dash.canary, "incidents") else None
    from policy_canary.controller import Incidents

    incident = Incidents(dash.canary.store).list()[0]
    client = dash.browser("viewer")
    page = client.get(f"/incidents/{incident.id}").text
    assert "bad answers" in page
    assert "Replay the decision" in page
    replayed = client.post(f"/incidents/{incident.id}/replay", data={"csrf": csrf(page)})
    assert replayed.status_code == 200
    assert "decide() decides the same" in replayed.text
    export = client.get(f"/incidents/{incident.id}/export")
    assert export.headers["content-disposition"] == f'attachment; filename="{incident.id}.json"'
    assert export.json()["bundle_hash"] == incident.bundle_hash


def test_policy_page_diffs_two_versions_side_by_side(dash: Dash) -> None:
    dash.story.begin()
    page = dash.browser("viewer").get(f"/policies/{POLICY}?a=v1&b=v2").text
    assert '<tr class="diff-changed">' in page
    assert "refund" in page
    assert "baseline" in page
    assert "alice" in page
    assert "Release history" in page


def test_user_text_is_escaped_and_control_characters_dropped(dash: Dash) -> None:
    dash.story.begin(message=NASTY)
    client = dash.browser("operator")
    token = csrf(client.get(f"/rollouts/{dash.story.rollout_id}").text)
    client.post(
        f"/policies/{POLICY}/actions/pause", data={"csrf": token, "reason": NASTY, "confirm": "yes"}
    )
    for path in (f"/policies/{POLICY}", f"/rollouts/{dash.story.rollout_id}", "/"):
        page = client.get(path).text
        assert "<script>alert" not in page
        assert "<b>bold</b>" not in page
        assert "\x1b" not in page
        assert "\x07" not in page
    assert (
        "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in client.get(f"/policies/{POLICY}").text
    )


def test_unknown_things_are_pages_not_tracebacks(dash: Dash) -> None:
    client = dash.browser("viewer")
    for path in ("/rollouts/ro_missing", "/incidents/inc_missing", "/policies/nope"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "text/html" in response.headers["content-type"]
        assert "Traceback" not in response.text
        assert "no " in response.text


def test_pages_carry_a_strict_content_security_policy(dash: Dash) -> None:
    response = dash.browser("viewer").get("/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy


def test_plotly_is_served_from_the_installed_package(dash: Dash) -> None:
    from policy_canary.server.dashboard._assets import plotly_path

    client = dash.browser()
    response = client.get("/static/plotly.min.js")
    path = plotly_path()
    assert path is not None
    assert response.status_code == 200
    assert response.content == path.read_bytes()
    again = client.get("/static/plotly.min.js", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


def test_alerts_page_lists_deliveries(dash: Dash) -> None:
    dash.story.begin()
    dash.canary.rollouts.rollback(POLICY, reason="stop", actor="test")
    page = dash.browser("viewer").get("/alerts").text
    assert "rollback" in page
    assert "no dispatcher has seen it yet" in page
    pending = dash.browser("viewer").get("/alerts?status=delivered").text
    assert "No alerts delivered" in pending
