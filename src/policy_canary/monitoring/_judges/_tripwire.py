"""Tripwires: a flagged candidate event breaches at once, with no statistics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from policy_canary.guardrails import Guardrail
from policy_canary.monitoring._judges._base import Bools, Ints, Judge, Setup, Values
from policy_canary.monitoring._verdict import Verdict, VerdictStatus


class TripwireJudge(Judge):
    """A candidate event carrying a listed safety flag breaches at once, with no statistics."""

    reads_times = True

    def __init__(self, base: Guardrail, setup: Setup) -> None:
        self.base, self.setup = base, setup
        self.count = 0
        self.first_at: str | None = None
        self.seen: set[str] = set()

    def fold(self, cand: Bools, bp: Ints, values: Values, ats: Sequence[datetime]) -> None:
        """Count candidate events whose flags intersect the tripwire's."""
        for is_cand, flags, at in zip(cand.tolist(), values, ats, strict=True):
            if is_cand and flags:
                self.count += 1
                self.seen.update(flags)
                if self.first_at is None:
                    self.first_at = at.isoformat()

    def verdict(self, g: Guardrail) -> Verdict:
        """Breach once any candidate event tripped it; otherwise pass."""
        evidence = {
            "flags": sorted(self.seen),
            "events": self.count,
            "first_at": self.first_at,
            "watched": list(g.flags),
        }
        if self.count:
            reason = (
                f"{g.name}: the candidate served {self.count} request(s) flagged "
                f"{', '.join(sorted(self.seen))} (first at {self.first_at}); tripwires act at once."
            )
            return self._verdict(g, VerdictStatus.BREACH, reason, evidence, tripwire=True)
        reason = f"{g.name}: no candidate request carried {', '.join(g.flags)}."
        return self._verdict(
            g, VerdictStatus.PASS, reason, evidence, non_inferior=True, tripwire=True
        )

    def state(self) -> dict[str, Any]:
        """Return the JSON-ready state."""
        return {"count": self.count, "first_at": self.first_at, "seen": sorted(self.seen)}

    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output."""
        self.count = int(state["count"])
        self.first_at = state["first_at"]
        self.seen = set(state["seen"])
