"""Guardrails: the rules a rollout plan declares on its metrics, validated at the boundary.

A guardrail names one metric, a statistic and exactly one way to breach::

    - metric: error              # relative to the concurrent baseline
      max_increase: 20%
      detect: 100%               # smallest regression worth catching (sizes the test)
    - metric: latency_ms
      statistic: p95
      max: 8000                  # absolute SLO: at most 5% of requests above 8000 ms
    - metric: safety_flags
      tripwire: true             # one candidate event with such a flag rolls back at once
      flags: [self_harm]
    - metric: metrics.resolved   # custom metric: booleans become a rate, numbers a mean
      max_decrease: 5%

Values accept YAML-friendly percentages (``"20%"``) or plain fractions (``0.2``). Every
mistake raises :class:`~policy_canary.errors.PlanError` with a message that says what to
write instead. Stages may override thresholds with :meth:`Guardrail.with_overrides` (see
:func:`resolve_stage_guardrails`); ``metric``, ``statistic`` and ``detect`` are fixed for the
whole rollout because the sequential test is sized from them when the rollout starts.

The metric vocabulary lives in ``_types.py``, the price table in ``_prices.py``, the
value parsing in ``_input.py`` and the direction checks in ``_direction.py``; the package
re-exports the public names of each.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from policy_canary.errors import PlanError
from policy_canary.guardrails._direction import check_direction, is_reversed, watched
from policy_canary.guardrails._input import explain_validation, parse_number
from policy_canary.guardrails._types import (
    BUILTIN_METRICS,
    DEFAULT_NEGLIGIBLE,
    MAX_MIN_SAMPLES,
    OVERRIDABLE_FIELDS,
    Direction,
    GuardrailAction,
    GuardrailKind,
    MetricInfo,
    Statistic,
)

__all__ = ["Guardrail", "check_unique_names", "resolve_stage_guardrails"]

_TOLERANCE_FIELDS = ("max_increase", "max_decrease", "max_delta", "max", "min")
_CUSTOM = re.compile(r"^metrics\.[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")


class Guardrail(BaseModel):
    """One rule on one metric; frozen, so a running rollout's plan cannot drift.

    Exactly one of ``max_increase`` / ``max_decrease`` (relative to the baseline), ``max_delta``
    (absolute difference from the baseline), ``max`` / ``min`` (absolute SLO) or ``tripwire``
    must be set. ``detect`` is the smallest regression worth catching, in the same units as the
    tolerance (relative for relative guardrails and SLOs, absolute for ``max_delta``); it tunes
    the test's power, never its false-alarm rate. Default: twice the tolerance (10% when the
    tolerance is 0) for relative guardrails, 50% beyond ``max`` and 10% below ``min`` for SLOs.
    ``negligible`` (``max_increase`` on a rate or quantile only; default 0.1% for rates, 0 for
    quantiles) is an absolute
    rate: a candidate whose own rate is shown to lie below it counts as non-inferior even when
    the ratio to stable cannot be bounded (rare events); 0 turns that route off.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str
    metric: str
    statistic: Statistic | None = None
    max_increase: float | None = None
    max_decrease: float | None = None
    max_delta: float | None = None
    max_value: float | None = Field(default=None, alias="max")
    min_value: float | None = Field(default=None, alias="min")
    direction: Direction | None = None
    # Strict: YAML's true, 5.0 or '5' is a mistake to point at, not a value to coerce.
    tripwire: StrictBool = False
    flags: tuple[str, ...] = ()
    detect: float | None = None
    min_samples: Annotated[int, Strict()] = Field(default=100, ge=1, le=MAX_MIN_SAMPLES)
    action: GuardrailAction = GuardrailAction.ROLLBACK
    bounds: tuple[Annotated[float, Strict()], Annotated[float, Strict()]] | None = None
    negligible: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_yaml_values(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise PlanError(f"a guardrail must be a mapping of fields; got {type(data).__name__}")
        values = dict(data)
        metric = values.get("metric")
        if not isinstance(metric, str) or not metric:
            raise PlanError(
                f"guardrail {values.get('name', '?')!r}: 'metric' is required; one of "
                f"{', '.join(BUILTIN_METRICS)} or metrics.NAME"
            )
        if "name" not in values:
            stat = values.get("statistic")
            values["name"] = f"{metric}_{stat}" if stat else metric
        name = str(values["name"])
        for key in (*_TOLERANCE_FIELDS, "max_value", "min_value", "detect", "negligible"):
            if key in values:
                values[key] = parse_number(values[key], field=key, guardrail=name)
        if isinstance(values.get("flags"), str):
            values["flags"] = (values["flags"],)
        return values

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise PlanError(
                f"guardrail name {value!r} must be 1-64 letters, digits, '_', '.', ':' or '-'"
            )
        return value

    @model_validator(mode="after")
    def _check_rule(self) -> Guardrail:
        where = f"guardrail {self.name!r}"
        info = self.metric_info
        if info is None and not _CUSTOM.match(self.metric):
            raise PlanError(
                f"{where}: unknown metric {self.metric!r}; use one of "
                f"{', '.join(BUILTIN_METRICS)} or metrics.NAME for a custom metric"
            )
        set_fields = [f for f in _TOLERANCE_FIELDS if self._raw(f) is not None]
        if self.tripwire:
            self._check_tripwire(where, set_fields)
            return self
        if len(set_fields) != 1:
            found = ", ".join(set_fields) or "none"
            raise PlanError(
                f"{where}: set exactly one of max_increase, max_decrease, max_delta, max, min "
                f"or tripwire (found: {found})"
            )
        if self.flags and self.metric != "safety_flags":
            raise PlanError(f"{where}: 'flags' only applies to the safety_flags metric")
        check_direction(
            where, self.metric, self.metric_info, set_fields[0], self.statistic, self.direction
        )
        if self.bounds is not None:
            if info is not None:
                raise PlanError(f"{where}: 'bounds' only applies to custom metrics")
            if not self.bounds[0] < self.bounds[1]:
                raise PlanError(f"{where}: bounds must be [low, high] with low < high")
        stat = self.statistic
        if stat is not None and stat.is_quantile() and info is not None and info.boolean:
            raise PlanError(
                f"{where}: {self.metric} is boolean, so it has no {stat.value}; use statistic: rate"
            )
        if stat is Statistic.RATE and info is not None and not info.boolean:
            raise PlanError(
                f"{where}: {self.metric} is numeric; use statistic: mean or p50/p90/p95/p99"
            )
        if info is None and self.kind is GuardrailKind.SLO and stat is None:
            raise PlanError(
                f"{where}: an SLO on a custom metric needs 'statistic: rate' (booleans) or "
                "'statistic: mean' (numbers)"
            )
        self._check_threshold(where, set_fields[0])
        self._check_negligible(where)
        return self

    @property
    def reversed_direction(self) -> bool:
        """True when the guardrail watches a built-in metric against its usual direction.

        Only possible with an explicit ``direction:`` acknowledgement; ``plan check`` warns.
        """
        field = self.tolerance_field
        return field is not None and is_reversed(
            self.metric_info, watched(field, self.statistic, self.direction)
        )

    def _check_negligible(self, where: str) -> None:
        if self.negligible is None:
            return
        info = self.metric_info
        stat = self.statistic
        numeric_mean = stat is Statistic.MEAN or (
            stat is None and info is not None and not info.boolean
        )
        if self.tolerance_field != "max_increase" or numeric_mean:
            raise PlanError(
                f"{where}: 'negligible' applies to a max_increase guardrail on a rate or a "
                "quantile (an absolute rate below which the candidate counts as non-inferior)"
            )
        if not 0.0 <= self.negligible < 1.0:
            raise PlanError(
                f"{where}: negligible {self.negligible:g} must lie in [0, 100%); 0 turns the "
                "absolute route off"
            )

    def _check_tripwire(self, where: str, set_fields: Sequence[str]) -> None:
        if self.metric != "safety_flags":
            raise PlanError(f"{where}: a tripwire watches safety_flags; got {self.metric!r}")
        if (
            set_fields
            or self.detect is not None
            or self.statistic is not None
            or self.negligible is not None
        ):
            raise PlanError(f"{where}: a tripwire takes only 'flags' (and 'action'), no thresholds")
        if not self.flags or not all(isinstance(f, str) and f for f in self.flags):
            raise PlanError(f"{where}: a tripwire needs 'flags', e.g. flags: [self_harm]")

    def _check_threshold(self, where: str, field: str) -> None:
        value = self._raw(field)
        assert value is not None  # exactly one tolerance field is set (checked by the caller)
        boolean = self.is_boolean
        info = self.metric_info
        stat = self.statistic or (info.default_statistic if info is not None else None)
        if field == "max_increase" and not 0.0 <= value <= 10.0:
            raise PlanError(f"{where}: max_increase {value:g} must lie in [0, 1000%]")
        if field == "max_decrease" and not 0.0 <= value < 1.0:
            raise PlanError(f"{where}: max_decrease {value:g} must lie in [0, 100%)")
        if field == "max_decrease" and stat is not None and stat.is_quantile():
            raise PlanError(
                f"{where}: a quantile is judged through the rate of exceeding stable's "
                "quantile; use max_increase on that rate"
            )
        if field == "max_delta":
            if value < 0.0 or (boolean and value >= 1.0):
                raise PlanError(f"{where}: max_delta {value:g} must be >= 0 (and < 1 for a rate)")
            if stat is not None and stat.is_quantile():
                raise PlanError(f"{where}: max_delta is not available for quantiles; use max")
            if value == 0.0 and self.detect is None:
                raise PlanError(f"{where}: with max_delta 0 set 'detect', the delta worth catching")
        if field in ("max", "min"):
            lower, upper = self.support
            if boolean or stat is Statistic.RATE:
                lower, upper = 0.0, 1.0
            if not lower < value < upper and not (stat is not None and stat.is_quantile()):
                raise PlanError(
                    f"{where}: {field} {value:g} must lie strictly between {lower:g} and {upper:g}"
                )
            if stat is not None and stat.is_quantile() and value < 0.0:
                raise PlanError(f"{where}: {field} {value:g} must be >= 0")
            if field == "min" and math.isinf(upper) and not boolean and stat is Statistic.MEAN:
                raise PlanError(
                    f"{where}: a 'min' on the mean of {self.metric} needs an upper bound; "
                    "use a quantile or declare bounds on a custom metric"
                )
            if self.metric_info is None and stat is Statistic.MEAN and self.bounds is None:
                raise PlanError(f"{where}: a mean SLO on a custom metric needs bounds: [low, high]")
        detect = self.effective_detect
        if self.kind is GuardrailKind.RELATIVE and detect <= self.tolerance:
            raise PlanError(
                f"{where}: detect {detect:g} must exceed the tolerance {self.tolerance:g}"
            )
        if field == "max_decrease" and detect >= 1.0:
            raise PlanError(f"{where}: detect {detect:g} must be below 100% for a decrease")
        if self.kind is GuardrailKind.SLO and not 0.0 < detect < (1.0 if field == "min" else 100.0):
            raise PlanError(f"{where}: detect {detect:g} out of range for an SLO")

    def _raw(self, field: str) -> float | None:
        mapping = {
            "max_increase": self.max_increase,
            "max_decrease": self.max_decrease,
            "max_delta": self.max_delta,
            "max": self.max_value,
            "min": self.min_value,
        }
        return mapping[field]

    # --- derived properties the monitors rely on -------------------------------------------

    @property
    def metric_info(self) -> MetricInfo | None:
        """Facts about a built-in metric, ``None`` for a custom ``metrics.NAME``."""
        return BUILTIN_METRICS.get(self.metric)

    @property
    def is_boolean(self) -> bool:
        """True when the metric is known to be boolean (custom metrics: when statistic is rate)."""
        info = self.metric_info
        return info.boolean if info is not None else self.statistic is Statistic.RATE

    @property
    def support(self) -> tuple[float, float]:
        """The range a value of the metric can take."""
        info = self.metric_info
        if info is not None:
            return info.lower, info.upper
        return self.bounds if self.bounds is not None else (-math.inf, math.inf)

    @property
    def kind(self) -> GuardrailKind:
        """Relative, SLO or tripwire."""
        if self.tripwire:
            return GuardrailKind.TRIPWIRE
        if self.max_value is not None or self.min_value is not None:
            return GuardrailKind.SLO
        return GuardrailKind.RELATIVE

    @property
    def tolerance_field(self) -> str | None:
        """The name of the field that holds the threshold (``None`` for a tripwire)."""
        return next((f for f in _TOLERANCE_FIELDS if self._raw(f) is not None), None)

    @property
    def tolerance(self) -> float:
        """The threshold value: a relative change, an absolute delta or an SLO line."""
        field = self.tolerance_field
        value = self._raw(field) if field is not None else None
        return 0.0 if value is None else value

    @property
    def worse(self) -> Direction:
        """The direction in which this guardrail's metric is a regression."""
        field = self.tolerance_field
        if field in ("max_increase", "max"):
            return Direction.UP
        if field in ("max_decrease", "min"):
            return Direction.DOWN
        if self.direction is not None:
            return self.direction
        info = self.metric_info
        return info.worse if info is not None else Direction.UP

    @property
    def effective_detect(self) -> float:
        """``detect``, or its documented default."""
        if self.detect is not None:
            return self.detect
        field = self.tolerance_field
        if field == "max":
            return 0.5
        if field == "min":
            return 0.1
        return 2.0 * self.tolerance if self.tolerance > 0.0 else 0.1

    @property
    def effective_negligible(self) -> float:
        """``negligible``, or its default: :data:`DEFAULT_NEGLIGIBLE` for ``max_increase`` on a
        rate, else 0.

        Only rate judges (boolean rates, quantile exceedances) read it; 0 means no absolute
        route to non-inferiority. A quantile's exceedance rate is never rare (5% above stable's
        p95), so its default is 0: the route would only cost the ratio route half its alpha.
        """
        if self.negligible is not None:
            return self.negligible
        if self.tolerance_field != "max_increase" or (
            self.statistic is not None and self.statistic.is_quantile()
        ):
            return 0.0
        return DEFAULT_NEGLIGIBLE

    def resolved_statistic(self, *, boolean_values: bool) -> Statistic:
        """The statistic to use, inferring rate/mean for a custom metric from its values."""
        if self.statistic is not None:
            return self.statistic
        info = self.metric_info
        if info is not None:
            return info.default_statistic
        return Statistic.RATE if boolean_values else Statistic.MEAN

    def describe(self) -> str:
        """A short human description, e.g. ``error rate +20%`` or ``latency_ms p95 <= 8000``."""
        if self.kind is GuardrailKind.TRIPWIRE:
            return f"tripwire on safety flags {', '.join(self.flags)}"
        stat = self.statistic.value if self.statistic is not None else "value"
        if self.metric_info is not None and self.statistic is None:
            stat = self.metric_info.default_statistic.value
        field = self.tolerance_field
        t = self.tolerance
        text = {
            "max_increase": f"at most +{100 * t:.4g}% relative to stable",
            "max_decrease": f"at most -{100 * t:.4g}% relative to stable",
            "max_delta": f"within {t:g} of stable ({self.worse.value})",
            "max": f"<= {t:g}",
            "min": f">= {t:g}",
        }[field or "max"]
        return f"{self.metric} {stat} {text}"

    # --- construction helpers ---------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Guardrail:
        """Validate a YAML/JSON mapping, turning pydantic's errors into a :class:`PlanError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise PlanError(explain_validation(exc, data)) from None

    def with_overrides(self, overrides: Mapping[str, Any]) -> Guardrail:
        """Return this guardrail with a stage's overrides applied (thresholds, samples, action).

        Only :data:`OVERRIDABLE_FIELDS` may change, a threshold may only replace the same kind
        of threshold (``max_increase`` by ``max_increase``), and it must stay on the safe side
        of ``detect`` so the test sized at rollout start stays valid.
        """
        unknown = sorted(set(overrides) - OVERRIDABLE_FIELDS)
        where = f"guardrail {self.name!r}"
        if unknown:
            raise PlanError(
                f"{where}: a stage cannot override {', '.join(unknown)}; it may override "
                f"{', '.join(sorted(OVERRIDABLE_FIELDS))}"
            )
        for key in overrides:
            if key in _TOLERANCE_FIELDS and key != self.tolerance_field:
                raise PlanError(
                    f"{where}: a stage may tighten {self.tolerance_field} but not switch to {key}"
                )
        if not overrides:
            return self
        data = self.model_dump(by_alias=True, exclude_none=True)
        data.update(overrides)
        # Pin detect: its default follows the tolerance, but the test was sized from the base.
        data["detect"] = self.effective_detect
        updated = Guardrail.from_mapping(data)
        if self.kind is GuardrailKind.SLO:
            line = updated.tolerance
            d = self.effective_detect
            reach = (
                self.tolerance * (1 + d) if self.worse is Direction.UP else self.tolerance * (1 - d)
            )
            if (self.worse is Direction.UP and line >= reach) or (
                self.worse is Direction.DOWN and line <= reach
            ):
                raise PlanError(
                    f"{where}: a stage threshold of {line:g} is beyond the regression the test "
                    f"was sized to detect ({reach:g}); tighten it or raise detect"
                )
        return updated

    def test_key(self) -> tuple[Any, ...]:
        """The statistical identity of the rule: overrides that share it share the test."""
        return (self.metric, self.statistic, self.tolerance_field, self.tolerance, self.worse)


def resolve_stage_guardrails(
    guardrails: Sequence[Guardrail], overrides: Mapping[str, Mapping[str, Any]] | None
) -> tuple[Guardrail, ...]:
    """Apply one stage's ``{guardrail_name: {field: value}}`` overrides to the plan's guardrails."""
    overrides = overrides or {}
    by_name = {g.name: g for g in guardrails}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise PlanError(
            f"stage overrides name unknown guardrails {', '.join(unknown)}; "
            f"the plan has {', '.join(by_name) or 'none'}"
        )
    return tuple(g.with_overrides(overrides.get(g.name, {})) for g in guardrails)


def check_unique_names(guardrails: Iterable[Guardrail]) -> None:
    """Raise :class:`PlanError` when two guardrails share a name."""
    seen: set[str] = set()
    for g in guardrails:
        if g.name in seen:
            raise PlanError(f"two guardrails are named {g.name!r}; give each a distinct name")
        seen.add(g.name)
