"""Drives simulated traffic through the real SDK: route, run the agent, record, late feedback."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from policy_canary.serving import Canary, Gate
from policy_canary.simulate._agent import SimulatedAgent, daily_rate


@dataclass
class TrafficStats:
    """Requests served per version label and arm, and feedback delivered."""

    by_version: Counter[str] = field(default_factory=Counter)
    by_arm: Counter[str] = field(default_factory=Counter)
    feedback: int = 0


class TrafficDriver:
    """Sends a day-shaped stream of requests from a user population through one gate.

    Each request routes by user id (sticky), runs the simulated agent of the version it was
    given, and records what happened; the quality score arrives later through
    :meth:`Canary.feedback`, as an LLM judge's would.
    """

    def __init__(
        self,
        canary: Canary,
        gate: Gate,
        specs: Mapping[str, Mapping[str, Any]],
        *,
        rng: np.random.Generator,
        base_rps: float,
        users: int = 20_000,
        feedback_delay: tuple[float, float] = (120.0, 1200.0),
        judged_share: float = 0.25,
    ) -> None:
        self.canary = canary
        self.gate = gate
        self.agents = {version_id: SimulatedAgent(spec) for version_id, spec in specs.items()}
        self.rng = rng
        self.base_rps = base_rps
        self.users = [f"user-{i:05d}" for i in range(users)]
        # Some users write in far more often than others; no single one dominates the share.
        activity = rng.lognormal(0.0, 1.0, size=users)
        self.activity = activity / activity.sum()
        self.feedback_delay = feedback_delay
        # An LLM judge scores a sample of conversations, as teams do to bound its cost.
        self.judged_share = judged_share
        self.pending: list[tuple[datetime, int, str, float]] = []
        self.stats = TrafficStats()
        self._seq = 0

    def run(self, start: datetime, seconds: float) -> int:
        """Serve the requests of ``seconds`` starting at ``start``; return how many."""
        seconds_into_day = (start.hour * 3600 + start.minute * 60 + start.second) % 86_400
        rate = daily_rate(self.base_rps, seconds_into_day)
        count = int(self.rng.poisson(rate * seconds))
        if count == 0:
            return 0
        picks = self.rng.choice(len(self.users), size=count, p=self.activity)
        low, high = self.feedback_delay
        delays = self.rng.uniform(low, high, size=count)
        judged = self.rng.random(size=count) < self.judged_share
        for user_index, delay, is_judged in zip(
            picks.tolist(), delays.tolist(), judged.tolist(), strict=True
        ):
            decision = self.gate.route(self.users[user_index])
            outcome = self.agents[decision.version.id].request(self.rng)
            decision.record(
                latency_ms=outcome.latency_ms,
                error=outcome.error,
                safety_flags=outcome.safety_flags,
                cost_usd=outcome.cost_usd,
                input_tokens=outcome.input_tokens,
                output_tokens=outcome.output_tokens,
                model=outcome.model,
            )
            self.stats.by_version[decision.version.label] += 1
            self.stats.by_arm[decision.arm.value] += 1
            if is_judged:
                self._seq += 1
                due = start + timedelta(seconds=delay)
                item = (due, self._seq, decision.decision_id, outcome.quality)
                heapq.heappush(self.pending, item)
        return count

    def deliver_feedback(self, now: datetime) -> int:
        """Send every quality score whose judge has finished by ``now``."""
        sent = 0
        while self.pending and self.pending[0][0] <= now:
            _, _, decision_id, quality = heapq.heappop(self.pending)
            self.canary.feedback(decision_id, quality=quality)
            sent += 1
        self.stats.feedback += sent
        return sent
