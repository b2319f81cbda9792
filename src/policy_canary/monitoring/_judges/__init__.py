"""Judges: one sequential test per guardrail, turned into a verdict with evidence.

Private to :mod:`policy_canary.monitoring`. Each judge folds one guardrail's observations (arm,
share, value), keeps a JSON-ready state, and judges it against a stage's version of the
guardrail. The reason sentences live here, in one place, so alerts and incidents stay
consistent.

One module per family of tests: ``_base.py`` (:class:`Setup`, the :class:`Judge` base class and
the helpers every reason sentence uses), ``_reasons.py`` (the relative-rate, quantile-line and
unreported-metric sentences), ``_rate.py`` (relative rates and quantile
exceedances), ``_mean.py`` (relative means and absolute deltas), ``_slo.py`` (absolute SLOs)
and ``_tripwire.py``. :func:`build_judge` picks one for a guardrail.
"""

from __future__ import annotations

from collections.abc import Sequence

from policy_canary.guardrails import Guardrail, GuardrailKind, Statistic
from policy_canary.monitoring._judges._base import Judge, Setup
from policy_canary.monitoring._judges._mean import MeanJudge, detect_shift, on_log_scale
from policy_canary.monitoring._judges._rate import RateJudge
from policy_canary.monitoring._judges._reasons import unobserved
from policy_canary.monitoring._judges._slo import IndicatorSLOJudge, MeanSLOJudge
from policy_canary.monitoring._judges._tripwire import TripwireJudge

__all__ = [
    "IndicatorSLOJudge",
    "Judge",
    "MeanJudge",
    "MeanSLOJudge",
    "RateJudge",
    "Setup",
    "TripwireJudge",
    "build_judge",
    "detect_shift",
    "on_log_scale",
    "unobserved",
]


def build_judge(
    base: Guardrail, variants: Sequence[Guardrail], statistic: Statistic | None, setup: Setup
) -> Judge:
    """Pick the test for a guardrail (``statistic`` already resolved, ``None`` for tripwires)."""
    if base.kind is GuardrailKind.TRIPWIRE or statistic is None:
        return TripwireJudge(base, setup)
    if base.kind is GuardrailKind.SLO:
        if statistic is Statistic.MEAN:
            return MeanSLOJudge(base, variants, statistic, setup)
        return IndicatorSLOJudge(base, variants, statistic, setup)
    if base.tolerance_field == "max_delta" or statistic is Statistic.MEAN:
        return MeanJudge(base, variants, statistic, setup)
    return RateJudge(base, variants, statistic, setup)
