"""Metrics coverage: does stable's recent traffic carry each guardrail's metric?

A guardrail on a metric nobody records can never pass: its stage holds until it pauses hours
later. ``rollout start`` and ``plan check`` ask this up front, from the same recent events the
baseline summarises (and the late feedback on them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policy_canary.guardrails import Guardrail, GuardrailKind, ModelPrice
from policy_canary.monitoring._observations import MonitorEvent, observe


@dataclass(frozen=True, slots=True)
class MetricCoverage:
    """Whether one guardrail's metric appears in stable's recent traffic, with the counts."""

    guardrail: str
    metric: str
    requests: int
    observations: int

    @property
    def covered(self) -> bool:
        """True when at least one of stable's recent requests (or its feedback) carried it."""
        return self.observations > 0

    def message(self) -> str:
        """One sentence for people: what was seen and, when nothing was, what to do."""
        if self.covered:
            return (
                f"{self.guardrail}: {self.metric} on {self.observations:,} of stable's "
                f"{self.requests:,} recent requests"
            )
        if self.requests == 0:
            return (
                f"{self.guardrail}: stable has no recent traffic, so whether it records "
                f"{self.metric} cannot be checked yet"
            )
        return (
            f"{self.guardrail}: none of stable's {self.requests:,} recent requests carried "
            f"{self.metric}; record {self.metric} or drop this guardrail, or it will hold "
            "every stage until the stage's max_duration"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``metrics_coverage`` in ``--json`` and the API)."""
        return {
            "guardrail": self.guardrail,
            "metric": self.metric,
            "requests": self.requests,
            "observations": self.observations,
            "covered": self.covered,
            "message": self.message(),
        }


def metrics_coverage(
    guardrails: Sequence[Guardrail],
    events: Iterable[MonitorEvent],
    *,
    prices: Mapping[str, ModelPrice] | None = None,
) -> tuple[MetricCoverage, ...]:
    """Per guardrail, how many of stable's recent ``events`` (requests and feedback) carry it."""
    prices = prices or {}
    batch = list(events)
    requests = sum(not e.feedback for e in batch)
    rows = []
    for g in guardrails:
        if g.kind is GuardrailKind.TRIPWIRE:
            # A tripwire reads the flags of every request: no flags is an observation too.
            seen = requests
        else:
            seen = sum(observe(g.metric, e, prices, g.flags) is not None for e in batch)
        rows.append(MetricCoverage(g.name, g.metric, requests, seen))
    return tuple(rows)


def uncovered(rows: Iterable[MetricCoverage]) -> list[MetricCoverage]:
    """The rows whose metric stable's recent traffic did not carry."""
    return [r for r in rows if not r.covered]
