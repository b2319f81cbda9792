"""What every judge shares: :class:`Setup`, the :class:`Judge` base class and helpers.

The helpers format the numbers that reason sentences quote and filter observations, so every
judge words its reasons and counts rejected values alike.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from policy_canary.guardrails import Guardrail
from policy_canary.limits import MAX_MAGNITUDE
from policy_canary.monitoring._verdict import Verdict, VerdictStatus

if TYPE_CHECKING:
    from policy_canary.monitoring._baseline import Baseline

Bools = NDArray[np.bool_]
Ints = NDArray[np.int64]
#: Observations of one metric: a list from events, or a float array (fast path).
Values = Sequence[Any] | NDArray[np.float64]

_MAX_LOG = 700.0  # exp() of more overflows a float; such e-values are "astronomically large"


@dataclass(frozen=True, slots=True)
class Setup:
    """What every judge needs besides its guardrail: its alpha share and the sizing inputs."""

    alpha: float
    baseline: Baseline


def fmt(value: float | None, *, pct: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.3g}%" if pct else f"{value:.4g}"


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def e_from_log(log_value: float) -> float:
    return math.exp(min(log_value, _MAX_LOG))


def too_few(g: Guardrail, counts: Sequence[int], *, per_arm: bool = True) -> str:
    if not per_arm:
        return (
            f"{g.name}: {counts[1]} candidate observations so far; {g.min_samples} are needed "
            "before it can pass."
        )
    return (
        f"{g.name}: {counts[1]} candidate and {counts[0]} stable observations so far; "
        f"{g.min_samples} per arm are needed before it can pass."
    )


class Judge(ABC):
    """Base class of the per-guardrail tests."""

    base: Guardrail
    setup: Setup
    rejected: int = 0
    #: Whether :meth:`fold` reads its observations' times (else it is given none).
    reads_times: bool = False

    @abstractmethod
    def fold(self, cand: Bools, bp: Ints, values: Values, ats: Sequence[datetime]) -> None:
        """Fold observations in arrival order."""

    @abstractmethod
    def verdict(self, g: Guardrail) -> Verdict:
        """Judge the evidence against ``g``, the stage's version of the base guardrail."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """Return the JSON-ready state (the configuration is rebuilt from the plan)."""

    @abstractmethod
    def load(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output."""

    def _verdict(
        self,
        g: Guardrail,
        status: VerdictStatus,
        reason: str,
        evidence: Mapping[str, Any],
        *,
        non_inferior: bool = False,
        tripwire: bool = False,
    ) -> Verdict:
        full = {"kind": g.kind.value, "alpha": self.setup.alpha, **evidence}
        if self.rejected:
            full["rejected_values"] = self.rejected
        return Verdict(
            guardrail=g.name,
            metric=g.metric,
            status=status,
            action=g.action,
            reason=reason,
            evidence=full,
            non_inferior=non_inferior and status is VerdictStatus.PASS,
            tripwire=tripwire,
        )


def numeric(values: Sequence[Any] | NDArray[np.float64]) -> tuple[Bools, NDArray[np.float64]]:
    """Keep numbers (booleans as 0/1) within the SDK's magnitude; return the mask and floats.

    The SDK refuses larger values, but rows written by other means must not overflow a test's
    sums of squares (and with them the persisted state): they count as rejected.
    """
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        # A batch's column (EventBatch): finite already, so only the magnitude to check.
        floats = values.astype(np.float64)
        return np.abs(floats) <= MAX_MAGNITUDE, floats
    keep = np.asarray(
        [isinstance(v, int | float) and -MAX_MAGNITUDE <= v <= MAX_MAGNITUDE for v in values],
        dtype=bool,
    )
    floats = np.asarray([float(v) if k else 0.0 for v, k in zip(values, keep, strict=True)])
    return keep, floats.astype(np.float64)
