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

The parts live in private modules, and the package re-exports their public names:
:class:`MonitorEvent` (``_observations.py``), the :class:`Baseline` snapshot
(``_baseline.py``), the judges (``_judges/``) and :func:`preflight` (``_preflight.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from policy_canary.errors import PlanError
from policy_canary.guardrails import (
    Guardrail,
    GuardrailKind,
    ModelPrice,
    Statistic,
    check_unique_names,
    resolve_stage_guardrails,
)
from policy_canary.monitoring._baseline import Baseline
from policy_canary.monitoring._batch import EventBatch
from policy_canary.monitoring._judges import Judge, Setup, build_judge, unobserved
from policy_canary.monitoring._missing import (
    OUTCOMES_RECORDED,
    MissingOutcomes,
    RoutedWindow,
)
from policy_canary.monitoring._observations import MonitorEvent
from policy_canary.monitoring._verdict import Verdict, VerdictStatus

#: Version of :meth:`RolloutMonitor.to_dict`'s layout; 2 since the mean tests keep weighted sums,
#: 3 since the rate test mixes out to "stable never shows it", 4 since its mixture gives the first
#: doubling beyond ``detect`` its own weight (3 and 4: same fields, a different test each).
MONITOR_STATE_FORMAT = 4

__all__ = ["MONITOR_STATE_FORMAT", "RolloutMonitor"]


class RolloutMonitor:
    """All guardrail tests of one rollout: fold events, read verdicts, persist as JSON.

    The false-rollback budget ``alpha`` is split evenly across the statistical guardrails
    (tripwires need none). ``stages`` maps a stage name to its overrides
    ``{guardrail_name: {field: value}}``; every threshold any stage uses is known here, so each
    test runs from the rollout start and a stage switch never restarts one. Every test is
    tuned to its guardrail's ``detect``.

    With ``outcomes_recorded`` (every rollout the controller runs) the monitor also judges
    missing outcomes from routed counts (:meth:`fold_routed`, ``_missing.py``), and that
    built-in guardrail takes one share of the budget: alpha / (M + 1).
    """

    def __init__(
        self,
        guardrails: Sequence[Guardrail],
        *,
        alpha: float = 0.01,
        baseline: Baseline | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        stages: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
        outcomes_recorded: bool = False,
    ) -> None:
        if not 0.0 < alpha < 1.0:
            raise PlanError(f"alpha must lie in (0, 1); got {alpha}")
        check_unique_names(guardrails)
        if outcomes_recorded and any(g.name == OUTCOMES_RECORDED for g in guardrails):
            raise PlanError(
                f"guardrail name {OUTCOMES_RECORDED!r} is taken by the built-in guardrail on "
                "missing outcomes; rename yours"
            )
        self.guardrails = tuple(guardrails)
        self.alpha = alpha
        self.baseline = baseline or Baseline()
        self.prices = dict(prices or {})
        self.stages = {name: dict(o) for name, o in (stages or {}).items()}
        self._stage_guardrails = {
            name: resolve_stage_guardrails(self.guardrails, o) for name, o in self.stages.items()
        }
        statistical = [g for g in self.guardrails if g.kind.is_statistical()]
        # The built-in outcomes_recorded guardrail (_missing.py) takes one share of the
        # budget like any statistical guardrail: alpha / (M + 1). A monitor stored before it
        # existed is continued without it (outcomes_recorded=False), with its alpha / M.
        self.missing = MissingOutcomes(1.0) if outcomes_recorded else None
        #: Each statistical guardrail's share of the budget (alpha / M, or / (M + 1)).
        self.alpha_per_guardrail = alpha / max(len(statistical) + (self.missing is not None), 1)
        if self.missing is not None:
            self.missing.alpha = self.alpha_per_guardrail
        self._setup = Setup(
            alpha=self.alpha_per_guardrail,
            baseline=self.baseline,
        )
        self._judges: dict[str, Judge | None] = {}
        self._statistics: dict[str, Statistic | None] = {}
        self.events_folded = 0
        #: Requests (events that are not late feedback) folded, for the "never reported" check.
        self.requests_folded = 0
        #: Observations each guardrail has read; None when restored from a state without them.
        self._observed: dict[str, int] | None = {g.name: 0 for g in self.guardrails}
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

    def fold(self, events: Iterable[MonitorEvent] | EventBatch) -> int:
        """Fold new events (in arrival order) into every guardrail's test; return how many."""
        batch = events if isinstance(events, EventBatch) else EventBatch.of(list(events))
        if not len(batch):
            return 0
        for g in self.guardrails:
            observed: Sequence[Any] | NDArray[np.float64]
            seen = None
            if g.kind is GuardrailKind.TRIPWIRE:
                # A tripwire needs names: a count alone cannot say which flag fired. Only the
                # events that raised one of its flags can change it.
                seen, picks, observed = batch.tripped(g.flags)
                pick = np.asarray(picks, dtype=np.int64)
            elif (numbers := batch.numbers(g.metric, self.prices, g.flags)) is not None:
                pick = np.flatnonzero(~np.isnan(numbers))
                observed = numbers[pick]
            else:
                values = batch.values(g.metric, g.flags)
                pick = np.asarray([i for i, v in enumerate(values) if v is not None], np.int64)
                observed = [values[i] for i in pick.tolist()]
            if self._observed is not None:
                self._observed[g.name] += len(pick) if seen is None else seen
            if not len(pick):
                continue
            judge = self._judges[g.name]
            if judge is None:
                stat = g.resolved_statistic(boolean_values=isinstance(observed[0], bool))
                self._statistics[g.name] = stat
                judge = self._judges[g.name] = self._build(g, stat)
            ats = batch.at
            judge.fold(batch.candidate[pick], batch.traffic_bp[pick], observed,
                       [ats[i] for i in pick.tolist()] if judge.reads_times else ())  # fmt: skip
        self.events_folded += len(batch)
        self.requests_folded += batch.requests()
        return len(batch)

    def fold_routed(self, windows: Iterable[RoutedWindow]) -> int:
        """Fold matured routing windows into ``outcomes_recorded``; return how many."""
        if self.missing is None:
            return 0
        return self.missing.fold(windows)

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
            seen = None if self._observed is None else self._observed.get(g.name)
            if judge is None or seen == 0:
                # Nothing to judge: say so by name, with how many requests carried none.
                results.append(
                    Verdict(
                        guardrail=g.name,
                        metric=g.metric,
                        status=VerdictStatus.INSUFFICIENT_DATA,
                        action=g.action,
                        reason=unobserved(g, self.requests_folded),
                        evidence={
                            "kind": g.kind.value,
                            "alpha": self.alpha_per_guardrail,
                            "unreported": True,
                            "requests": self.requests_folded,
                        },
                    )
                )
                continue
            results.append(judge.verdict(g))
        if self.missing is not None:
            results.append(self.missing.verdict())
        return results

    def to_dict(self) -> dict[str, Any]:
        """Return the whole state as a JSON-ready dict (plan inputs plus every test's state)."""
        return {
            "format": MONITOR_STATE_FORMAT,
            "alpha": self.alpha,
            "guardrails": [
                g.model_dump(mode="json", by_alias=True, exclude_none=True) for g in self.guardrails
            ],
            "stages": self.stages,
            "baseline": self.baseline.to_dict(),
            "prices": {m: p.model_dump(mode="json") for m, p in sorted(self.prices.items())},
            "events_folded": self.events_folded,
            "requests_folded": self.requests_folded,
            "observed": self._observed,
            "statistics": {k: (v.value if v else None) for k, v in self._statistics.items()},
            "judges": {k: (j.state() if j else None) for k, j in self._judges.items()},
            "outcomes_recorded": self.missing.to_dict() if self.missing else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutMonitor:
        """Rebuild a monitor from :meth:`to_dict` output; it continues the same tests."""
        found = data.get("format")
        if found != MONITOR_STATE_FORMAT:
            raise PlanError(
                f"monitor state format {found!r} cannot be continued by this version (it "
                f"reads format {MONITOR_STATE_FORMAT}); abort the rollout and start it again, "
                "or finish it with the version that started it"
            )
        monitor = cls(
            [Guardrail.from_mapping(g) for g in data["guardrails"]],
            alpha=float(data["alpha"]),
            baseline=Baseline.from_dict(data["baseline"]),
            prices={m: ModelPrice.model_validate(p) for m, p in data["prices"].items()},
            stages=data["stages"],
            outcomes_recorded=data.get("outcomes_recorded") is not None,
        )
        if monitor.missing is not None:
            monitor.missing.load(data["outcomes_recorded"])
        monitor.events_folded = int(data["events_folded"])
        # States written before these counts existed: requests ~ events, observations unknown.
        monitor.requests_folded = int(data.get("requests_folded", monitor.events_folded))
        observed = data.get("observed")
        monitor._observed = None if observed is None else {k: int(v) for k, v in observed.items()}
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
