"""A simulated support agent whose behaviour follows its policy spec.

The spec's ``model`` (and ``routing``), ``tools`` and ``prompt`` decide the distributions a
request draws from: lognormal latency, failure and safety-flag rates, token counts priced by a
per-model table, and a Beta-distributed quality score that arrives late, as an LLM judge's
would. Everything is drawn from a seeded :class:`numpy.random.Generator`, so a scenario is
reproducible run for run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How one model behaves and what it costs."""

    latency_median_ms: float
    latency_sigma: float
    quality_mean: float
    failure_rate: float
    input_per_1k: float
    output_per_1k: float


@dataclass(frozen=True, slots=True)
class ToolProfile:
    """What allowing one tool adds to a request that uses it."""

    use_rate: float
    latency_ms: float
    failure_rate: float
    quality_delta: float
    flag: str | None = None
    flag_rate: float = 0.0


#: Price and behaviour per model; also the price table of the demo's rollout plan.
MODELS: dict[str, ModelProfile] = {
    "gpt-large": ModelProfile(2200.0, 0.45, 0.86, 0.010, 0.0025, 0.010),
    "gpt-small": ModelProfile(800.0, 0.40, 0.80, 0.012, 0.00015, 0.0006),
}

TOOLS: dict[str, ToolProfile] = {
    "search_kb": ToolProfile(0.7, 350.0, 0.001, 0.02),
    "create_ticket": ToolProfile(0.25, 180.0, 0.002, 0.0),
    # Acting on money and the open web is where tool policies go wrong.
    "issue_refund": ToolProfile(0.3, 250.0, 0.08, -0.01, "unauthorized_refund", 0.012),
    "browse_web": ToolProfile(0.4, 900.0, 0.03, -0.005, "pii_leak", 0.006),
}

#: Share of requests that are "simple questions" (eligible for a cheaper routed model).
SIMPLE_SHARE = 0.4


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened on one simulated request."""

    latency_ms: float
    error: bool
    safety_flags: tuple[str, ...]
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    quality: float


class SimulatedAgent:
    """Draws request outcomes from the distributions a policy spec implies."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.model = str(spec.get("model", "gpt-large"))
        if self.model not in MODELS:
            raise ValueError(f"the simulator knows models {sorted(MODELS)}, not {self.model!r}")
        routing = spec.get("routing") or {}
        self.simple_model = str(routing.get("simple_questions", self.model))
        tools = spec.get("tools") or {}
        self.tools = [TOOLS[name] for name in tools.get("allowed", []) if name in TOOLS]
        self.max_calls = int(tools.get("max_calls", 4))
        prompt = str(spec.get("prompt", ""))
        self.input_tokens = 600 + len(prompt) // 4
        # A prompt that asks for concision shortens answers; that is where the savings are.
        self.output_tokens = 180 if "concise" in prompt.lower() else 320

    def request(self, rng: np.random.Generator) -> Outcome:
        """Simulate one request."""
        model_name = self.simple_model if rng.random() < SIMPLE_SHARE else self.model
        model = MODELS[model_name]
        latency = model.latency_median_ms * math.exp(model.latency_sigma * rng.standard_normal())
        failure = model.failure_rate
        quality_mean = model.quality_mean
        flags: list[str] = []
        calls = 0
        for tool in self.tools:
            if calls >= self.max_calls or rng.random() >= tool.use_rate:
                continue
            calls += 1
            latency += tool.latency_ms * rng.exponential()
            failure += tool.failure_rate
            quality_mean += tool.quality_delta
            if tool.flag and rng.random() < tool.flag_rate:
                flags.append(tool.flag)
        error = bool(rng.random() < failure)
        input_tokens = int(self.input_tokens + 120 * calls + rng.integers(0, 200))
        output_tokens = int(self.output_tokens * rng.lognormal(0.0, 0.3))
        cost = input_tokens / 1000 * model.input_per_1k + output_tokens / 1000 * model.output_per_1k
        # Beta with concentration 40 around the mean: judges rarely score 0 or 1.
        mean = min(max(quality_mean - (0.3 if error else 0.0), 0.02), 0.98)
        quality = float(rng.beta(mean * 40, (1 - mean) * 40))
        return Outcome(
            latency_ms=round(latency, 3),
            error=error,
            safety_flags=tuple(flags),
            model=model_name,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=round(cost, 8),
            quality=round(quality, 4),
        )


def daily_rate(base_rps: float, seconds_into_day: float, swing: float = 0.5) -> float:
    """Requests per second with a ±``swing`` daily cycle peaking mid-afternoon."""
    phase = 2 * math.pi * (seconds_into_day / 86_400 - 0.375)
    return base_rps * (1 + swing * math.sin(phase))
