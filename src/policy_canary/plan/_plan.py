"""Rollout plans: ordered stages plus guardrails, loaded from YAML, validated, then frozen.

A plan file looks like this (``docs/plan.md`` is the full reference)::

    alpha: 0.01                     # false-rollback budget of the whole rollout
    guardrails:
      - {name: error_rate, metric: error, max_increase: 50%}
    stages:
      - {name: canary, traffic: 1, min_duration: 30m, max_duration: 6h, min_samples: 200}
      - name: validation
        traffic: 10
        strict: true
        min_duration: 1h
        guardrails: {error_rate: {max_increase: 40%}}

Every mistake is a :class:`~policy_canary.errors.PlanError` that names the file, line and
column. When a rollout starts, :meth:`RolloutPlan.canonical` is stored with its sha256
(:attr:`RolloutPlan.digest`); the controller only ever reads that frozen copy back through
:meth:`RolloutPlan.from_frozen`, so editing the file later changes nothing.

Passing the last stage promotes the candidate, i.e. sends it 100% of traffic by making it
stable. A stage at 100% is refused: with no stable traffic left there is no concurrent
baseline, so the relative guardrails could not judge it (see ``docs/plan.md``).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from policy_canary.canonical import canonical_json, digest_text
from policy_canary.documents import Loaded, load_document, read_text
from policy_canary.errors import PlanError
from policy_canary.guardrails import (
    MAX_MIN_SAMPLES,
    Guardrail,
    ModelPrice,
    check_unique_names,
    resolve_stage_guardrails,
)
from policy_canary.monitoring import Baseline, PreflightRow, StagePlan, preflight
from policy_canary.plan._durations import format_duration, parse_duration

__all__ = [
    "BPS",
    "DEFAULT_ALPHA",
    "PLAN_FORMAT_KEYS",
    "RolloutPlan",
    "Stage",
    "format_duration",
    "parse_duration",
]

#: Basis points in 100% of traffic.
BPS = 10_000
#: The default false-rollback budget of a rollout.
DEFAULT_ALPHA = 0.01
#: Largest plan file we read; plans are a few kilobytes.
MAX_PLAN_BYTES = 1_000_000
#: Top-level keys of a plan document.
PLAN_FORMAT_KEYS = frozenset({"alpha", "stages", "guardrails", "prices"})
_STAGE_KEYS = frozenset(
    {"name", "traffic", "min_duration", "max_duration", "min_samples", "strict", "guardrails"}
)
_STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Longest dwell a stage may ask for: beyond this a plan is almost certainly a typo.
MAX_DURATION = timedelta(days=90)

PathT = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of a rollout: a traffic share held for a dwell time until enough evidence.

    ``max_duration`` (``None``: no limit) is when a stage that cannot pass yet stops waiting
    and pauses for a human. ``min_samples`` is per arm, counted in this stage. ``strict``
    demands positive evidence: every guardrail's verdict must be ``non_inferior``.
    ``guardrails`` holds this stage's overrides, ``{guardrail_name: {field: value}}``.
    """

    name: str
    traffic_bp: int
    min_duration: timedelta = timedelta(0)
    max_duration: timedelta | None = None
    min_samples: int = 0
    strict: bool = False
    guardrails: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def traffic_percent(self) -> float:
        """The candidate's share in percent (``traffic_bp / 100``)."""
        return self.traffic_bp / 100

    def describe(self) -> str:
        """``canary 1%`` style label."""
        return f"{self.name} {self.traffic_bp / 100:g}%"

    def to_dict(self) -> dict[str, Any]:
        """The normalised, JSON-ready form that is frozen into a rollout."""
        data: dict[str, Any] = {
            "name": self.name,
            "traffic": self.traffic_bp / 100,
            "min_duration": format_duration(self.min_duration),
            "min_samples": self.min_samples,
            "strict": self.strict,
            "guardrails": {k: dict(v) for k, v in self.guardrails.items()},
        }
        if self.max_duration is not None:
            data["max_duration"] = format_duration(self.max_duration)
        return data


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """Ordered stages plus the guardrails that protect every stage; frozen at rollout start."""

    stages: tuple[Stage, ...]
    guardrails: tuple[Guardrail, ...]
    alpha: float = DEFAULT_ALPHA
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)

    # -- reading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> RolloutPlan:
        """Read and validate a plan file (YAML or JSON)."""
        path = Path(path)
        text = read_text(path, limit=MAX_PLAN_BYTES, what="plan file", error=PlanError)
        return cls.loads(text, source=str(path))

    @classmethod
    def loads(cls, text: str, *, source: str = "<plan>") -> RolloutPlan:
        """Parse and validate a plan document from text; errors name ``source:line:col``."""
        loaded = load_document(text, source=source, error=PlanError)
        return _Validator(loaded).plan()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<plan>") -> RolloutPlan:
        """Validate a plan given as a mapping (errors name paths instead of lines)."""
        return _Validator(Loaded(value=data, source=source)).plan()

    @classmethod
    def from_frozen(cls, text: str) -> RolloutPlan:
        """Rebuild the plan frozen in a rollout row (its canonical JSON)."""
        return cls.from_dict(json.loads(text), source="frozen plan")

    @classmethod
    def default(cls) -> RolloutPlan:
        """The canonical plan: canary 1% → validation 10% (strict, tighter) → soak 50% → promote.

        Guardrails watch the failure rate, safety flags (plus a tripwire on flags named
        ``critical``), p95 latency, cost per request and quality.
        """
        return cls.from_dict(DEFAULT_PLAN, source="default plan")

    # -- writing ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The normalised JSON-ready form (durations spelled out, percentages as fractions)."""
        return {
            "alpha": self.alpha,
            "guardrails": [
                g.model_dump(by_alias=True, exclude_none=True, mode="json") for g in self.guardrails
            ],
            "prices": {k: v.model_dump(mode="json") for k, v in sorted(self.prices.items())},
            "stages": [s.to_dict() for s in self.stages],
        }

    def canonical(self) -> str:
        """The canonical JSON stored in the rollout row."""
        return canonical_json(self.to_dict())

    @property
    def digest(self) -> str:
        """sha256 of :meth:`canonical`: the plan's identity (``rollouts.plan_hash``)."""
        return digest_text(self.canonical())

    # -- helpers for the controller -----------------------------------------------------------

    def stage(self, index: int) -> Stage:
        """Stage ``index`` (0-based)."""
        return self.stages[index]

    def is_last(self, index: int) -> bool:
        """True when ``index`` is the last stage (passing it promotes)."""
        return index == len(self.stages) - 1

    def stage_guardrails(self, index: int) -> tuple[Guardrail, ...]:
        """The guardrails of stage ``index`` with its overrides applied."""
        return resolve_stage_guardrails(self.guardrails, self.stages[index].guardrails)

    def preflight(
        self,
        *,
        requests_per_second: float | None = None,
        baseline_rates: Mapping[str, float] | None = None,
        baseline: Baseline | None = None,
    ) -> list[PreflightRow]:
        """Size every (stage, guardrail) pair: can the stage detect its regression in time?

        See :func:`policy_canary.monitoring.preflight`; rows carry a ``warning`` when a stage's
        dwell is too short to detect a guardrail's smallest regression at the given traffic.
        """
        stages = [
            StagePlan(s.name, s.traffic_bp, s.min_duration, s.max_duration, s.guardrails)
            for s in self.stages
        ]
        return preflight(
            self.guardrails,
            stages,
            alpha=self.alpha,
            requests_per_second=requests_per_second,
            baseline_rates=baseline_rates,
            baseline=baseline,
        )

    def warnings(self) -> list[str]:
        """Things that validate but deserve a second look: reversed metric directions."""
        return [
            f"guardrail {g.name!r} rolls back when {g.metric} goes {g.worse.value}, the "
            "opposite of its usual direction (acknowledged with 'direction:'); check that "
            "this is intended"
            for g in self.guardrails
            if g.reversed_direction
        ]

    def overrides(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{stage_name: {guardrail: {field: value}}}`` for the monitors (every stage listed)."""
        return {s.name: {g: dict(o) for g, o in s.guardrails.items()} for s in self.stages}


#: The documented default plan (docs/plan.md shows the same document as YAML).
DEFAULT_PLAN: Mapping[str, Any] = {
    "alpha": DEFAULT_ALPHA,
    "guardrails": [
        {"name": "error_rate", "metric": "error", "max_increase": "50%"},
        {"name": "safety_flag_rate", "metric": "safety_flags", "max_increase": "25%"},
        {"name": "critical_safety", "metric": "safety_flags", "tripwire": True,
         "flags": ["critical"]},
        {"name": "latency_p95", "metric": "latency_ms", "statistic": "p95",
         "max_increase": "25%"},
        {"name": "cost", "metric": "cost_usd", "max_increase": "25%"},
        {"name": "quality", "metric": "quality", "max_decrease": "5%"},
    ],
    "stages": [
        {"name": "canary", "traffic": 1, "min_duration": "30m", "max_duration": "6h",
         "min_samples": 200},
        {"name": "validation", "traffic": 10, "strict": True, "min_duration": "1h",
         "max_duration": "12h", "min_samples": 1000,
         "guardrails": {"error_rate": {"max_increase": "40%"},
                        "latency_p95": {"max_increase": "15%"},
                        "cost": {"max_increase": "15%"}}},
        {"name": "soak", "traffic": 50, "min_duration": "4h", "max_duration": "24h",
         "min_samples": 5000},
    ],
}  # fmt: skip


class _Validator:
    """Turns a loaded document into a :class:`RolloutPlan`, or a located :class:`PlanError`."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded

    def fail(self, path: PathT, message: str) -> PlanError:
        return PlanError(f"{self.loaded.where(path)}: {message}")

    def plan(self) -> RolloutPlan:
        data = self.loaded.value
        if not isinstance(data, Mapping):
            raise self.fail((), f"a plan is a mapping with keys {_keys(PLAN_FORMAT_KEYS)}")
        self.unknown_keys(data, (), PLAN_FORMAT_KEYS, "plan")
        alpha = self.alpha(data.get("alpha", DEFAULT_ALPHA))
        prices = self.prices(data.get("prices", {}))
        guardrails = self.guardrails(data.get("guardrails"))
        stages = self.stages(data.get("stages"), guardrails)
        return RolloutPlan(stages=stages, guardrails=guardrails, alpha=alpha, prices=prices)

    def unknown_keys(
        self, data: Mapping[str, Any], path: PathT, allowed: frozenset[str], what: str
    ) -> None:
        for key in data:
            if key not in allowed:
                hint = _suggest(str(key), allowed)
                raise self.fail(
                    (*path, key),
                    f"unknown key {key!r} in {what}{hint}; allowed: {_keys(allowed)}",
                )

    def alpha(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(("alpha",), f"alpha must be a number such as 0.01; got {value!r}")
        if not 0.0 < float(value) <= 0.2:
            raise self.fail(
                ("alpha",),
                f"alpha {value} is out of range; it is the false-rollback budget, "
                "a probability in (0, 0.2], usually 0.01",
            )
        return float(value)

    def prices(self, value: Any) -> dict[str, ModelPrice]:
        if not isinstance(value, Mapping):
            raise self.fail(("prices",), "prices is a mapping of model name to prices")
        result = {}
        for model, price in value.items():
            if not isinstance(price, Mapping):
                raise self.fail(
                    ("prices", model),
                    "a price is {input_usd_per_1m: N, output_usd_per_1m: N}",
                )
            try:
                result[str(model)] = ModelPrice.model_validate(price)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise self.fail(
                    ("prices", model),
                    f"invalid price for model {model!r}: "
                    f"{_first_pydantic_error(exc)}; write {{input_usd_per_1m: 2.5, "
                    "output_usd_per_1m: 10}",
                ) from None
        return result

    def guardrails(self, value: Any) -> tuple[Guardrail, ...]:
        if value is None:
            raise self.fail((), "the plan needs 'guardrails': at least one rule to roll back on")
        if not isinstance(value, Sequence) or isinstance(value, str) or not value:
            raise self.fail(("guardrails",), "guardrails must be a non-empty list of rules")
        result = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise self.fail(("guardrails", i), "a guardrail is a mapping, e.g. {metric: error}")
            try:
                result.append(Guardrail.from_mapping(item))
            except PlanError as exc:
                at: PathT = ("guardrails", i)
                if exc.field is not None and exc.field in item:
                    at = (*at, exc.field)  # point at the key to fix
                raise self.fail(at, exc.message) from None
        try:
            check_unique_names(result)
        except PlanError as exc:
            raise self.fail(("guardrails",), exc.message) from None
        return tuple(result)

    def stages(self, value: Any, guardrails: tuple[Guardrail, ...]) -> tuple[Stage, ...]:
        if value is None:
            raise self.fail((), "the plan needs 'stages': a list such as canary 1%, validation 10%")
        if not isinstance(value, Sequence) or isinstance(value, str) or not value:
            raise self.fail(("stages",), "stages must be a non-empty list")
        result: list[Stage] = []
        for i, item in enumerate(value):
            stage = self.stage(item, ("stages", i), guardrails)
            if result and stage.traffic_bp <= result[-1].traffic_bp:
                raise self.fail(
                    ("stages", i, "traffic"),
                    f"stage {stage.name!r} has traffic {stage.traffic_percent:g}%, not more "
                    f"than the previous stage {result[-1].name!r} "
                    f"({result[-1].traffic_percent:g}%); traffic must increase stage by stage",
                )
            if any(s.name == stage.name for s in result):
                raise self.fail(("stages", i, "name"), f"two stages are named {stage.name!r}")
            result.append(stage)
        return tuple(result)

    def stage(self, item: Any, path: PathT, guardrails: tuple[Guardrail, ...]) -> Stage:
        if not isinstance(item, Mapping):
            raise self.fail(path, "a stage is a mapping with name, traffic, min_duration ...")
        self.unknown_keys(item, path, _STAGE_KEYS, "a stage")
        name = item.get("name")
        if not isinstance(name, str) or not _STAGE_NAME.fullmatch(name):
            raise self.fail(
                (*path, "name"),
                f"a stage needs a name of 1-64 letters, digits, '_', '.', '-'; got {name!r}",
            )
        traffic_bp = self.traffic(item.get("traffic"), (*path, "traffic"), name)
        min_duration = self.duration(item.get("min_duration", 0), (*path, "min_duration"))
        max_duration = None
        if item.get("max_duration") is not None:
            max_duration = self.duration(item["max_duration"], (*path, "max_duration"))
            if max_duration <= min_duration:
                raise self.fail(
                    (*path, "max_duration"),
                    f"stage {name!r}: max_duration {format_duration(max_duration)} must be "
                    f"longer than min_duration {format_duration(min_duration)}",
                )
        min_samples = item.get("min_samples", 0)
        if (
            isinstance(min_samples, bool)
            or not isinstance(min_samples, int)
            or not 0 <= min_samples <= MAX_MIN_SAMPLES
        ):
            raise self.fail(
                (*path, "min_samples"),
                f"stage {name!r}: min_samples must be a whole number from 0 to "
                f"{MAX_MIN_SAMPLES:,} (per arm); got {min_samples!r}",
            )
        strict = item.get("strict", False)
        if not isinstance(strict, bool):
            raise self.fail((*path, "strict"), f"stage {name!r}: strict is true or false")
        overrides = item.get("guardrails", {}) or {}
        if not isinstance(overrides, Mapping) or not all(
            isinstance(v, Mapping) for v in overrides.values()
        ):
            raise self.fail(
                (*path, "guardrails"),
                f"stage {name!r}: guardrails overrides are {{guardrail_name: {{field: value}}}}",
            )
        try:
            resolved = resolve_stage_guardrails(guardrails, overrides)
        except PlanError as exc:
            raise self.fail((*path, "guardrails"), f"stage {name!r}: {exc.message}") from None
        # Freeze the overrides as the guardrail now reads them (percent strings → fractions).
        by_name = {g.name: g for g in resolved}
        normalised = {
            g: {k: _override_value(by_name[g], k, v) for k, v in sorted(o.items())}
            for g, o in sorted(overrides.items())
        }
        return Stage(
            name=name,
            traffic_bp=traffic_bp,
            min_duration=min_duration,
            max_duration=max_duration,
            min_samples=min_samples,
            strict=strict,
            guardrails=normalised,
        )

    def traffic(self, value: Any, path: PathT, name: str) -> int:
        if isinstance(value, str) and value.strip().endswith("%"):
            with contextlib.suppress(ValueError):  # not a number: reported just below
                value = float(value.strip()[:-1])
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(
                path, f"stage {name!r}: traffic is a percentage such as 1, 10 or 0.5; got {value!r}"
            )
        if isinstance(value, int) and not 0 < value < 100:  # may be past a double's range
            raise self.fail(path, f"stage {name!r}: traffic {value}% must be above 0 and below 100")
        try:
            percent = float(value)
        except OverflowError:  # an integer beyond any float
            percent = math.inf
        if not math.isfinite(percent):
            raise self.fail(
                path, f"stage {name!r}: traffic must be a finite percentage such as 1, 10 or 0.5"
            )
        bp = round(percent * 100)
        if abs(percent * 100 - bp) > 1e-6:
            raise self.fail(path, f"stage {name!r}: traffic {value} is finer than 0.01%; round it")
        if not 0 < bp < BPS:
            raise self.fail(
                path,
                f"stage {name!r}: traffic {value}% must be above 0 and below 100; passing the "
                "last stage promotes the candidate to 100%",
            )
        return bp

    def duration(self, value: Any, path: PathT) -> timedelta:
        try:
            result = parse_duration(value)
        except ValueError as exc:
            raise self.fail(path, str(exc)) from None
        if result > MAX_DURATION:
            raise self.fail(path, f"{value} is longer than the {MAX_DURATION.days}-day limit")
        return result


def _override_value(guardrail: Guardrail, key: str, value: Any) -> Any:
    """The override as the resolved guardrail reads it: ``"10%"`` becomes ``0.1``."""
    reader: dict[str, Callable[[Guardrail], Any]] = {
        "max_increase": lambda g: g.max_increase,
        "max_decrease": lambda g: g.max_decrease,
        "max_delta": lambda g: g.max_delta,
        "max": lambda g: g.max_value,
        "min": lambda g: g.min_value,
        "min_samples": lambda g: g.min_samples,
        "action": lambda g: g.action.value,
    }
    return reader[key](guardrail) if key in reader else value


def _first_pydantic_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        return f"{loc}: {first['msg']}" if loc else str(first["msg"])
    return str(exc)


def _keys(keys: frozenset[str]) -> str:
    return ", ".join(sorted(keys))


def _suggest(key: str, allowed: frozenset[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
