"""The sentences relative-rate and quantile verdicts give, and the blind-guardrail sentences.

Kept together so every verdict words the same evidence the same way: counts next to every
rate, a ratio only when stable's rate is positive (never ``xn/a``), and a passing verdict
that says which of "a regression beyond the tolerance" and "its absence" is established.
"""

from __future__ import annotations

from policy_canary.guardrails import Guardrail
from policy_canary.monitoring._judges._base import e_from_log, fmt


def ratio_text(ratio: float | None) -> str:
    """`` (x1.23)`` when the ratio is defined, nothing otherwise (stable shows no bad event)."""
    return "" if ratio is None else f" (x{fmt(ratio)})"


def arm_rates(
    cand_rate: float | None,
    stable_rate: float | None,
    bad: tuple[int, int],
    requests: tuple[int, int],
    ratio: float | None,
) -> str:
    """``1.06% (53 of 5000) on the candidate vs 0% (0 of 99000) on stable (x...)``."""
    return (
        f"{fmt(cand_rate, pct=True)} ({bad[1]:,} of {requests[1]:,}) on the candidate vs "
        f"{fmt(stable_rate, pct=True)} ({bad[0]:,} of {requests[0]:,}) on stable"
        f"{ratio_text(ratio)}"
    )


def rate_breach(
    g: Guardrail, what: str, rates: str, log_k: float, alpha: float, *, up: bool
) -> str:
    """A breach: the e-value reached its threshold."""
    change = "rise" if up else "drop"
    return (
        f"{g.name}: {what} is {rates}; e-value {fmt(e_from_log(log_k))} >= {fmt(1 / alpha)} "
        f"establishes a {change} beyond {100 * g.tolerance:.3g}%."
    )


def rate_pass(
    g: Guardrail,
    what: str,
    rates: str,
    log_k: float,
    alpha: float,
    *,
    up: bool,
    observed_beyond: bool,
    clause: str,
) -> str:
    """A pass: no breach is established; says whether the absence of one is (``clause``).

    ``clause`` is the non-inferiority sentence, empty when non-inferiority is not shown;
    ``observed_beyond`` says the point estimate already lies past the tolerance.
    """
    change = "rise" if up else "drop"
    tol = f"{100 * g.tolerance:.3g}%"
    head = (
        f"{g.name}: {what} is {rates}; a {change} beyond {tol} is not established "
        f"(e-value {fmt(e_from_log(log_k))} < {fmt(1 / alpha)})"
    )
    if clause:
        return f"{head}.{clause}"
    if observed_beyond:
        return (
            f"{head}, although the observed {change} is beyond {tol}; neither a breach nor "
            "its absence is established yet."
        )
    return f"{head}, nor is its absence."


def non_inferiority(
    route: str | None, bound: float | None, *, up: bool, r0: float, negligible: float
) -> str:
    """The sentence a passing verdict adds when a non-inferiority route succeeded."""
    if route == "ratio" and bound is not None:
        return f" Non-inferior: the ratio is below x{fmt(bound)} {'<=' if up else '>='} x{fmt(r0)}."
    if route == "absolute" and bound is not None:
        return (
            f" Non-inferior: the candidate's rate is below {fmt(bound, pct=True)}, "
            f"within the negligible {fmt(negligible, pct=True)}."
        )
    return ""


def line_pending(g: Guardrail, quantile: str, have: int, need: int) -> str:
    """A quantile guardrail whose line is still being frozen from stable's concurrent traffic."""
    return (
        f"{g.name}: stable had too little {g.metric} history for a {quantile} line when the "
        f"rollout started; it is frozen from stable's concurrent traffic after {need:,} "
        f"observations ({have:,} so far), and exceedances count from then on."
    )


def line_origin(source: str, observations: int) -> str:
    """Where a quantile line came from, as a reason's suffix."""
    if source == "concurrent":
        return (
            f" The line was frozen from {observations:,} of stable's concurrent observations; "
            "exceedances count from then on."
        )
    return ""


def unobserved(g: Guardrail, requests: int) -> str:
    """A guardrail whose metric neither arm has reported."""
    if requests == 0:
        return f"{g.name}: no requests recorded on either arm yet."
    return (
        f"{g.name}: no observations on either arm after {requests:,} requests; record "
        f"{g.metric} or drop this guardrail."
    )
