"""Late-frozen quantile lines: A/A and detection scenarios for ``bench_detection.py``.

A rollout whose stable version has too little history for a p95 line freezes it from stable's
first ``quantile_sample_size("p95")`` (400) concurrent observations, and counts exceedances
(both arms) only after that point. This module simulates that judge, vectorised over runs:

* the line is the p95 of stable's first 400 simulated latencies (lognormal, sigma 0.5), drawn
  with the shared-incident multiplier of the look each one falls in;
* from the look after the line is frozen, each request exceeds it with the exact probability
  its arm's latency distribution gives (conditional on the line, exceedances are Bernoulli);
* the exceedance counts, one stratum per traffic share, feed the monitors' own conditional
  e-process (``conditional_log_evalue`` with ``RateMixture.around``, as ``RateJudge`` does).

A "line known" reference runs the same test with stable's true p95 frozen at the start and
counted from the first request. Reported: false-rollback rate on A/A (must stay <= alpha),
detection rate, and median candidate requests to rollback from the rollout's start (so the
requests spent freezing the line count against the late line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats as sps

from policy_canary.guardrails import Guardrail
from policy_canary.monitoring._baseline import quantile_line, quantile_sample_size
from policy_canary.stats import RateMixture, conditional_log_evalue

SIGMA = 0.5  # stable's log-latency spread
GUARDRAIL = {"metric": "latency_ms", "statistic": "p95", "max_increase": "25%"}  # default plan


@dataclass(frozen=True)
class LateScenario:
    """One late-line situation: traffic shape and the candidate's latency multiplier."""

    name: str
    null: bool
    looks: int
    slower: float = 1.0  # the candidate's latency multiplier
    swings: bool = False  # +-50% daily volume, stages 1% -> 5% -> 25%, shared incidents
    incident_at_freeze: bool = False  # stable's latency doubles while the line is frozen
    share: float = 0.01  # the default plan's canary stage
    runs_scale: float = 1.0


LATE_SCENARIOS = (
    LateScenario("aa_late_p95", True, 300),
    LateScenario("aa_late_p95_swings_incidents", True, 300, swings=True),
    LateScenario("aa_late_p95_frozen_in_incident", True, 300, incident_at_freeze=True),
    LateScenario("late_p95_latency_x1.5", False, 300, slower=1.5, runs_scale=0.5),
    LateScenario("late_p95_latency_x1.25", False, 300, slower=1.25, runs_scale=0.5),
    LateScenario("late_p95_latency_x2_5%", False, 100, slower=2.0, share=0.05, runs_scale=0.5),
)

Array = NDArray[Any]


def _schedule(sc: LateScenario, per_look: int) -> tuple[Array, Array, Array]:
    """Per look: requests, candidate share, and the shared latency multiplier (incidents)."""
    t = np.arange(sc.looks)
    volume = np.full(sc.looks, per_look)
    share = np.full(sc.looks, sc.share)
    incident = np.zeros(sc.looks)
    if sc.swings:
        day = max(sc.looks // 3, 20)
        volume = (per_look * (1 + 0.5 * np.sin(2 * np.pi * t / day))).astype(np.int64)
        share = np.where(t < sc.looks // 3, 0.01, np.where(t < 2 * sc.looks // 3, 0.05, 0.25))
        incident = np.where((t % day > day // 2) & (t % day < day // 2 + max(day // 10, 2)), 1, 0)
    if sc.incident_at_freeze:
        incident = np.where(t < 2, 1.0, incident)
    return volume.astype(np.int64), share, 1.0 + incident.astype(np.float64)


def _first(alarm: NDArray[np.bool_]) -> NDArray[np.int64]:
    return np.where(alarm.any(axis=1), alarm.argmax(axis=1), -1).astype(np.int64)


def _log_k(bad_c: Array, bad_s: Array, share: Array, g: Guardrail) -> Array:
    """The monitors' conditional e-process on cumulative exceedances, one stratum per share."""
    r0, r1 = 1 + g.tolerance, 1 + g.effective_detect
    keys, which = np.unique(share, return_inverse=True)
    strata_c = np.stack(
        [np.cumsum(np.where(which == k, bad_c, 0), 1) for k in range(keys.size)], -1
    )
    strata_s = np.stack(
        [np.cumsum(np.where(which == k, bad_s, 0), 1) for k in range(keys.size)], -1
    )
    return conditional_log_evalue(
        strata_c, strata_s, keys, null_ratio=r0, mixture=RateMixture.around(r0, r1)
    )


def simulate_late_line(
    sc: LateScenario, runs: int, rng: np.random.Generator, *, alpha: float, per_look: int
) -> dict[str, Any]:
    """Simulate ``runs`` rollouts of one scenario; the late line and the line-known reference."""
    g = Guardrail.from_mapping(GUARDRAIL)
    volume, share, mult = _schedule(sc, per_look)
    n_c = rng.binomial(volume, share, size=(runs, sc.looks))
    n_s = volume - n_c
    cum_nc, cum_ns = np.cumsum(n_c, 1), np.cumsum(n_s, 1)
    need = quantile_sample_size("p95")
    # Stable's first `need` observations, each with its look's incident multiplier.
    look_of = np.stack([np.searchsorted(row, np.arange(need), side="right") for row in cum_ns])
    first = (
        np.exp(rng.normal(0.0, SIGMA, size=(runs, need))) * mult[np.minimum(look_of, sc.looks - 1)]
    )
    lines = np.asarray([quantile_line(row.tolist(), "p95") for row in first])
    frozen = look_of[:, -1]  # the look in which the line is frozen; counting starts after it

    def beyond(line: Array, factor: Array) -> Array:
        return np.asarray(sps.norm.sf(np.log(line[:, None] / factor[None, :]) / SIGMA))

    counted = np.arange(sc.looks)[None, :] > frozen[:, None]
    p_s, p_c = beyond(lines, mult), beyond(lines, mult * sc.slower)
    late_c = np.where(counted, rng.binomial(n_c, p_c), 0)
    late_s = np.where(counted, rng.binomial(n_s, p_s), 0)
    true_line = np.full(runs, math.exp(SIGMA * float(sps.norm.ppf(0.95))))
    known_c = rng.binomial(n_c, beyond(true_line, mult * sc.slower))
    known_s = rng.binomial(n_s, beyond(true_line, mult))
    limit = math.log(1 / alpha)
    rows = {}
    for method, (bad_c, bad_s) in {"late line": (late_c, late_s),
                                   "line known": (known_c, known_s)}.items():  # fmt: skip
        alarm = _first(_log_k(bad_c, bad_s, share, g) >= limit)
        hit = alarm >= 0
        requests = np.where(hit, cum_nc[np.arange(runs), np.maximum(alarm, 0)], np.inf)
        rate = float(hit.mean())
        row: dict[str, Any] = {"runs": runs, "rollback_rate": rate}
        if sc.null:
            row["false_rollback"] = rate
            row["false_rollback_se"] = math.sqrt(max(rate * (1 - rate), 1e-12) / runs)
        else:
            median = float(np.quantile(requests, 0.5)) if rate >= 0.5 else None
            row["median_requests"] = median
        rows[method] = row
    late, known = rows["late line"], rows["line known"]
    out: dict[str, Any] = {
        "scenario": sc.name,
        "null": sc.null,
        "looks": sc.looks,
        "share": sc.share,
        "slower": sc.slower,
        "line_observations": need,
        "median_stable_requests_to_freeze": float(np.median(cum_ns[np.arange(runs), frozen])),
        "methods": rows,
    }
    if not sc.null and late.get("median_requests") and known.get("median_requests"):
        out["late_over_known"] = late["median_requests"] / known["median_requests"]
    return out


def run_late_lines(
    *, runs: int, seed: int, alpha: float, per_look: int, names: tuple[str, ...] | None = None
) -> list[dict[str, Any]]:
    """Every late-line scenario (or ``names``), each on its own random stream."""
    results = []
    for i, sc in enumerate(LATE_SCENARIOS):
        if names is not None and sc.name not in names:
            continue
        rng = np.random.default_rng([seed, 1000 + i])
        n = max(int(runs * sc.runs_scale), 20)
        results.append(simulate_late_line(sc, n, rng, alpha=alpha, per_look=per_look))
    return results


def render_late_lines(results: list[dict[str, Any]], *, alpha: float) -> str:
    """The late-line table: false rollbacks on A/A, detection and speed against a known line."""
    lines = [
        f"late-frozen p95 line (froze from stable's first {quantile_sample_size('p95')} "
        f"observations; A/A must stay <= alpha = {alpha:g})",
        f"{'scenario':34} {'runs':>5} {'late: rollback':>15} {'median req':>11} "
        f"{'known: rollback':>16} {'median req':>11} {'late/known':>10}",
    ]
    for r in results:
        late, known = r["methods"]["late line"], r["methods"]["line known"]

        def req(row: dict[str, Any]) -> str:
            value = row.get("median_requests")
            return "—" if value is None else f"{value:,.0f}"

        ratio = r.get("late_over_known")
        lines.append(
            f"{r['scenario']:34} {late['runs']:>5} {late['rollback_rate']:>15.4f} "
            f"{'' if r['null'] else req(late):>11} {known['rollback_rate']:>16.4f} "
            f"{'' if r['null'] else req(known):>11} "
            f"{'' if ratio is None else f'{ratio:.2f}':>10}"
        )
    return "\n".join(lines)
