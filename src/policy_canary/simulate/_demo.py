"""The demo story, run through the real SDK, store, monitors, controller and alerts.

v1 is stable. v2 — a cheaper, more concise prompt that is just as good — is rolled out with
the default plan and promoted through every stage. v3 — a tool-policy change that lets the
agent issue refunds and browse the web — raises failures and safety flags and is rolled back
automatically at an early stage, with an alert and an incident. A manual clock makes hours of
traffic take seconds; with the system clock it runs in real time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from policy_canary.alerts import Dispatcher
from policy_canary.clock import Clock, ManualClock
from policy_canary.controller import Incidents, RolloutStatus
from policy_canary.errors import CanaryError
from policy_canary.plan import RolloutPlan
from policy_canary.serving import Canary
from policy_canary.simulate._traffic import TrafficDriver

POLICY = "support-agent"

V1: dict[str, Any] = {
    "model": "gpt-large",
    "prompt": (
        "You are a careful support agent for Acme. Read the customer's message, search the "
        "help centre, and answer in full sentences, explaining each step you recommend and "
        "citing the help-centre article you used. Open a ticket when you cannot resolve it."
    ),
    "tools": {"allowed": ["search_kb", "create_ticket"], "max_calls": 4},
    "memory": {"window_turns": 12},
}
V2: dict[str, Any] = {
    **V1,
    "prompt": (
        "You are a concise support agent for Acme. Search the help centre, answer in at most "
        "three sentences and cite the article. Open a ticket when you cannot resolve it."
    ),
}
V3: dict[str, Any] = {
    **V2,
    "tools": {
        "allowed": ["search_kb", "create_ticket", "issue_refund", "browse_web"],
        "max_calls": 8,
    },
}


@dataclass(frozen=True, slots=True)
class Progress:
    """What the demo shows after each controller tick."""

    chapter: str
    sim_time: datetime
    sim_elapsed: timedelta
    status: RolloutStatus
    requests: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Chapter:
    """How one rollout of the story ended."""

    title: str
    candidate: str
    rollout_id: str
    state: str
    stage: str
    reason: str
    sim_duration: timedelta
    requests: Mapping[str, int]
    incident_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "title": self.title,
            "candidate": self.candidate,
            "rollout_id": self.rollout_id,
            "state": self.state,
            "stage": self.stage,
            "reason": self.reason,
            "sim_duration_seconds": int(self.sim_duration.total_seconds()),
            "requests": dict(self.requests),
            "incident_id": self.incident_id,
        }


@dataclass
class DemoReport:
    """The whole story's outcome."""

    chapters: list[Chapter] = field(default_factory=list)
    alerts_delivered: int = 0
    alerts_pending: int = 0
    requests: int = 0
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "chapters": [c.to_dict() for c in self.chapters],
            "alerts_delivered": self.alerts_delivered,
            "alerts_pending": self.alerts_pending,
            "requests": self.requests,
            "wall_seconds": round(self.wall_seconds, 2),
        }


class DemoScenario:
    """Runs the story on ``canary``; ``on_progress`` sees every tick."""

    def __init__(
        self,
        canary: Canary,
        clock: Clock,
        dispatcher: Dispatcher,
        *,
        seed: int = 7,
        base_rps: float = 10.0,
        tick_every: timedelta = timedelta(minutes=5),
        chapter_limit: timedelta = timedelta(hours=48),
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.canary = canary
        self.clock = clock
        self.dispatcher = dispatcher
        self.rng = np.random.default_rng(seed)
        self.base_rps = base_rps
        self.tick_every = tick_every
        self.chapter_limit = chapter_limit
        self.on_progress = on_progress or (lambda _progress: None)
        self.report = DemoReport()

    def run(self) -> DemoReport:
        """Tell the whole story and return how it ended."""
        started = time.monotonic()
        registry = self.canary.registry
        specs = {}
        for spec, message in ((V1, "baseline"), (V2, "concise prompt"), (V3, "refunds + web")):
            version = registry.register(POLICY, spec, message=message, author="demo").version
            specs[version.id] = spec
        gate = self.canary.gate(POLICY)
        self.driver = TrafficDriver(self.canary, gate, specs, rng=self.rng, base_rps=self.base_rps)
        self._serve(timedelta(minutes=30))  # stable's recent traffic: the baseline snapshot
        self.report.chapters.append(
            self._chapter("v2: a cheaper prompt, just as good", "v2", "cheaper prompt")
        )
        self.report.chapters.append(
            self._chapter("v3: a riskier tool policy", "v3", "let the agent refund and browse")
        )
        self._dispatch()
        self.report.requests = sum(self.driver.stats.by_arm.values())
        self.report.wall_seconds = time.monotonic() - started
        return self.report

    def _chapter(self, title: str, candidate: str, reason: str) -> Chapter:
        rollouts = self.canary.rollouts
        self.canary.flush()  # stable's recent events must be stored: they are the baseline
        rollout = rollouts.start(
            POLICY,
            candidate=candidate,
            plan=RolloutPlan.default(),
            actor="demo",
            reason=reason,
            # Drawn from the seed, so the same seed tells the same story, request for request.
            salt=self.rng.bytes(16).hex(),
        )
        self.canary.refresh_now()
        begin = self.clock.now()
        before = dict(self.driver.stats.by_arm)
        status = rollouts.get(rollout.id)
        while status.rollout.state.is_active():
            if self.clock.now() - begin > self.chapter_limit:
                raise CanaryError(
                    f"demo: rollout of {candidate} still {status.rollout.state.value} after "
                    f"{self.chapter_limit}; the simulation or the plan changed"
                )
            self._serve(self.tick_every)
            self.canary.tick()
            self._dispatch()
            status = rollouts.get(rollout.id)
            requests = self._since(before)
            self.on_progress(
                Progress(title, self.clock.now(), self.clock.now() - begin, status, requests)
            )
        incident_id = None
        incidents = Incidents(self.canary.store).list(policy=POLICY, limit=20)
        for incident in incidents:
            if incident.rollout_id == rollout.id:
                incident_id = incident.id
        last = status.last_action or {}
        return Chapter(
            title=title,
            candidate=candidate,
            rollout_id=rollout.id,
            state=status.rollout.state.value,
            stage=status.stage.name,
            reason=str(last.get("reason") or status.rollout.end_reason or ""),
            sim_duration=self.clock.now() - begin,
            requests=self._since(before),
            incident_id=incident_id,
        )

    def _since(self, before: Mapping[str, int]) -> dict[str, int]:
        """Requests served per arm since the ``before`` snapshot of the counters."""
        now = self.driver.stats.by_arm
        return {arm: now[arm] - before.get(arm, 0) for arm in ("stable", "candidate")}

    def _serve(self, span: timedelta) -> None:
        if isinstance(self.clock, ManualClock):
            self.driver.run(self.clock.now(), span.total_seconds())
            self.clock.advance(span)
        else:
            # On the wall clock, pace the traffic second by second, as real users would.
            end = self.clock.now() + span
            while (now := self.clock.now()) < end:
                self.driver.run(now, 1.0)
                self.driver.deliver_feedback(now)
                time.sleep(max(0.0, 1.0 - (self.clock.now() - now).total_seconds()))
        self.driver.deliver_feedback(self.clock.now())

    def _dispatch(self) -> None:
        report = self.dispatcher.dispatch_once()
        self.report.alerts_delivered += report.delivered
        self.report.alerts_pending = report.pending
