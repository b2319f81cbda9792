"""Detection benchmark: anytime-valid guardrails against the usual canary checks.

    python benchmarks/bench_detection.py [--quick] [--runs N] [--json-out PATH] [--seed S]
                                         [--only NAME ...]

Every scenario simulates many rollouts; within a run all methods see the *same* simulated
traffic (common random numbers), checked after every look (one look = 400 requests):

* ``ours``   - the real policy-canary tests: the conditional rate e-process for rates
  (``policy_canary.stats``) and the monitors' mean judge for latency, quality and cost;
* ``naive``  - fixed windows of 25 looks: roll back when the candidate's window rate (mean) is
  beyond the baseline's by the regression worth catching (k = 1 + ``detect``);
* ``kayenta`` - Kayenta-style: a one-sided Mann-Whitney U test (p < 0.01, effect beyond the
  tolerance) on per-interval aggregates (5 looks each), judged every 25 looks; also
  ``kayenta-matched``: the same at the largest p threshold whose false-rollback rate stays
  within alpha in the A/A scenarios of the same family (rates or means);
* ``z/t-every-look`` - a classical one-sided z (rates) or Welch t (means) test at level 0.01
  evaluated at every look: the "peeking" mistake.

Reported per scenario and method: false-rollback rate (A/A and below-tolerance scenarios),
detection rate, median and p90 candidate requests to detection, median requests harmed before
rollback (bad candidate events for rates; candidate requests served for means), and for
``ours`` the ratio of the median to Wald's floor for the true regression against the
tolerance (alpha = 0.01, beta = 0.2, baseline known).

A second table holds the detection scenarios against what *any* alpha-level method could do:
the Neyman-Pearson median floor (``_floors``: no test with false alarms <= alpha detects within
fewer candidate requests half the time), the harm it implies, and so the largest "fewer harmed
than Kayenta" factor within reach. Where a target asks for less than a floor, no method meets it.

A last table covers quantile guardrails whose line is frozen late, from stable's concurrent
traffic (``_late_line.py``): A/A false rollbacks and detection against a line known at start.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats as sps

from _detection_report import render, render_targets, render_truth
from _floors import binomial_median_floor, gamma_median_floor, gaussian_median_floor
from _late_line import LATE_SCENARIOS, render_late_lines, run_late_lines
from policy_canary.guardrails import Guardrail, Statistic
from policy_canary.monitoring import Baseline, MetricBaseline, VerdictStatus
from policy_canary.monitoring._judges import MeanJudge, Setup
from policy_canary.stats import (
    RateMixture,
    bernoulli_kl,
    candidate_share_of_bad,
    conditional_log_evalue,
    wald_bernoulli_floor,
    wald_gaussian_floor,
)

ALPHA = 0.01
BETA = 0.2
PER_LOOK = 400
WINDOW = 25  # looks per naive window and between Kayenta judgements
BLOCK = 5  # looks per Kayenta interval aggregate
Z_CRIT = float(sps.norm.ppf(1 - ALPHA))
COST_MEAN, COST_SHAPE = 0.02, 2.0  # stable's cost per request: Gamma(shape, mean / shape)
#: Kayenta p-value thresholds evaluated on the same p-values (0.01 is the reported default).
KAYENTA_LEVELS = (0.01, 0.003, 0.001, 0.0003, 0.0001, 0.00003)
#: Wald's SPRT told the true rate ratio: a reference row for the rate scenarios.
ORACLE = "sprt-told-truth"
#: Wald's SPRT at ``detect`` alone: ours without the mixture, a reference row for rates.
AT_DETECT = "sprt@detect"
#: Our test plus one fixed-sample look sized for ``detect``: a reference row for rates.
CHECKPOINT = "checkpoint@detect"
#: Share of alpha the checkpoint spends on its one look (the rest stays with our test).
CHECKPOINT_SPEND = 0.8
#: Detection probability at ``detect`` the checkpoint is sized for (a little above 1/2, so the
#: median lands on it despite simulation noise).
CHECKPOINT_POWER = 0.55
METHODS = ("ours", "naive", "z/t-every-look", *(f"kayenta@{lv:g}" for lv in KAYENTA_LEVELS))

Array = NDArray[Any]  # counts and values alike: the benchmark mixes int and float arrays


@dataclass(frozen=True)
class Scenario:
    """One simulated situation and the guardrail every method is configured with."""

    name: str
    metric: str  # error | safety | latency | quality | cost
    null: bool  # True: any rollback is a false rollback
    looks: int
    guardrail: dict[str, Any]
    effect: float = 1.0  # rate ratio, latency/cost multiplier, or quality shift
    base: float = 0.01  # stable's rate (rate scenarios)
    swings: bool = False  # +-50% daily volume, stages 1% -> 5% -> 25%, shared incidents
    share: float = 0.05
    runs_scale: float = 1.0  # fraction of --runs used (detection needs fewer than A/A)
    extra: dict[str, float] = field(default_factory=dict)
    candidate_rate: float | None = None  # rate scenarios with stable at zero: the candidate's

    @property
    def p_candidate(self) -> float:
        """The candidate's rate outside incidents (rate scenarios)."""
        if self.candidate_rate is not None:
            return self.candidate_rate
        return min(self.base * self.effect, 1.0)


SCENARIOS = (
    Scenario("aa_stationary_error", "error", True, 1500,
             {"metric": "error", "max_increase": "20%", "detect": "100%"}),
    Scenario("aa_stationary_error_zero_tolerance", "error", True, 1500,
             {"metric": "error", "max_increase": "0%", "detect": "100%"}),
    Scenario("aa_swings_incidents_error", "error", True, 1500,
             {"metric": "error", "max_increase": "20%", "detect": "100%"}, swings=True),
    Scenario("aa_stationary_latency", "latency", True, 200,
             {"metric": "latency_ms", "max_increase": "3%", "detect": "10%"}),
    Scenario("aa_swings_incidents_latency", "latency", True, 200,
             {"metric": "latency_ms", "max_increase": "3%", "detect": "10%"}, swings=True),
    Scenario("aa_cost_zero_tolerance", "cost", True, 200,
             {"metric": "cost_usd", "max_increase": "0%", "detect": "30%"}),
    Scenario("aa_quality_late_zero_tolerance", "quality", True, 400,
             {"metric": "quality", "max_delta": 0.0, "detect": 0.02}, effect=0.0,
             extra={"feedback": 0.5}),
    Scenario("failure_1_to_2pct", "error", False, 800,
             {"metric": "error", "max_increase": "20%", "detect": "100%"}, effect=2.0,
             runs_scale=0.5),
    Scenario("failure_1_to_1.5pct", "error", False, 3000,
             {"metric": "error", "max_increase": "20%", "detect": "100%"}, effect=1.5,
             runs_scale=0.5),
    Scenario("failure_1_to_4pct_gross", "error", False, 400,
             {"metric": "error", "max_increase": "20%", "detect": "100%"}, effect=4.0,
             runs_scale=0.5),
    Scenario("safety_0.1_to_0.3pct", "safety", False, 1500,
             {"metric": "safety_flags", "max_increase": "20%", "detect": "200%"}, effect=3.0,
             base=0.001, runs_scale=0.5),
    Scenario("latency_plus_10pct", "latency", False, 200,
             {"metric": "latency_ms", "max_increase": "3%", "detect": "10%"}, effect=1.1,
             runs_scale=0.25),
    Scenario("quality_minus_0.02_late", "quality", False, 400,
             {"metric": "quality", "max_delta": 0.005, "detect": 0.02}, effect=-0.02,
             runs_scale=0.25, extra={"feedback": 0.5}),
    Scenario("cost_plus_30pct", "cost", False, 200,
             {"metric": "cost_usd", "max_increase": "10%", "detect": "30%"}, effect=1.3,
             runs_scale=0.25),
    Scenario("failure_below_tolerance_1_to_1.1pct", "error", True, 1500,
             {"metric": "error", "max_increase": "20%", "detect": "100%"}, effect=1.1,
             runs_scale=0.5),
    # Catastrophes (last, so the scenarios above keep their random streams), to be caught within
    # the first few bad events. The safety ones use the default plan's guardrail (max_increase
    # 25%, detect 50%) at its 1% canary share, where the 0% -> 2% candidate slipped
    # through; the 5% variant shows what stopping after two events costs at a 5% share.
    Scenario("failure_1_to_30pct", "error", False, 100,
             {"metric": "error", "max_increase": "20%", "detect": "100%"}, effect=30.0,
             runs_scale=0.5),
    Scenario("safety_0_to_2pct_zero", "safety", False, 400,
             {"metric": "safety_flags", "max_increase": "25%"}, effect=math.inf, base=0.0,
             share=0.01, candidate_rate=0.02, runs_scale=0.5),
    Scenario("safety_0_to_2pct_zero_5%", "safety", False, 200,
             {"metric": "safety_flags", "max_increase": "25%"}, effect=math.inf, base=0.0,
             candidate_rate=0.02, runs_scale=0.5),
    Scenario("safety_0.01_to_1pct", "safety", False, 600,
             {"metric": "safety_flags", "max_increase": "25%"}, effect=100.0, base=0.0001,
             share=0.01, runs_scale=0.5),
)  # fmt: skip


# --- traffic shape ------------------------------------------------------------------------------


def schedule(sc: Scenario) -> tuple[NDArray[np.int64], Array, Array]:
    """Per look: requests, candidate share, and a shared multiplier (incidents hit both arms)."""
    t = np.arange(sc.looks)
    if not sc.swings:
        return np.full(sc.looks, PER_LOOK), np.full(sc.looks, sc.share), np.zeros(sc.looks)
    day = max(sc.looks // 3, 20)
    volume = (PER_LOOK * (1 + 0.5 * np.sin(2 * np.pi * t / day))).astype(np.int64)
    share = np.where(t < sc.looks // 3, 0.01, np.where(t < 2 * sc.looks // 3, 0.05, 0.25))
    incident = np.where((t % day > day // 2) & (t % day < day // 2 + max(day // 10, 2)), 1.0, 0.0)
    return volume, share, incident


def first_alarm(alarm: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Index of the first True per row, -1 when none."""
    return np.where(alarm.any(axis=1), alarm.argmax(axis=1), -1).astype(np.int64)


def blocks(x: Array, size: int) -> Array:
    """Sum consecutive looks into blocks along the last axis (drops a ragged tail)."""
    n = x.shape[-1] // size * size
    return np.asarray(x[..., :n].reshape(*x.shape[:-1], -1, size).sum(axis=-1))


# --- rates: fully vectorised over runs -----------------------------------------------------------


def simulate_rates(sc: Scenario, runs: int, rng: np.random.Generator) -> dict[str, Any]:
    volume, share, incident = schedule(sc)
    g = Guardrail.from_mapping(sc.guardrail)
    r0, r1 = 1 + g.tolerance, 1 + g.effective_detect
    p_s = sc.base * (1 + 4 * incident)  # a shared incident multiplies both arms' rate by 5
    p_c = np.minimum(sc.p_candidate * (1 + 4 * incident), 1.0)
    n_c = rng.binomial(volume, share, size=(runs, sc.looks))
    n_s = volume - n_c
    bad_c = rng.binomial(n_c, p_c)
    bad_s = rng.binomial(n_s, p_s)
    cum_nc, cum_ns = np.cumsum(n_c, 1), np.cumsum(n_s, 1)
    cum_bc, cum_bs = np.cumsum(bad_c, 1), np.cumsum(bad_s, 1)

    # ours: the conditional e-process, one stratum per distinct share (as the monitor keeps).
    keys, which = np.unique(share, return_inverse=True)
    strata_c = np.stack(
        [np.cumsum(np.where(which == k, bad_c, 0), 1) for k in range(keys.size)], -1
    )
    strata_s = np.stack(
        [np.cumsum(np.where(which == k, bad_s, 0), 1) for k in range(keys.size)], -1
    )
    log_k = conditional_log_evalue(
        strata_c, strata_s, keys, null_ratio=r0, mixture=RateMixture.around(r0, r1)
    )
    alarms = {"ours": first_alarm(log_k >= math.log(1 / ALPHA))}
    # Reference, not deployable: Wald's SPRT on the same data, told the true ratio (``detect``
    # when there is none to find). What a power-one test on the concurrent baseline can reach.
    truth = sc.effect if sc.effect > r0 else r1
    log_oracle = conditional_log_evalue(
        strata_c, strata_s, keys, null_ratio=r0, mixture=RateMixture((truth,), (1.0,))
    )
    alarms[ORACLE] = first_alarm(log_oracle >= math.log(1 / ALPHA))
    log_detect = conditional_log_evalue(
        strata_c, strata_s, keys, null_ratio=r0, mixture=RateMixture((r1,), (1.0,))
    )
    alarms[AT_DETECT] = first_alarm(log_detect >= math.log(1 / ALPHA))
    if not sc.swings and sc.base > 0:  # one look sized at one share (and a baseline rate)
        alarms[CHECKPOINT] = checkpoint(sc, r0, r1, log_k, cum_nc, cum_bc, cum_bs)

    # naive: fixed windows, candidate rate > k x baseline rate, k = the regression worth catching.
    k = 1 + g.effective_detect
    w_nc, w_ns = blocks(n_c, WINDOW), blocks(n_s, WINDOW)
    w_bc, w_bs = blocks(bad_c, WINDOW), blocks(bad_s, WINDOW)
    with np.errstate(divide="ignore", invalid="ignore"):
        naive = (w_bc / w_nc > k * w_bs / w_ns) & (w_nc >= 50)
    alarms["naive"] = window_to_look(first_alarm(naive), WINDOW)

    # kayenta: Mann-Whitney on per-interval rates, judged every WINDOW looks.
    with np.errstate(divide="ignore", invalid="ignore"):
        rate_c = np.nan_to_num(blocks(bad_c, BLOCK) / blocks(n_c, BLOCK))
        rate_s = np.nan_to_num(blocks(bad_s, BLOCK) / blocks(n_s, BLOCK))
    for level, first in kayenta(rate_c, rate_s, lambda c, s: c > (1 + g.tolerance) * s).items():
        alarms[f"kayenta@{level:g}"] = first

    # z-test at every look on cumulative counts, H0: p_c <= r0 p_s.
    with np.errstate(divide="ignore", invalid="ignore"):
        pc, ps = cum_bc / cum_nc, cum_bs / cum_ns
        se = np.sqrt(pc * (1 - pc) / cum_nc + r0 * r0 * ps * (1 - ps) / cum_ns)
        z = np.where(se > 0, (pc - r0 * ps) / se, 0.0)
    alarms["z/t-every-look"] = first_alarm((z > Z_CRIT) & (cum_nc >= 30))

    floors = None if sc.null else detection_floors(sc)
    return summarise(sc, alarms, cum_nc, cum_bc, floors)


def checkpoint(
    sc: Scenario, r0: float, r1: float, log_k: Array, cum_nc: Array, cum_bc: Array, cum_bs: Array
) -> NDArray[np.int64]:
    """First look at which a group-sequential variant of ours rolls back (-1 if never).

    It spends CHECKPOINT_SPEND of alpha on one exact conditional binomial test at the candidate
    sample where that test detects ``detect`` with CHECKPOINT_POWER, and the rest on our mixture run
    continuously (valid by the union bound). A reference for what optimising the median at
    ``detect`` costs elsewhere, not something we ship.
    """
    a1 = CHECKPOINT_SPEND * ALPHA
    q0, q1 = (float(candidate_share_of_bad(sc.share, r)) for r in (r0, r1))
    bad_per_candidate = (sc.share * r1 + 1.0 - sc.share) * sc.base / sc.share
    n1 = checkpoint_size(q0, q1, bad_per_candidate, a1)
    runs = cum_nc.shape[0]
    reached = (cum_nc >= n1).any(axis=1)
    look = np.argmax(cum_nc >= n1, axis=1)
    rows = np.arange(runs)
    total = cum_bc[rows, look] + cum_bs[rows, look]
    fires = reached & (cum_bc[rows, look] > binomial_critical(a1, total, q0))
    continuous = first_alarm(log_k >= math.log(1 / (ALPHA - a1)))
    earlier = fires & ((continuous < 0) | (look < continuous))
    return np.where(earlier, look, continuous).astype(np.int64)


def binomial_critical(alpha: float, n: Array, q0: float) -> Array:
    """Smallest counts c with P(Bin(n, q0) > c) <= alpha (isf, settled on the definition)."""
    critical = sps.binom.isf(alpha, n, q0)
    return np.asarray(np.where(sps.binom.sf(critical, n, q0) > alpha, critical + 1, critical))


def checkpoint_size(q0: float, q1: float, bad_per_candidate: float, alpha: float) -> float:
    """Candidate requests at which the checkpoint's test detects ``q1`` with CHECKPOINT_POWER.

    The bad events seen by then are Poisson; given their number T the test rejects when the
    candidate's share of them exceeds the level-``alpha`` binomial critical value.
    """

    def power(n: float) -> float:
        mean = n * bad_per_candidate
        t = np.arange(max(int(mean - 8 * math.sqrt(mean)), 1), int(mean + 8 * math.sqrt(mean)) + 2)
        critical = binomial_critical(alpha, t, q0)
        return float((sps.poisson.pmf(t, mean) * sps.binom.sf(critical, t, q1)).sum())

    lo, hi = 1.0, 1e8
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if power(mid) >= CHECKPOINT_POWER else (mid, hi)
    return hi


def window_to_look(first_window: NDArray[np.int64], size: int) -> NDArray[np.int64]:
    """Map a window index to the look at which the window closes."""
    return np.where(first_window >= 0, (first_window + 1) * size - 1, -1)


def kayenta(
    per_block_c: Array, per_block_s: Array, effect: Callable[[Array, Array], NDArray[np.bool_]]
) -> dict[float, NDArray[np.int64]]:
    """First look at which a Kayenta-style judgement fails the canary (-1 if never).

    Returned for every p-value threshold in ``KAYENTA_LEVELS`` from the same p-values, so the
    benchmark can also report Kayenta at the threshold that matches our false-rollback rate.
    """
    runs, n_blocks = per_block_c.shape
    result = {level: np.full(runs, -1, dtype=np.int64) for level in KAYENTA_LEVELS}
    per_judgement = WINDOW // BLOCK
    for j in range(per_judgement, n_blocks + 1, per_judgement):
        x, y = per_block_c[:, :j], per_block_s[:, :j]
        with np.errstate(invalid="ignore", divide="ignore"):
            p = sps.mannwhitneyu(x, y, alternative="greater", axis=1, method="asymptotic").pvalue
        p = np.nan_to_num(p, nan=1.0)
        big = effect(x.mean(axis=1), y.mean(axis=1))
        for level, first in result.items():
            newly = (p < level) & big & (first < 0)
            first[newly] = j * BLOCK - 1
    return result


# --- means: per-run through the monitors' mean judge ---------------------------------------------


def simulate_means(sc: Scenario, runs: int, rng: np.random.Generator) -> dict[str, Any]:
    volume, share, incident = schedule(sc)
    g = Guardrail.from_mapping(sc.guardrail)
    baseline, _, _ = mean_baseline(sc, g)
    setup = Setup(alpha=ALPHA, baseline=baseline)
    look_of_request = np.repeat(np.arange(sc.looks), volume)
    n_req = look_of_request.size
    alarms: dict[str, NDArray[np.int64]] = {m: np.full(runs, -1, dtype=np.int64) for m in METHODS}
    cum_nc = np.zeros((runs, sc.looks))
    for run in range(runs):
        cand = rng.random(n_req) < share[look_of_request]
        values, arrival = draw_values(sc, cand, look_of_request, incident[look_of_request], rng)
        order = np.argsort(arrival, kind="stable")
        arrival_sorted = arrival[order]
        edges = np.searchsorted(arrival_sorted, np.arange(1, sc.looks + 1))
        cum_nc[run] = np.cumsum(np.bincount(look_of_request[cand], minlength=sc.looks))
        # ours: the monitors' judge, fed in arrival order, judged after every look.
        judge = MeanJudge(g, [g], Statistic.MEAN, setup)
        bp = np.round(share[look_of_request] * 10_000).astype(np.int64)
        start = 0
        for look, end in enumerate(edges):
            if end > start:
                idx = order[start:end]
                judge.fold(cand[idx], bp[idx], values[idx], ())
                start = end
                if judge.verdict(g).status is VerdictStatus.BREACH:
                    alarms["ours"][run] = look
                    break
        # comparators on per-look sums by arrival look
        valid = arrival < sc.looks
        arr_look = np.where(valid, arrival, 0).astype(np.int64)
        scale = np.log1p(values) if sc.metric == "latency" else values
        sums = {}
        for arm, mask in (("c", cand & valid), ("s", ~cand & valid)):
            sums[arm] = (
                np.bincount(arr_look[mask], minlength=sc.looks).astype(np.float64),
                np.bincount(arr_look[mask], weights=scale[mask], minlength=sc.looks),
                np.bincount(arr_look[mask], weights=scale[mask] ** 2, minlength=sc.looks),
            )
        for method, look in compare_means(sc, g, sums).items():
            alarms[method][run] = look
    floors = None if sc.null else detection_floors(sc)
    harmed = cum_nc  # every candidate request served carries a mean shift
    return summarise(sc, alarms, cum_nc, harmed, floors)


def mean_baseline(sc: Scenario, g: Guardrail) -> tuple[Baseline, float, float]:
    """A frozen baseline like Baseline.from_events would build; sigma and the Wald shift."""
    if sc.metric == "latency":
        sigma, mu = 0.5, math.log(1000.0)
        snap = MetricBaseline(count=10_000, log_mean=mu, log_variance=sigma**2)
        delta = math.log(sc.effect) - math.log1p(g.tolerance)
        return Baseline({"latency_ms": snap}), sigma, abs(delta)
    if sc.metric == "cost":
        mean = COST_MEAN
        snap = MetricBaseline(count=10_000, mean=mean, variance=mean**2 / COST_SHAPE)
        # D = mu_c - (1 + t) mu_s; the candidate's noise dominates the AIPW sum.
        delta = (sc.effect - 1 - g.tolerance) * mean
        return Baseline({"cost_usd": snap}), sc.effect * mean / math.sqrt(2), delta
    snap = MetricBaseline(count=10_000, mean=0.8, variance=0.8 * 0.2 / 11)
    return Baseline({"quality": snap}), math.sqrt(0.8 * 0.2 / 11), abs(sc.effect) - g.tolerance


def draw_values(
    sc: Scenario,
    cand: NDArray[np.bool_],
    request_look: NDArray[np.int64],
    incident: Array,
    rng: np.random.Generator,
) -> tuple[Array, Array]:
    """Per-request values and the look at which each observation arrives."""
    n = cand.size
    if sc.metric == "latency":
        mult = np.where(cand, sc.effect, 1.0) * (1 + 0.5 * incident)
        values = np.exp(rng.normal(math.log(1000.0), 0.5, n)) * mult
        return values, request_look.astype(np.float64)
    if sc.metric == "cost":
        mean = COST_MEAN * np.where(cand, sc.effect, 1.0)
        return rng.gamma(COST_SHAPE, mean / COST_SHAPE), request_look.astype(np.float64)
    # quality: Beta scores (mean 0.8, or 0.8 + effect), half the requests give feedback, late.
    mean = 0.8 + np.where(cand, sc.effect, 0.0)
    values = rng.beta(mean * 10.0, (1 - mean) * 10.0)
    gives = rng.random(n) < sc.extra.get("feedback", 0.5)
    delay = rng.exponential(5.0, n)
    arrival = np.where(gives, request_look + delay, np.inf)
    return values, arrival


def compare_means(
    sc: Scenario, g: Guardrail, sums: dict[str, tuple[Array, Array, Array]]
) -> dict[str, int]:
    """Naive windows, Kayenta and the every-look t-test on per-look sums."""
    (nc, sc_, qc), (ns, ss, qs) = sums["c"], sums["s"]
    up = sc.metric != "quality"
    log_scale = sc.metric == "latency"
    tol, det = g.tolerance, g.effective_detect
    out: dict[str, int] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        # naive windows
        wn_c, wn_s = blocks(nc, WINDOW), blocks(ns, WINDOW)
        wm_c, wm_s = blocks(sc_, WINDOW) / wn_c, blocks(ss, WINDOW) / wn_s
        if log_scale:
            naive = wm_c - wm_s > math.log1p(det)
        elif up:
            naive = wm_c > (1 + det) * wm_s
        else:
            naive = wm_c < wm_s - det
        hits = np.flatnonzero(naive & (wn_c >= 50))
        out["naive"] = int((hits[0] + 1) * WINDOW - 1) if hits.size else -1
        # kayenta on per-block means
        bm_c = np.nan_to_num(blocks(sc_, BLOCK) / blocks(nc, BLOCK))
        bm_s = np.nan_to_num(blocks(ss, BLOCK) / blocks(ns, BLOCK))
        if not up:
            bm_c, bm_s = -bm_c, -bm_s
        if log_scale:
            effect = lambda c, s: c - s > math.log1p(tol)  # noqa: E731 - tiny local predicate
        elif up:
            effect = lambda c, s: c > (1 + tol) * s  # noqa: E731
        else:
            effect = lambda c, s: c - s > tol  # noqa: E731
        for level, first in kayenta(bm_c[None, :], bm_s[None, :], effect).items():
            out[f"kayenta@{level:g}"] = int(first[0])
        # Welch t at every look on cumulative sums
        cn_c, cn_s = np.cumsum(nc), np.cumsum(ns)
        mc, ms = np.cumsum(sc_) / cn_c, np.cumsum(ss) / cn_s
        vc = np.cumsum(qc) / cn_c - mc**2
        vs = np.cumsum(qs) / cn_s - ms**2
        if log_scale:
            diff = mc - ms - math.log1p(tol)
            se = np.sqrt(vc / cn_c + vs / cn_s)
        elif up:
            diff = mc - (1 + tol) * ms
            se = np.sqrt(vc / cn_c + (1 + tol) ** 2 * vs / cn_s)
        else:
            diff = ms - mc - tol
            se = np.sqrt(vc / cn_c + vs / cn_s)
        t = np.where(se > 0, diff / se, 0.0)
        hits = np.flatnonzero((t > Z_CRIT) & (cn_c >= 30))
        out["z/t-every-look"] = int(hits[0]) if hits.size else -1
    return out


# --- floors: what any method could achieve --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Floors:
    """The yardsticks for a detection scenario, in candidate requests (harm: see ``harm``).

    Only ``median`` and ``harm`` bound every alpha-level method's medians; ``wald`` bounds the
    expected requests of tests that also fix beta, and ``power_one`` is what a power-one test
    at threshold 1/alpha needs on average when it knows the alternative.
    """

    wald: float  # Wald's expected sample size at (ALPHA, BETA), baseline known
    power_one: float  # ln(1/alpha) / KL: where a power-one test's boundary sits on average
    median: float  # the Neyman-Pearson median floor: no alpha-level test's median is lower
    harm: float  # harmed by the median floor: bad candidate events (rates), requests (means)


def detection_floors(sc: Scenario) -> Floors | None:
    """Wald's, the power-one and the median floor for the true regression against the tolerance.

    For rates the harm floor is the expected bad candidate events by the median floor,
    p1 x floor. (A strict bound on the median harm, from the Neyman-Pearson test on the gaps
    between bad events, lies within one event of it on these scenarios.)
    """
    g = Guardrail.from_mapping(sc.guardrail)
    if sc.metric in ("error", "safety"):
        if sc.base == 0.0:  # a known zero baseline: one bad event proves it, no floor to quote
            return None
        p0, p1 = sc.base * (1 + g.tolerance), sc.p_candidate
        median = float(binomial_median_floor(p0, p1, alpha=ALPHA))
        return Floors(
            wald=wald_bernoulli_floor(p0, p1, alpha=ALPHA, beta=BETA),
            power_one=math.log(1 / ALPHA) / bernoulli_kl(p1, p0),
            median=median,
            harm=p1 * median,
        )
    _, sigma, delta = mean_baseline(sc, g)
    # Per served request: only a share of them ever reports a quality score.
    per_obs = sc.extra.get("feedback", 1.0)
    kl = delta * delta / (2 * sigma * sigma)
    median = mean_median_floor(sc, g)
    return Floors(
        wald=wald_gaussian_floor(delta, sigma, alpha=ALPHA, beta=BETA) / per_obs,
        power_one=math.log(1 / ALPHA) / kl / per_obs,
        median=median,
        harm=median,  # every candidate request served carries the shift
    )


def mean_median_floor(sc: Scenario, g: Guardrail) -> float:
    """The median floor in candidate requests served, for ``draw_values``' distributions.

    Exact for latency (log-normal: a Gaussian shift on the log scale) and cost (Gamma sums).
    Approximate for quality: the Beta scores are treated as Gaussian at stable's variance, and
    the observations needed are divided by the feedback rate, taking the number of scores at
    its mean; feedback delays are ignored, which keeps it below what any method needs.
    """
    _, sigma, delta = mean_baseline(sc, g)
    if sc.metric == "latency":
        return float(gaussian_median_floor(delta, sigma, alpha=ALPHA))
    if sc.metric == "cost":
        scale0 = COST_MEAN * (1 + g.tolerance) / COST_SHAPE  # the null boundary's multiplier
        scale1 = COST_MEAN * sc.effect / COST_SHAPE
        return float(gamma_median_floor(COST_SHAPE, scale0, scale1, alpha=ALPHA))
    return gaussian_median_floor(delta, sigma, alpha=ALPHA) / sc.extra.get("feedback", 1.0)


# --- summary and output -----------------------------------------------------------------------


def summarise(
    sc: Scenario,
    alarms: dict[str, NDArray[np.int64]],
    cum_nc: Array,
    cum_harm: Array,
    floors: Floors | None,
) -> dict[str, Any]:
    runs = cum_nc.shape[0]
    rows = {}
    for method, first in alarms.items():
        hit = first >= 0
        idx = np.where(hit, first, 0)
        requests = np.where(hit, cum_nc[np.arange(runs), idx], np.inf)
        harmed = np.where(hit, cum_harm[np.arange(runs), idx], np.inf)
        rate = float(hit.mean())
        row: dict[str, Any] = {"runs": runs, "rollback_rate": rate}
        if sc.null:
            row["false_rollback"] = rate
            row["false_rollback_se"] = math.sqrt(max(rate * (1 - rate), 1e-12) / runs)
        else:
            row["median_requests"] = _q(requests, 0.5)
            row["p90_requests"] = _q(requests, 0.9)
            row["median_harmed"] = _q(harmed, 0.5)
            if floors is not None and method in ("ours", ORACLE, AT_DETECT, CHECKPOINT):
                median = row["median_requests"]
                row["wald_floor"], row["power_one_floor"] = floors.wald, floors.power_one
                row["median_floor"], row["harm_floor"] = floors.median, floors.harm
                for key, floor in (
                    ("ratio_to_floor", floors.wald),
                    ("ratio_to_power_one_floor", floors.power_one),
                    ("ratio_to_median_floor", floors.median),
                ):
                    row[key] = median / floor if median is not None else None
        rows[method] = row
    family = "rates" if sc.metric in ("error", "safety") else "means"
    out: dict[str, Any] = {
        "scenario": sc.name,
        "family": family,
        "null": sc.null,
        "horizon_looks": sc.looks,
        "guardrail": sc.guardrail,
        "share": sc.share,
        "methods": rows,
    }
    if family == "rates" and not sc.null:
        out["stable_rate"], out["candidate_rate"] = sc.base, sc.p_candidate
        out["true_ratio"] = sc.effect if math.isfinite(sc.effect) else None  # None: stable at 0
        ours, truth = rows["ours"].get("median_requests"), rows[ORACLE].get("median_requests")
        out["median_over_told_truth"] = ours / truth if ours and truth else None
    return out


def match_kayenta(results: list[dict[str, Any]]) -> None:
    """Add ``kayenta-matched``: Kayenta at the largest p threshold within alpha on A/A."""
    for family in ("rates", "means"):
        members = [r for r in results if r["family"] == family]
        aa = [r for r in members if r["scenario"].startswith("aa_")]
        if not aa:
            continue
        ok = [
            level
            for level in KAYENTA_LEVELS
            if all(r["methods"][f"kayenta@{level:g}"]["false_rollback"] <= ALPHA for r in aa)
        ]
        level = max(ok) if ok else min(KAYENTA_LEVELS)
        for r in members:
            r["methods"]["kayenta-matched"] = {**r["methods"][f"kayenta@{level:g}"], "p": level}
            ours, kay = r["methods"]["ours"], r["methods"]["kayenta-matched"]
            if not r["null"]:
                a, b = ours.get("median_harmed"), kay.get("median_harmed")
                r["harmed_kayenta_matched_over_ours"] = b / a if a and b else None
                # The largest factor any alpha-level method could reach against this Kayenta.
                floor = ours.get("harm_floor")
                r["best_harm_ratio_vs_kayenta_matched"] = b / floor if floor and b else None


def _q(values: Array, q: float) -> float | None:
    with np.errstate(invalid="ignore"):  # inf - inf while interpolating undetected runs
        value = float(np.quantile(values, q))
    return value if math.isfinite(value) else None


def run_benchmark(*, runs: int, seed: int, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run every scenario (or ``names``) and return the JSON-ready results."""
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    for i, sc in enumerate(SCENARIOS):
        if names is not None and sc.name not in names:
            continue
        rng = np.random.default_rng([seed, i])
        n = max(int(runs * sc.runs_scale), 20)
        if sc.metric in ("error", "safety"):
            results.append(simulate_rates(sc, n, rng))
        else:
            results.append(simulate_means(sc, n, rng))
    match_kayenta(results)
    late = run_late_lines(runs=runs, seed=seed, alpha=ALPHA, per_look=PER_LOOK, names=names)
    return {
        "alpha": ALPHA,
        "beta": BETA,
        "requests_per_look": PER_LOOK,
        "seed": seed,
        "runs": runs,
        "seconds": round(time.perf_counter() - started, 1),
        "scenarios": results,
        "late_lines": late,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized run (about a minute)")
    parser.add_argument("--runs", type=int, default=None, help="A/A runs (default 2000, quick 200)")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        default=None,
        help="run only these scenarios (names as in the tables; each keeps its random stream)",
    )
    args = parser.parse_args(argv)
    runs = args.runs or (200 if args.quick else 2000)
    known = {sc.name for sc in (*SCENARIOS, *LATE_SCENARIOS)}
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    names = tuple(args.only) if args.only else None
    result = run_benchmark(runs=runs, seed=args.seed, names=names)
    result["mode"] = "quick" if args.quick else "full"
    print(render(result))
    print()
    print(render_targets(result))
    print()
    print(render_truth(result))
    print()
    print(render_late_lines(result["late_lines"], alpha=ALPHA))
    print(f"\n{result['mode']} mode, {runs} A/A runs, {result['seconds']} s")
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
