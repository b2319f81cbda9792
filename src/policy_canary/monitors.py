"""Monitors: events -> per-arm aggregates -> guardrail verdicts with evidence.

The controller's tick uses three things from here::

    baseline = Baseline.from_events(stable_recent_events, prices=plan_prices)   # rollout start
    monitor = RolloutMonitor.create(guardrails, alpha=0.01, baseline=baseline,
                                    prices=plan_prices, stages={"validation": {...}})
    ...
    monitor.fold(new_events)                    # each tick, O(new events)
    verdicts = monitor.verdicts("validation")   # list[Verdict] for decide()
    store(monitor.to_json())                    # and RolloutMonitor.from_json() after a restart

Every guardrail's test runs from the rollout start to its end; stages only choose which
thresholds are read (see ``docs/statistics.md``). :func:`preflight` sizes a plan before it runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from ._judges import Judge, Setup, build_judge
from .errors import InvalidMetricError, PlanError
from .guardrails import (
    Direction,
    Guardrail,
    GuardrailKind,
    ModelPrice,
    Statistic,
    check_unique_names,
    price_of,
    resolve_stage_guardrails,
)
from .stats import (
    BPS,
    MAIN_WEIGHT,
    bernoulli_kl,
    candidate_share_of_bad,
    mixture_rho,
    one_sided_normal_mixture_radius,
    wald_bernoulli_floor,
    wald_gaussian_floor,
)
from .verdict import Verdict, VerdictStatus

__all__ = [
    "ARMS",
    "Baseline",
    "MetricBaseline",
    "MonitorEvent",
    "PreflightRow",
    "RolloutMonitor",
    "StagePlan",
    "preflight",
]

#: The two arms of a rollout.
ARMS = ("stable", "candidate")
_QUANTILES = ("p50", "p90", "p95", "p99")


@dataclass(frozen=True, slots=True)
class MonitorEvent:
    """What happened on one request, as the monitors see it.

    ``traffic_bp`` is the candidate's share (basis points) when the request was *routed*.
    Late feedback (an LLM-judge score, a thumbs-up) is a separate event with ``feedback=True``
    carrying only ``quality`` and/or ``metrics``, with the original decision's arm and share:
    it adds observations of those metrics but never counts as a second request, so request
    metrics (error, safety flags, latency, cost) are read from non-feedback events only.
    """

    arm: str
    traffic_bp: int
    at: datetime
    latency_ms: float | None = None
    error: bool | None = None
    quality: float | None = None
    safety_flags: tuple[str, ...] = ()
    cost_usd: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None
    metrics: Mapping[str, float | bool] = field(default_factory=dict)
    feedback: bool = False

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise InvalidMetricError(f"arm must be 'stable' or 'candidate'; got {self.arm!r}")
        if isinstance(self.traffic_bp, bool) or not 0 <= self.traffic_bp <= BPS:
            raise InvalidMetricError(f"traffic_bp must lie in 0..{BPS}; got {self.traffic_bp!r}")
        for name in ("latency_ms", "cost_usd"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise InvalidMetricError(f"{name} must be a finite number >= 0; got {value!r}")
        if self.quality is not None and not (
            math.isfinite(self.quality) and 0.0 <= self.quality <= 1.0
        ):
            raise InvalidMetricError(f"quality must lie in [0, 1]; got {self.quality!r}")
        for name in ("input_tokens", "output_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidMetricError(f"{name} must be >= 0; got {value!r}")
        for key, value in self.metrics.items():
            if not isinstance(value, bool) and not math.isfinite(float(value)):
                raise InvalidMetricError(f"metrics.{key} must be finite; got {value!r}")

    @property
    def is_candidate(self) -> bool:
        """True when the candidate served this request."""
        return self.arm == "candidate"


def _observe(
    metric: str, event: MonitorEvent, prices: Mapping[str, ModelPrice], flags: Sequence[str]
) -> float | bool | None:
    """Read one metric from an event, or ``None`` when the event does not carry it."""
    if metric == "quality":
        return event.quality
    if metric.startswith("metrics."):
        return event.metrics.get(metric[len("metrics.") :])
    if event.feedback:
        return None
    if metric == "error":
        return event.error
    if metric == "safety_flags":
        if flags:
            return any(f in flags for f in event.safety_flags)
        return bool(event.safety_flags)
    if metric == "latency_ms":
        return event.latency_ms
    if metric == "cost_usd":
        if event.cost_usd is not None:
            return event.cost_usd
        return price_of(prices, event.model, event.input_tokens, event.output_tokens)
    return None


# --- baseline ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricBaseline:
    """Stable's recent behaviour on one metric, frozen when the rollout starts.

    ``mean``/``variance`` are on the raw scale, ``log_mean``/``log_variance`` on ln(1 + x)
    (the scale latency is compared on); ``rate`` is set for boolean metrics; ``quantiles``
    (p50/p90/p95/p99) are on the raw scale.
    """

    count: int
    mean: float | None = None
    variance: float | None = None
    log_mean: float | None = None
    log_variance: float | None = None
    rate: float | None = None
    quantiles: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "count": self.count,
            "mean": self.mean,
            "variance": self.variance,
            "log_mean": self.log_mean,
            "log_variance": self.log_variance,
            "rate": self.rate,
            "quantiles": dict(self.quantiles),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricBaseline:
        """Rebuild from :meth:`to_dict` output."""
        return cls(
            count=int(data["count"]),
            mean=data.get("mean"),
            variance=data.get("variance"),
            log_mean=data.get("log_mean"),
            log_variance=data.get("log_variance"),
            rate=data.get("rate"),
            quantiles={k: float(v) for k, v in data.get("quantiles", {}).items()},
        )


@dataclass(frozen=True, slots=True)
class Baseline:
    """A snapshot of stable's recent traffic: quantiles to freeze, rates and means for sizing."""

    metrics: Mapping[str, MetricBaseline] = field(default_factory=dict)

    @classmethod
    def from_events(
        cls, events: Iterable[MonitorEvent], *, prices: Mapping[str, ModelPrice] | None = None
    ) -> Baseline:
        """Summarise the stable arm's events (candidate events are ignored)."""
        prices = prices or {}
        values: dict[str, list[float | bool]] = {}
        for event in events:
            if event.is_candidate:
                continue
            names = ["error", "safety_flags", "latency_ms", "cost_usd", "quality"]
            names += [f"metrics.{k}" for k in event.metrics]
            for name in names:
                value = _observe(name, event, prices, ())
                if value is not None:
                    values.setdefault(name, []).append(value)
        summary = {name: _summarise(name, vals) for name, vals in values.items()}
        return cls(metrics=summary)

    def get(self, metric: str) -> MetricBaseline | None:
        """Return the snapshot of one metric, if stable reported it."""
        return self.metrics.get(metric)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {name: m.to_dict() for name, m in sorted(self.metrics.items())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Baseline:
        """Rebuild from :meth:`to_dict` output."""
        return cls(metrics={k: MetricBaseline.from_dict(v) for k, v in data.items()})


def _summarise(name: str, values: Sequence[float | bool]) -> MetricBaseline:
    if all(isinstance(v, bool) for v in values):
        rate = sum(bool(v) for v in values) / len(values)
        return MetricBaseline(count=len(values), mean=rate, variance=rate * (1 - rate), rate=rate)
    raw = np.asarray([float(v) for v in values if not isinstance(v, bool)], dtype=np.float64)
    logs = np.log1p(np.maximum(raw, 0.0))
    many = raw.size > 1
    return MetricBaseline(
        count=int(raw.size),
        mean=float(raw.mean()),
        variance=float(raw.var(ddof=1)) if many else None,
        log_mean=float(logs.mean()),
        log_variance=float(logs.var(ddof=1)) if many else None,
        quantiles={q: float(np.quantile(raw, int(q[1:]) / 100)) for q in _QUANTILES},
    )


# --- the rollout's monitor ---------------------------------------------------------------------


class RolloutMonitor:
    """All guardrail tests of one rollout: fold events, read verdicts, persist as JSON.

    The false-rollback budget ``alpha`` is split evenly across the statistical guardrails
    (tripwires need none). ``stages`` maps a stage name to its overrides
    ``{guardrail_name: {field: value}}``; every threshold any stage uses is known here, so each
    test runs from the rollout start and a stage switch never restarts one.
    ``design_candidate_samples`` and ``design_share_bp`` say where the mean tests should be
    tightest (the candidate sample and share a stage is expected to reach); they tune power,
    never validity.
    """

    def __init__(
        self,
        guardrails: Sequence[Guardrail],
        *,
        alpha: float = 0.01,
        baseline: Baseline | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        stages: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
        design_candidate_samples: int = 2000,
        design_share_bp: int = 500,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise PlanError(f"alpha must lie in (0, 1); got {alpha}")
        if design_candidate_samples < 1:
            raise PlanError("design_candidate_samples must be >= 1")
        # Only a tuning input: a 100% (or 0%) stage has no comparison, so size for nearly it.
        design_share_bp = min(max(design_share_bp, 1), BPS - 1)
        check_unique_names(guardrails)
        self.guardrails = tuple(guardrails)
        self.alpha = alpha
        self.baseline = baseline or Baseline()
        self.prices = dict(prices or {})
        self.stages = {name: dict(o) for name, o in (stages or {}).items()}
        self.design_candidate_samples = design_candidate_samples
        self.design_share_bp = design_share_bp
        self._stage_guardrails = {
            name: resolve_stage_guardrails(self.guardrails, o) for name, o in self.stages.items()
        }
        statistical = [g for g in self.guardrails if g.kind.is_statistical()]
        #: Each statistical guardrail's share of the budget (alpha / M).
        self.alpha_per_guardrail = alpha / max(len(statistical), 1)
        self._setup = Setup(
            alpha=self.alpha_per_guardrail,
            baseline=self.baseline,
            design_samples=design_candidate_samples,
            design_share=design_share_bp / BPS,
        )
        self._judges: dict[str, Judge | None] = {}
        self._statistics: dict[str, Statistic | None] = {}
        self.events_folded = 0
        for g in self.guardrails:
            stat = None if g.kind is GuardrailKind.TRIPWIRE else g.statistic
            if stat is None and g.kind is not GuardrailKind.TRIPWIRE and g.metric_info is not None:
                stat = g.metric_info.default_statistic
            self._statistics[g.name] = stat
            # A custom metric without a declared statistic waits for its first value to say
            # whether it is a boolean (rate) or a number (mean).
            lazy = stat is None and g.kind is not GuardrailKind.TRIPWIRE
            self._judges[g.name] = None if lazy else self._build(g, stat)

    def _variants(self, g: Guardrail) -> list[Guardrail]:
        """The guardrail as every stage sees it: each test is sized for all of them at once."""
        staged = (s for stage in self._stage_guardrails.values() for s in stage)
        return [g, *(s for s in staged if s.name == g.name)]

    def _build(self, g: Guardrail, statistic: Statistic | None) -> Judge:
        return build_judge(g, self._variants(g), statistic, self._setup)

    def fold(self, events: Iterable[MonitorEvent]) -> int:
        """Fold new events (in arrival order) into every guardrail's test; return how many."""
        batch = list(events)
        if not batch:
            return 0
        cand_all = np.asarray([e.is_candidate for e in batch], dtype=bool)
        bp_all = np.asarray([e.traffic_bp for e in batch], dtype=np.int64)
        for g in self.guardrails:
            observed: list[Any]
            if g.kind is GuardrailKind.TRIPWIRE:
                observed = [
                    None if e.feedback else tuple(f for f in e.safety_flags if f in g.flags)
                    for e in batch
                ]
            else:
                observed = [_observe(g.metric, e, self.prices, g.flags) for e in batch]
            idx = [i for i, v in enumerate(observed) if v is not None]
            if not idx:
                continue
            judge = self._judges[g.name]
            if judge is None:
                first = observed[idx[0]]
                stat = g.resolved_statistic(boolean_values=isinstance(first, bool))
                self._statistics[g.name] = stat
                judge = self._judges[g.name] = self._build(g, stat)
            pick = np.asarray(idx, dtype=np.int64)
            judge.fold(
                cand_all[pick],
                bp_all[pick],
                [observed[i] for i in idx],
                [batch[i].at for i in idx],
            )
        self.events_folded += len(batch)
        return len(batch)

    def stage_guardrails(self, stage: str | None = None) -> tuple[Guardrail, ...]:
        """The guardrails as ``stage`` sees them: its overrides applied, if it has any."""
        if stage is None or stage not in self._stage_guardrails:
            return self.guardrails
        return self._stage_guardrails[stage]

    def verdicts(self, stage: str | None = None) -> list[Verdict]:
        """Judge every guardrail with ``stage``'s thresholds, in plan order.

        A stage that declared no overrides (so is absent from ``stages``) uses the plan's
        thresholds; ``stage=None`` does too.
        """
        results = []
        for g in self.stage_guardrails(stage):
            judge = self._judges[g.name]
            if judge is None:
                results.append(
                    Verdict(
                        guardrail=g.name,
                        metric=g.metric,
                        status=VerdictStatus.INSUFFICIENT_DATA,
                        action=g.action,
                        reason=f"{g.name}: no observations of {g.metric} yet.",
                        evidence={"kind": g.kind.value, "alpha": self.alpha_per_guardrail},
                    )
                )
                continue
            results.append(judge.verdict(g))
        return results

    def to_dict(self) -> dict[str, Any]:
        """Return the whole state as a JSON-ready dict (plan inputs plus every test's state)."""
        return {
            "format": 1,
            "alpha": self.alpha,
            "guardrails": [
                g.model_dump(mode="json", by_alias=True, exclude_none=True) for g in self.guardrails
            ],
            "stages": self.stages,
            "baseline": self.baseline.to_dict(),
            "prices": {m: p.model_dump(mode="json") for m, p in sorted(self.prices.items())},
            "design_candidate_samples": self.design_candidate_samples,
            "design_share_bp": self.design_share_bp,
            "events_folded": self.events_folded,
            "statistics": {k: (v.value if v else None) for k, v in self._statistics.items()},
            "judges": {k: (j.state() if j else None) for k, j in self._judges.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutMonitor:
        """Rebuild a monitor from :meth:`to_dict` output; it continues the same tests."""
        if data.get("format") != 1:
            raise PlanError(f"unsupported monitor state format {data.get('format')!r}")
        monitor = cls(
            [Guardrail.from_mapping(g) for g in data["guardrails"]],
            alpha=float(data["alpha"]),
            baseline=Baseline.from_dict(data["baseline"]),
            prices={m: ModelPrice.model_validate(p) for m, p in data["prices"].items()},
            stages=data["stages"],
            design_candidate_samples=int(data["design_candidate_samples"]),
            design_share_bp=int(data["design_share_bp"]),
        )
        monitor.events_folded = int(data["events_folded"])
        by_name = {g.name: g for g in monitor.guardrails}
        for name, state in data["judges"].items():
            if state is None:
                continue
            raw = data["statistics"][name]
            stat = Statistic(raw) if raw else None
            monitor._statistics[name] = stat
            judge = monitor._build(by_name[name], stat)
            judge.load(state)
            monitor._judges[name] = judge
        return monitor

    def to_json(self) -> str:
        """Serialise with :func:`json.dumps` (sorted keys, so equal states give equal text)."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> RolloutMonitor:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


# --- preflight ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StagePlan:
    """The plain facts about a stage that :func:`preflight` needs."""

    name: str
    traffic_bp: int
    min_duration: timedelta
    max_duration: timedelta | None = None
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PreflightRow:
    """Can this stage detect this guardrail's smallest regression, and how soon?

    ``expected_candidate_requests`` is our test's approximate expected sample to detect the
    ``detect`` regression; ``wald_floor`` is what an oracle SPRT (baseline known, alpha and
    ``beta`` errors) would need, which no sequential test beats on average. Times are given
    when a request rate is known. ``None`` means it cannot be sized (see ``note``).
    """

    stage: str
    guardrail: str
    metric: str
    traffic_bp: int
    expected_candidate_requests: float | None
    wald_floor: float | None
    expected_duration: timedelta | None
    dwell: timedelta
    max_duration: timedelta | None
    warning: str | None = None
    note: str | None = None


def preflight(
    guardrails: Sequence[Guardrail],
    stages: Sequence[StagePlan],
    *,
    alpha: float = 0.01,
    beta: float = 0.2,
    requests_per_second: float | None = None,
    baseline: Baseline | None = None,
    baseline_rates: Mapping[str, float] | None = None,
) -> list[PreflightRow]:
    """Size every (stage, guardrail) pair; warn when a stage cannot detect within its dwell.

    ``baseline_rates`` gives stable's rate of a boolean metric (e.g. ``{"error": 0.01}``) and
    takes precedence over ``baseline``, which also provides the variances the mean tests need.
    """
    statistical = [g for g in guardrails if g.kind.is_statistical()]
    alpha_m = alpha / max(len(statistical), 1)
    rows = []
    for stage in stages:
        rho = stage.traffic_bp / BPS
        for g in resolve_stage_guardrails(guardrails, stage.overrides):
            ours, floor, note = _size(g, rho, alpha_m, beta, baseline, baseline_rates or {})
            duration = None
            if ours is not None and requests_per_second and rho > 0:
                duration = timedelta(seconds=ours / (requests_per_second * rho))
            limit = stage.max_duration or stage.min_duration
            warning = None
            if duration is not None and duration > limit:
                warning = (
                    f"stage {stage.name!r} cannot detect {g.name}'s smallest regression within "
                    f"its {'maximum' if stage.max_duration else 'minimum'} duration: expect "
                    f"{_human(duration)} (about {ours:,.0f} candidate requests) against "
                    f"{_human(limit)}"
                )
            rows.append(
                PreflightRow(
                    stage=stage.name,
                    guardrail=g.name,
                    metric=g.metric,
                    traffic_bp=stage.traffic_bp,
                    expected_candidate_requests=ours,
                    wald_floor=floor,
                    expected_duration=duration,
                    dwell=stage.min_duration,
                    max_duration=stage.max_duration,
                    warning=warning,
                    note=note,
                )
            )
    return rows


def _human(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 86_400:
        return f"{seconds / 86_400:.1f} d"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / 60:.0f} min"


def _size(
    g: Guardrail,
    rho: float,
    alpha_m: float,
    beta: float,
    baseline: Baseline | None,
    rates: Mapping[str, float],
) -> tuple[float | None, float | None, str | None]:
    """Return (our expected candidate requests, Wald's floor, note) for one guardrail."""
    if g.kind is GuardrailKind.TRIPWIRE:
        return None, None, "tripwire: acts on the first flagged request, no sample needed"
    snapshot = baseline.get(g.metric) if baseline is not None else None
    stat = g.statistic or (g.metric_info.default_statistic if g.metric_info else None)
    d, t = g.effective_detect, g.tolerance
    threshold = math.log(1.0 / alpha_m)
    if g.kind is GuardrailKind.SLO and (stat is Statistic.RATE or (stat and stat.is_quantile())):
        if stat is Statistic.RATE:
            p0 = t
            p1 = p0 * (1 + d) if g.worse is Direction.UP else p0 * (1 - d)
        else:
            quantile = stat.quantile or 0.5
            p0 = 1 - quantile if g.worse is Direction.UP else quantile
            p1 = min(p0 * (1 + d), 0.999)
        kl = bernoulli_kl(p1, p0)
        ours = (threshold + math.log(1 / MAIN_WEIGHT)) / kl
        return ours, wald_bernoulli_floor(p0, p1, alpha=alpha_m, beta=beta), None
    if g.kind is GuardrailKind.SLO:
        if snapshot is None or not snapshot.variance:
            return None, None, "no baseline variance to size this mean SLO"
        delta = d * t
        kl = delta * delta / (2 * snapshot.variance)
        ours = (threshold + math.log(len((1.0, 0.5, 0.25)))) / kl
        return (
            ours,
            wald_gaussian_floor(delta, math.sqrt(snapshot.variance), alpha=alpha_m, beta=beta),
            "Gaussian approximation",
        )
    if not 0.0 < rho < 1.0:
        return None, None, "no concurrent baseline at this share; relative tests do not move"
    if stat is Statistic.RATE or (stat is not None and stat.is_quantile()):
        if g.tolerance_field == "max_delta":
            return None, None, "max_delta on a rate is sized as a mean; give baseline variance"
        if stat is Statistic.RATE:
            p = rates.get(g.metric, snapshot.rate if snapshot is not None else None)
        else:
            p = 1 - (stat.quantile or 0.5)
        if p is None or not 0.0 < p < 1.0:
            return None, None, f"no baseline rate for {g.metric}; pass baseline_rates"
        sign = 1.0 if g.worse is Direction.UP or stat.is_quantile() else -1.0
        r0, r1 = 1 + sign * t, 1 + sign * d
        q0 = float(candidate_share_of_bad(rho, r0))
        q1 = float(candidate_share_of_bad(rho, r1))
        per_candidate = (rho * p * r1 + (1 - rho) * p) * bernoulli_kl(q1, q0) / rho
        ours = (threshold + math.log(1 / MAIN_WEIGHT)) / per_candidate
        p0, p1 = min(p * r0, 0.999), min(p * r1, 0.999)
        return ours, wald_bernoulli_floor(p0, p1, alpha=alpha_m, beta=beta), None
    # Relative mean or absolute delta: normal-mixture sequence on AIPW terms.
    log_scale = g.metric == "latency_ms" and g.tolerance_field in ("max_increase", "max_decrease")
    if snapshot is None:
        return None, None, f"no baseline for {g.metric}; build one with Baseline.from_events"
    variance = snapshot.log_variance if log_scale else snapshot.variance
    mean = snapshot.log_mean if log_scale else snapshot.mean
    if not variance or mean is None:
        return None, None, f"no baseline variance for {g.metric}"
    if log_scale:
        delta = abs(
            math.log1p((1 if g.worse is Direction.UP else -1) * d)
            - math.log1p((1 if g.worse is Direction.UP else -1) * t)
        )
        c = 1.0
    elif g.tolerance_field == "max_delta":
        delta, c = d - t, 1.0
    else:
        delta, c = abs(d - t) * abs(mean), 1 + t if g.worse is Direction.UP else 1 - t
    per_pair = variance * (1 / rho + c * c / (1 - rho))
    rho_h = mixture_rho(2000 / rho * per_pair, alpha_m)
    lo, hi = 1.0, 1e9
    for _ in range(80):
        mid = math.sqrt(lo * hi)
        pairs = mid / rho
        if pairs * delta >= float(
            one_sided_normal_mixture_radius(pairs * per_pair, rho=rho_h, alpha=alpha_m)
        ):
            hi = mid
        else:
            lo = mid
    floor = wald_gaussian_floor(delta, math.sqrt(variance), alpha=alpha_m, beta=beta)
    return hi, floor, None
