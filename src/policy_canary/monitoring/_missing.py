"""The built-in ``outcomes_recorded`` guardrail: missing outcomes (a sample-ratio mismatch).

A candidate that crashes, hangs or returns before ``record()`` leaves no event, so it looks
better the more it fails. The gates count, per routing window and share, how many decisions
they routed to each arm and how many of those had an outcome recorded (``serving/_routed.py``);
this judge compares the arms' recorded/routed ratios with the conditional rate e-process of
``stats.rates``, turned around: the "events" are recorded outcomes, Y = 1 when the candidate's,
and rho is the candidate's *realised* share of the window's routed decisions (not the nominal
share, so heavy users that stick to one arm cannot fake a mismatch). If the candidate records
at least ``1 - tolerance`` times as often as stable, P(Y = 1) >= q = rho r0 / (rho r0 + 1 - rho)
with r0 = 1 - tolerance, and the mixture of likelihood ratios towards smaller ratios (out to "the
candidate records nothing") is a test supermartingale; breach when it reaches 1/alpha_m.

Counting recorded outcomes conditionally on the window's routed counts is conservative: given
the routed counts, the split of recorded outcomes varies far less than the binomial the test
assumes (when both arms record everything it does not vary at all), which only lowers the
e-process under the null. The judge can breach, and then rolls back; it never holds a stage:
a rollout whose events arrive without routed counts (written straight to the store, or from an
SDK older than this judge) has nothing to compare, and its verdict says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policy_canary.guardrails import GuardrailAction
from policy_canary.monitoring._judges._base import fmt
from policy_canary.monitoring._verdict import Verdict, VerdictStatus
from policy_canary.stats import RateMixture, conditional_log_evalue

__all__ = ["GRACE", "OUTCOMES_RECORDED", "MissingOutcomes", "RoutedWindow"]

#: The guardrail's name (and metric) in verdicts, alerts and incidents.
OUTCOMES_RECORDED = "outcomes_recorded"
#: How much less often than stable the candidate may record an outcome: 5%.
TOLERANCE = 0.05
#: The loss the test is sized for: the candidate records 25% less often.
DETECT = 0.25
#: Only decisions routed this long before a tick are compared: late outcomes have landed.
GRACE_SECONDS = 300
GRACE = f"{GRACE_SECONDS // 60} minutes"
#: Realised shares are kept to parts per million (one cell per distinct share).
_PPM = 1_000_000


@dataclass(frozen=True, slots=True)
class RoutedWindow:
    """One routing window's counts at one share, summed over the SDK processes."""

    routed_stable: int
    routed_candidate: int
    recorded_stable: int
    recorded_candidate: int


class MissingOutcomes:
    """The ``outcomes_recorded`` test of one rollout: fold windows, judge, persist as JSON."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.mixture = RateMixture.around(1.0 - TOLERANCE, 1.0 - DETECT)
        #: realised candidate share (ppm) -> [stable recorded, candidate recorded]
        self.cells: dict[int, list[int]] = {}
        #: totals: routed stable, routed candidate, recorded stable, recorded candidate
        self.totals = [0, 0, 0, 0]

    def fold(self, windows: Iterable[RoutedWindow]) -> int:
        """Fold matured windows (each once); return how many."""
        n = 0
        for w in windows:
            n += 1
            routed = (max(w.routed_stable, 0), max(w.routed_candidate, 0))
            # An outcome beyond its window's routed count (a clock step, a second record of
            # a decision id) cannot be a routed decision's; cap rather than credit it.
            recorded = (min(w.recorded_stable, routed[0]), min(w.recorded_candidate, routed[1]))
            for i, value in enumerate((*routed, *recorded)):
                self.totals[i] += value
            if not routed[0] or not routed[1] or not any(recorded):
                continue  # one arm only, or nothing recorded: no comparison in this window
            share = round(_PPM * routed[1] / (routed[0] + routed[1]))
            cell = self.cells.setdefault(share, [0, 0])
            cell[0] += recorded[0]
            cell[1] += recorded[1]
        return n

    def log_e_value(self) -> float:
        """ln K of "the candidate records at least (1 - tolerance) x as often as stable"."""
        if not self.cells:
            return 0.0
        keys = sorted(self.cells)
        return float(
            conditional_log_evalue(
                [self.cells[k][1] for k in keys],
                [self.cells[k][0] for k in keys],
                [k / _PPM for k in keys],
                null_ratio=1.0 - TOLERANCE,
                mixture=self.mixture,
            )
        )

    def verdict(self) -> Verdict:
        """Breach (roll back) when the candidate loses outcomes beyond the tolerance."""
        rs, rc, ks, kc = self.totals
        log_k = self.log_e_value()
        e_value = math.exp(min(log_k, 700.0))
        cand = kc / rc if rc else None
        stable = ks / rs if rs else None
        evidence: dict[str, Any] = {
            "kind": "builtin",
            "routed_stable": rs,
            "routed_candidate": rc,
            "recorded_stable": ks,
            "recorded_candidate": kc,
            "recorded_ratio_stable": stable,
            "recorded_ratio_candidate": cand,
            "tolerance": TOLERANCE,
            "e_value": e_value,
            "e_value_threshold": 1.0 / self.alpha,
            "alpha": self.alpha,
            "grace": GRACE,
        }
        counts = (
            f"the candidate recorded {kc:,} of {rc:,} routed decisions "
            f"({fmt(cand, pct=True)}), stable {ks:,} of {rs:,} ({fmt(stable, pct=True)})"
        )
        if log_k >= math.log(1.0 / self.alpha):
            status = VerdictStatus.BREACH
            reason = (
                f"{OUTCOMES_RECORDED}: {counts}; e-value {fmt(e_value)} >= {fmt(1 / self.alpha)} "
                f"establishes that the candidate loses outcomes (crashes, hangs or returns "
                f"before record()) beyond the {100 * TOLERANCE:g}% tolerance."
            )
        elif not rs or not rc:
            status = VerdictStatus.PASS
            reason = (
                f"{OUTCOMES_RECORDED}: no routed counts for both arms yet (decisions routed "
                f"more than {GRACE} ago are compared; events written without a gate carry "
                "none), so missing outcomes cannot be judged; it never holds a stage."
            )
        else:
            status = VerdictStatus.PASS
            reason = (
                f"{OUTCOMES_RECORDED}: {counts}; no loss beyond the {100 * TOLERANCE:g}% "
                f"tolerance is established (e-value {fmt(e_value)} < {fmt(1 / self.alpha)})."
            )
        return Verdict(
            guardrail=OUTCOMES_RECORDED,
            metric=OUTCOMES_RECORDED,
            status=status,
            action=GuardrailAction.ROLLBACK,
            reason=reason,
            evidence=evidence,
            # It can only roll back: a rollout without routed counts must still be able to pass.
            non_inferior=status is VerdictStatus.PASS,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        return {"cells": {str(k): v for k, v in sorted(self.cells.items())}, "totals": self.totals}

    def load(self, data: Mapping[str, Any]) -> None:
        """Restore :meth:`to_dict` output."""
        self.cells = {int(k): [int(v[0]), int(v[1])] for k, v in data["cells"].items()}
        self.totals = [int(x) for x in data["totals"]]
