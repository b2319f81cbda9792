"""Which way a guardrail's threshold watches its metric, and refusing the wrong way round.

``metric: error, max_decrease: 10%`` would roll back a candidate whose error rate *improved*;
built-in metrics have a known bad direction, so such a threshold is a mistake unless the plan
acknowledges it with ``direction:`` equal to the threshold's own direction.
"""

from __future__ import annotations

from policy_canary.errors import PlanError
from policy_canary.guardrails._types import (
    FIELD_DIRECTION,
    OPPOSITE_FIELD,
    Direction,
    MetricInfo,
    Statistic,
)


def watched(
    field: str, statistic: Statistic | None, direction: Direction | None
) -> Direction | None:
    """The direction ``field`` guards against (``max_delta``: its ``direction``, if any).

    ``max_increase`` on a quantile bounds the rate of exceeding stable's quantile on the
    metric's own bad side (below it, for quality), so it never watches the wrong way.
    """
    if field == "max_increase" and statistic is not None and statistic.is_quantile():
        return None
    if field == "max_delta":
        return direction
    return FIELD_DIRECTION.get(field)


def is_reversed(info: MetricInfo | None, direction: Direction | None) -> bool:
    """True when ``direction`` is the good direction of a built-in metric."""
    return info is not None and direction is not None and direction is not info.worse


def check_direction(
    where: str,
    metric: str,
    info: MetricInfo | None,
    field: str,
    statistic: Statistic | None,
    direction: Direction | None,
) -> None:
    """Raise a :class:`PlanError` (naming the key to fix) for a contradictory direction."""
    guarded = watched(field, statistic, direction)
    if guarded is None and direction is not None and field != "max_delta":
        raise PlanError(
            f"{where}: 'direction' does not apply to {field} on a quantile, which always "
            "watches the metric's bad side",
            field="direction",
        )
    if field in FIELD_DIRECTION and guarded is not None and direction not in (None, guarded):
        raise PlanError(
            f"{where}: direction {direction.value} contradicts {field}, which watches the "
            f"metric going {guarded.value}",
            field="direction",
        )
    if info is None or not is_reversed(info, guarded) or direction is guarded:
        return  # custom metric, the usual direction, or an acknowledged reversal
    assert guarded is not None  # is_reversed() needs a direction
    better = "rising" if info.worse is Direction.DOWN else "falling"
    change = "rise" if guarded is Direction.UP else "fall"
    raise PlanError(
        f"{where}: {metric} gets worse going {info.worse.value}, but {field} guards against "
        f"it going {guarded.value}, so the candidate would be rolled back for {better} "
        f"{metric}; use {OPPOSITE_FIELD[field]}, or add 'direction: {guarded.value}' if a "
        f"{change} really is the regression here",
        field=field,
    )
