"""The dashboard in a real browser: Debian's Chromium driven by Playwright, a real server.

The browser is ``/usr/bin/chromium`` (``apt-get install chromium``; Playwright's own browser
download is never used). With ``CI=true`` a missing browser fails the run; elsewhere these
tests are skipped with the reason. Each test saves a screenshot under pytest's temporary
directory; with ``POLICY_CANARY_SCREENSHOTS=docs`` the rollout page's full-page screenshot
is written to ``docs/dashboard-rollout.png`` (the one the README shows).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from _served import served
from _story import POLICY, Story

from policy_canary.clock import ManualClock
from policy_canary.controller import Incidents, RolloutState
from policy_canary.server import create_app
from policy_canary.server.dashboard import DEFAULT_LIFETIME
from policy_canary.serving import Canary
from policy_canary.store import Store
from policy_canary.tokens import Tokens

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DOCS = Path(__file__).resolve().parents[3] / "docs"
IN_CI = os.environ.get("CI", "").lower() == "true"
#: Bounds every wait on the browser or the server (a real page, a real event stream).
WAIT_MS = 15_000

playwright_api = pytest.importorskip("playwright.sync_api") if not IN_CI else None
if playwright_api is None:
    import playwright.sync_api as playwright_api  # CI: a missing package fails, never skips

expect = playwright_api.expect
expect.set_options(timeout=WAIT_MS)
Page = playwright_api.Page


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Chromium from Debian, headless."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if IN_CI:
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@dataclass
class Site:
    """A served dashboard over a fresh SQLite store, its story and its tokens."""

    url: str
    canary: Canary
    clock: ManualClock
    story: Story
    secrets: dict[str, str]
    shots: Path
    browser: object

    def page(self, who: str, *, width: int = 1280, height: int = 900) -> Page:
        """A new browser context (its own cookies), logged in as ``who``."""
        context = self.browser.new_context(viewport={"width": width, "height": height})  # type: ignore[attr-defined]
        context.set_default_timeout(WAIT_MS)
        page: Page = context.new_page()
        page.goto(f"{self.url}/")
        expect(page).to_have_url(f"{self.url}/login?next=%2F")
        page.get_by_label("API token").fill(self.secrets[who])
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        return page

    def shot(self, page: Page, name: str, *, full: bool = True) -> Path:
        path = self.shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=full)
        return path


@pytest.fixture
def site(
    browser: object, tmp_path: Path, clock: ManualClock, request: pytest.FixtureRequest
) -> Iterator[Site]:
    store = Store.open(f"sqlite:///{tmp_path}/dashboard.db")
    canary = Canary(store, clock=clock, background=False)
    app = create_app(canary, auth=True)
    tokens = Tokens(store, clock=clock)
    secrets = {r: tokens.create(f"{r}-token", role=r, actor="test").secret
               for r in ("viewer", "operator")}  # fmt: skip
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with served(app) as url:
        yield Site(url, canary, clock, Story(canary), secrets, shots, browser)
    canary.close()
    store.close()


def _rollout_url(site: Site) -> str:
    return f"{site.url}/rollouts/{site.story.rollout_id}"


def test_operator_logs_in_and_sees_the_overview(site: Site) -> None:
    site.story.begin()
    page = site.page("operator")
    row = page.locator(f"tr[data-policy='{POLICY}']")
    expect(row).to_contain_text("v2")
    expect(row).to_contain_text("stage 1/2 canary at 20.0%")
    expect(page.locator("header .who")).to_contain_text("operator-token")
    site.shot(page, "overview")


def test_a_running_rollout_moves_when_the_controller_ticks(site: Site) -> None:
    site.story.begin()
    site.story.traffic(150)
    site.story.tick()
    page = site.page("operator")
    page.goto(_rollout_url(site))
    expect(page.locator("body")).to_have_attribute("data-live-connected", "1")
    expect(page.locator(".summary .share")).to_have_text("20.0%")
    page.evaluate("window.__notReloaded = true")
    for _ in range(6):  # bounded: the plan advances after 10 minutes and 40 requests per arm
        site.story.traffic(150)
        if site.story.tick().rollout.stage_index == 1:
            break
    expect(page.locator(".summary .share")).to_have_text("50.0%")
    expect(page.locator(".timeline .stage-current")).to_contain_text("validation")
    assert page.evaluate("window.__notReloaded") is True  # updated in place, not reloaded
    site.shot(page, "rollout-live")


def test_a_guardrail_breach_is_drawn_and_explained(site: Site) -> None:
    site.story.begin()
    status = None
    for _ in range(12):  # bounded: a 25% error rate against 2% breaches within a few ticks
        site.story.traffic(60, candidate_errors=0.25)
        status = site.story.tick()
        if status.rollout.state is RolloutState.ROLLED_BACK:
            break
    assert status is not None
    assert status.rollout.state is RolloutState.ROLLED_BACK
    page = site.page("operator")
    page.goto(_rollout_url(site))
    card = page.locator("article.guardrail-breach[data-guardrail='error_rate']")
    expect(card.locator(".badge-breach")).to_have_text("breach")
    expect(card.locator(".reason")).to_contain_text("e-value")
    expect(card.locator(".reason")).to_contain_text("on the candidate vs")
    expect(card.locator("dl.evidence")).to_contain_text("threshold ratio")
    expect(card.locator("[data-figure='error_rate']")).to_have_attribute("data-drawn", "6")
    expect(card.locator("[data-figure='error_rate'] .main-svg").first).to_be_visible()
    card.locator("summary", has_text="Numbers behind the chart").click()
    expect(card.locator("table tbody tr").last).to_contain_text("breach")
    expect(page.locator(".end-reason")).to_contain_text("rolling back")
    path = site.shot(page, "rollout-breach")
    if os.environ.get("POLICY_CANARY_SCREENSHOTS") == "docs":
        shutil.copyfile(path, DOCS / "dashboard-rollout.png")


def test_operator_rolls_back_with_a_reason_and_sees_the_incident(site: Site) -> None:
    site.story.begin()
    site.story.traffic(100)
    site.story.tick()
    page = site.page("operator")
    page.goto(_rollout_url(site))
    summary = page.locator("details.action-rollback summary")
    summary.focus()
    page.keyboard.press("Enter")  # the controls are reachable from the keyboard
    form = page.locator("details.action-rollback form")
    form.get_by_label("Reason").fill("answers got worse in support chats")
    form.get_by_label("I confirm: roll back support-agent").check()
    form.get_by_role("button", name="Roll back support-agent").click()
    expect(page.locator(".notice")).to_have_text(
        "Rolled back: traffic is back on the stable version."
    )
    expect(page.locator(".summary")).to_contain_text("rolled back")
    page.get_by_role("link", name="incident").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Incident inc_")
    expect(page.locator(".incident-summary")).to_contain_text("answers got worse")
    page.get_by_role("button", name="Replay the decision").click()
    expect(page.locator(".replay")).to_contain_text("decide() decides the same")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download export (JSON)").click()
    assert download.value.suggested_filename.startswith("inc_")
    incident = Incidents(site.canary.store).list()[0]
    assert incident.summary in page.locator(".incident-summary").inner_text()
    site.shot(page, "incident")


def test_viewer_finds_no_actions(site: Site) -> None:
    site.story.begin()
    page = site.page("viewer")
    page.goto(_rollout_url(site))
    expect(page.locator("h1")).to_contain_text("support-agent: v2")
    expect(page.locator("form[action*='/actions/']")).to_have_count(0)
    expect(page.get_by_role("heading", name="Actions")).to_have_count(0)
    page.goto(f"{site.url}/policies/{POLICY}")
    expect(page.locator("form[action*='/actions/']")).to_have_count(0)
    # The viewer's own session and CSRF token still cannot act: the role decides.
    status = page.evaluate(
        """async () => {
            const csrf = document.querySelector("input[name=csrf]").value;
            const body = new URLSearchParams({csrf, reason: "forged", confirm: "yes"});
            const r = await fetch("/policies/support-agent/actions/rollback",
                                  {method: "POST", body});
            return r.status;
        }"""
    )
    assert status == 403
    assert site.canary.rollouts.get(site.story.rollout_id).rollout.state is RolloutState.RUNNING
    site.shot(page, "viewer")


def test_a_forged_action_post_without_the_csrf_token_is_refused(site: Site) -> None:
    site.story.begin()
    page = site.page("operator")
    page.goto(_rollout_url(site))
    status = page.evaluate(
        """async () => {
            const body = new URLSearchParams({reason: "forged", confirm: "yes"});
            const r = await fetch("/policies/support-agent/actions/pause",
                                  {method: "POST", body});
            return [r.status, await r.text()];
        }"""
    )
    assert status[0] == 403
    assert "CSRF token is missing" in status[1]
    assert site.canary.rollouts.get(site.story.rollout_id).rollout.state is RolloutState.RUNNING
    page.set_content(status[1])
    site.shot(page, "forged-post")


def test_an_expired_session_returns_to_login(site: Site) -> None:
    site.story.begin()
    page = site.page("operator")
    expect(page.locator("body")).to_have_attribute("data-live-connected", "1")
    site.clock.advance(DEFAULT_LIFETIME + timedelta(minutes=1))
    # The live page notices by itself: its stream ends, the reconnect is refused.
    expect(page).to_have_url(f"{site.url}/login?next=%2F&ended=1")
    expect(page.locator(".notice")).to_have_text("Your session has ended; log in again.")
    site.shot(page, "expired")


def test_the_rollout_page_fits_a_phone(site: Site) -> None:
    site.story.begin()
    for _ in range(2):
        site.story.traffic(100)
        site.story.tick()
    page = site.page("operator", width=390, height=844)
    page.goto(_rollout_url(site))
    expect(page.locator("[data-figure='error_rate']")).to_have_attribute("data-drawn", "6")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone"
    site.shot(page, "rollout-phone")
    site.shot(page, "rollout-phone-top", full=False)
