"""Guardrail series: each guardrail's evidence over time, read from the decision trace.

Every tick the controller records (``Rollouts.trace``) stores each guardrail's verdict with
its evidence: the estimate, its anytime-valid confidence bounds, the tolerance it is judged
against, the e-value and the breach threshold, and the counts. A series is those numbers over
the ticks; :meth:`Series.figure` turns it into a plotly figure (plain JSON for plotly.js).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: At most this many points per chart; a longer trace keeps evenly spaced ticks and the last.
MAX_POINTS = 600


@dataclass(frozen=True, slots=True)
class Point:
    """One tick's numbers for one guardrail."""

    seq: int
    at: str
    stage: str
    status: str
    estimate: float | None
    lower: float | None
    upper: float | None
    e_value: float | None
    n_candidate: int | None
    n_stable: int | None


@dataclass(frozen=True, slots=True)
class Shape:
    """What a guardrail's evidence measures: which keys hold the estimate and its band."""

    kind: str  # ratio, difference, rate, mean
    label: str
    estimate: str
    lower: str
    upper: str
    tolerance: str


_SHAPES = (
    Shape(
        "ratio", "candidate ÷ stable rate", "ratio", "ratio_lower", "ratio_upper", "threshold_ratio"
    ),
    Shape("difference", "difference of means", "estimate", "lower", "upper", "threshold"),
    Shape("rate", "candidate rate", "rate_candidate", "rate_lower", "rate_upper", "null_rate"),
    Shape("mean", "candidate mean", "mean_candidate", "lower", "upper", "line"),
)


def shape_of(evidence: Mapping[str, Any]) -> Shape | None:
    """The shape of this evidence, or None when it draws no chart (a tripwire, no data)."""
    for shape in _SHAPES:
        if shape.estimate in evidence and shape.lower in evidence and shape.tolerance in evidence:
            return shape
    return None


@dataclass
class Series:
    """One guardrail's evidence over the trace, and its latest verdict."""

    guardrail: str
    metric: str
    shape: Shape | None = None
    tolerance: float | None = None
    threshold: float | None = None
    contrast: str | None = None
    points: list[Point] = field(default_factory=list)
    latest: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The y-axis title of the estimate chart."""
        if self.shape is None:
            return ""
        if self.contrast:
            return f"{self.contrast.replace('mu_c', 'candidate').replace('mu_s', 'stable')}"
        return self.shape.label

    @property
    def drawable(self) -> bool:
        """True when at least one tick has an estimate or an e-value to draw."""
        return self.shape is not None and any(
            p.estimate is not None or p.e_value is not None for p in self.points
        )

    def figure(self) -> dict[str, Any]:
        """A plotly figure: the estimate with its band and the tolerance over the e-value."""
        xs = [p.at for p in self.points]
        lower = [p.lower for p in self.points]
        # An unbounded upper limit (no candidate-side evidence yet) is drawn to the chart's top.
        seen = [v for p in self.points for v in (p.estimate, p.lower, p.upper) if v is not None]
        top = max([*seen, self.tolerance or 0.0, 0.0]) * 1.15 or 1.0
        upper = [
            p.upper if p.upper is not None else (top if p.lower is not None else None)
            for p in self.points
        ]
        data: list[dict[str, Any]] = [
            _line(xs, upper, "upper bound", "#9ab8d8", "y", width=0.5, legend=False),
            _line(xs, lower, "anytime-valid band", "#9ab8d8", "y", width=0.5, fill="tonexty"),
            _line(xs, [p.estimate for p in self.points], "estimate", "#1f4e8c", "y", markers=True),
        ]
        if self.tolerance is not None and xs:
            data.append(
                _line(
                    [xs[0], xs[-1]], [self.tolerance] * 2, "tolerance", "#c0392b", "y", dash="dash"
                )
            )
        data.append(
            _line(xs, [p.e_value for p in self.points], "e-value", "#6c3483", "y2", markers=True)
        )
        if self.threshold is not None and xs:
            data.append(
                _line(
                    [xs[0], xs[-1]],
                    [self.threshold] * 2,
                    "breach threshold",
                    "#c0392b",
                    "y2",
                    dash="dot",
                )
            )
        layout = {
            "margin": {"l": 56, "r": 12, "t": 8, "b": 36},
            "height": 380,
            "showlegend": True,
            "legend": {"orientation": "h", "y": -0.18},
            "xaxis": {"type": "date", "anchor": "y2"},
            "yaxis": {"title": {"text": _short(self.label)}, "domain": [0.52, 1.0]},
            "yaxis2": {
                "title": {"text": "e-value (log)"},
                "type": "log",
                "dtick": 1,
                "exponentformat": "power",
                "domain": [0.0, 0.42],
            },
            "font": {"size": 11},
            "paper_bgcolor": "rgba(0,0,0,0)",
            "plot_bgcolor": "rgba(0,0,0,0)",
        }
        return {"data": data, "layout": layout}


def _short(text: str, most: int = 40) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _line(
    xs: Sequence[str],
    ys: Sequence[float | None],
    name: str,
    color: str,
    axis: str,
    *,
    width: float = 2.0,
    markers: bool = False,
    dash: str | None = None,
    fill: str | None = None,
    legend: bool = True,
) -> dict[str, Any]:
    trace: dict[str, Any] = {
        "type": "scatter",
        "x": list(xs),
        "y": list(ys),
        "name": name,
        "yaxis": axis,
        "xaxis": "x",
        "mode": "lines+markers" if markers else "lines",
        "line": {"color": color, "width": width, **({"dash": dash} if dash else {})},
        "showlegend": legend,
        "connectgaps": False,
    }
    if markers:
        trace["marker"] = {"size": 4}
    if fill:
        trace["fill"] = fill
        trace["fillcolor"] = "rgba(154,184,216,0.35)"
    return trace


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _thin(entries: Sequence[Mapping[str, Any]], most: int) -> list[Mapping[str, Any]]:
    """At most ``most`` entries: evenly spaced, always with the last (where the verdict is)."""
    if len(entries) <= most:
        return list(entries)
    step = len(entries) / (most - 1)
    picked = [entries[int(i * step)] for i in range(most - 1)]
    return [*picked, entries[-1]]


def build_series(
    trace: Sequence[Mapping[str, Any]], stage_names: Sequence[str], *, most: int = MAX_POINTS
) -> list[Series]:
    """One series per guardrail seen in ``trace`` (ticks oldest first), in first-seen order."""
    found: dict[str, Series] = {}
    for entry in _thin(trace, most):
        index = int(entry.get("stage_index", 0))
        stage = stage_names[index] if 0 <= index < len(stage_names) else str(index)
        for verdict in entry.get("verdicts", ()):
            name = str(verdict.get("guardrail"))
            series = found.get(name)
            if series is None:
                series = found[name] = Series(name, str(verdict.get("metric", "")))
            evidence = verdict.get("evidence") or {}
            shape = shape_of(evidence)
            if shape is not None:
                series.shape = series.shape or shape
                series.tolerance = _finite(evidence.get(shape.tolerance))
                series.contrast = evidence.get("contrast") or series.contrast
            if "e_value_threshold" in evidence:
                series.threshold = _finite(evidence.get("e_value_threshold"))
            used = series.shape or shape
            series.points.append(
                Point(
                    seq=int(entry.get("seq", 0)),
                    at=str(entry.get("at", "")),
                    stage=stage,
                    status=str(verdict.get("status", "")),
                    estimate=_finite(evidence.get(used.estimate)) if used else None,
                    lower=_finite(evidence.get(used.lower)) if used else None,
                    upper=_finite(evidence.get(used.upper)) if used else None,
                    e_value=_finite(evidence.get("e_value")),
                    n_candidate=_count(evidence.get("n_candidate")),
                    n_stable=_count(evidence.get("n_stable")),
                )
            )
            series.latest = verdict
    return list(found.values())
