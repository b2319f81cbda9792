"""A small real rollout for dashboard tests: SDK traffic, the statistical monitors, ticks."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

from policy_canary.controller import RolloutStatus
from policy_canary.plan import RolloutPlan
from policy_canary.serving import Canary

POLICY = "support-agent"
#: A version message and a reason full of markup and control characters (never rendered raw).
NASTY = '<script>alert("x")</script><b>bold</b> & \x1b[31mred\x07 "quoted"'

PLAN = """\
alpha: 0.01
guardrails:
  - {name: error_rate, metric: error, max_increase: 20%, min_samples: 30}
  - {name: latency, metric: latency_ms, statistic: mean, max_increase: 25%, min_samples: 30}
stages:
  - {name: canary, traffic: 20, min_duration: 10m, min_samples: 40}
  - {name: validation, traffic: 50, strict: true, min_duration: 10m, min_samples: 80}
"""


@dataclass
class Story:
    """A policy with two versions and a running rollout, driven by hand."""

    canary: Canary
    rollout_id: str = ""
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    served: int = 0

    def begin(self, *, message: str = "a concise prompt") -> str:
        registry = self.canary.registry
        registry.register(
            POLICY, {"prompt": "You help.", "tools": ["search"]}, message="baseline", author="alice"
        )
        registry.register(
            POLICY,
            {"prompt": "You help, briefly.", "tools": ["search", "refund"]},
            message=message,
            author="bob",
        )
        row = self.canary.rollouts.start(
            POLICY,
            candidate="v2",
            plan=RolloutPlan.loads(PLAN, source="plan"),
            actor="carol",
            reason="try the concise prompt",
            salt="5a17" * 8,  # a fixed salt: the same users reach the candidate on every run
        )
        self.canary.refresh_now()
        self.rollout_id = row.id
        return row.id

    def traffic(self, requests: int, *, candidate_errors: float = 0.02) -> None:
        """``requests`` through the gate; the candidate errs at ``candidate_errors``."""
        gate = self.canary.gate(POLICY)
        for _ in range(requests):
            self.served += 1
            decision = gate.route(f"user-{self.served}")
            rate = candidate_errors if decision.arm.value == "candidate" else 0.02
            decision.record(
                error=self.rng.random() < rate, latency_ms=800 + 400 * self.rng.random()
            )
        self.canary.flush()

    def tick(self, minutes: float = 5) -> RolloutStatus:
        """Let ``minutes`` pass, then one controller tick."""
        self.canary.rollouts.clock.advance(timedelta(minutes=minutes))  # type: ignore[attr-defined]
        self.canary.tick()
        self.canary.refresh_now()
        return self.canary.rollouts.get(self.rollout_id)
