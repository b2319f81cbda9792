"""Every field and form ``record()`` and ``feedback()`` accept reaches the guardrail on it.

Issue 12, part 1: a bare count of safety flags was stored but never judged, so a six-fold rise
in flagged requests was promoted. Here each accepted form is driven through the public API --
``route()``, ``record()`` / ``feedback()``, the flush, the controller's tick, the monitors --
with the candidate regressed on that field alone, and the guardrail on that field must breach
and roll the candidate back. Fields no guardrail reads are listed in docs/api.md as stored-only
(the ``model`` and token counts are read only through a plan's ``prices``, tested here).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_canary import Canary
from policy_canary.clock import ManualClock
from policy_canary.controller import Rollouts, RolloutState
from policy_canary.plan import RolloutPlan
from policy_canary.registry import Registry
from policy_canary.serving import Decision
from policy_canary.testing import temporary_store

POLICY = "support-agent"
PLAN = """\
alpha: 0.01
prices:
  judge-model: {input_usd_per_1m: 1000, output_usd_per_1m: 1000}
guardrails:
  - {name: error_rate, metric: error, max_increase: 50%}
  - {name: flag_rate, metric: safety_flags, max_increase: 25%}
  - {name: critical, metric: safety_flags, tripwire: true, flags: [critical]}
  - {name: latency, metric: latency_ms, statistic: mean, max_increase: 25%}
  - {name: cost, metric: cost_usd, max_increase: 25%}
  - {name: quality, metric: quality, max_decrease: 5%}
  - {name: resolved, metric: metrics.resolved, max_decrease: 10%}
  - {name: steps, metric: metrics.steps, statistic: mean, max_increase: 25%}
stages:
  - {name: half, traffic: 50, min_duration: 1h, max_duration: 6h, min_samples: 50}
"""

#: (good value, bad value) -> the record() / feedback() keyword arguments of one request.
Shape = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Form:
    """One accepted way of reporting a field, the guardrail that reads it, and its values."""

    name: str
    guardrail: str
    good: Any
    bad: Any
    shape: Shape
    feedback: bool = False  # sent later through canary.feedback(), not record()


FORMS = [
    Form("error", "error_rate", False, True, lambda v: {"error": v}),
    Form("flag names", "flag_rate", [], ["toxic"], lambda v: {"safety_flags": v}),
    Form("flag set", "flag_rate", set(), {"toxic", "pii"}, lambda v: {"safety_flags": v}),
    Form("flag count", "flag_rate", 0, 2, lambda v: {"safety_flags": v}),
    Form("critical flag", "critical", [], ["critical"], lambda v: {"safety_flags": v}),
    Form("latency", "latency", 200.0, 2000.0, lambda v: {"latency_ms": v}),
    Form("cost", "cost", 0.01, 0.05, lambda v: {"cost_usd": v}),
    Form(
        "tokens priced by model",
        "cost",
        10,
        50,
        lambda v: {"input_tokens": v, "output_tokens": v, "model": "judge-model"},
    ),
    Form("quality", "quality", 0.9, 0.5, lambda v: {"quality": v}),
    Form("quality feedback", "quality", 0.9, 0.5, lambda v: {"quality": v}, feedback=True),
    Form("bool metric", "resolved", True, False, lambda v: {"metrics": {"resolved": v}}),
    Form("number metric", "steps", 5, 20, lambda v: {"metrics": {"steps": v}}),
    Form(
        "bool metric feedback",
        "resolved",
        True,
        False,
        lambda v: {"metrics": {"resolved": v}},
        feedback=True,
    ),
    Form(
        "number metric feedback",
        "steps",
        5,
        20,
        lambda v: {"metrics": {"steps": v}},
        feedback=True,
    ),
]


def _noisy(value: Any, rng: random.Random, as_numpy: bool) -> Any:
    """``value`` with a little noise on numbers, optionally as a numpy scalar."""
    if isinstance(value, bool):
        return np.bool_(value) if as_numpy else value
    if isinstance(value, float):
        noisy = value * rng.uniform(0.9, 1.1)
        noisy = min(noisy, 1.0) if value <= 1.0 else noisy  # quality stays a score
        return np.float64(noisy) if as_numpy else noisy
    if isinstance(value, int) and value:  # a zero count stays zero
        noisy = value + rng.randint(0, 2)
        return np.int64(noisy) if as_numpy else noisy
    return value


def _send(canary: Canary, decision: Decision, form: Form, value: Any) -> None:
    if form.feedback:
        decision.record()
        canary.feedback(decision.decision_id, **form.shape(value))
    else:
        decision.record(**form.shape(value))


@pytest.mark.parametrize("form", FORMS, ids=[f.name for f in FORMS])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**16), as_numpy=st.booleans())
def test_a_regression_on_any_accepted_form_breaches_its_guardrail(
    form: Form, seed: int, as_numpy: bool
) -> None:
    rng = random.Random(seed)
    clock = ManualClock()
    with temporary_store() as store:
        # Given a policy under a plan with one guardrail per field, at 50% traffic
        registry = Registry(store, clock=clock)
        registry.register(POLICY, {"prompt": "v1"}, message="first", author="test")
        registry.register(POLICY, {"prompt": "v2"}, message="second", author="test")
        rollouts = Rollouts(store, clock=clock)
        row = rollouts.start(POLICY, candidate="v2", plan=RolloutPlan.loads(PLAN), reason="test")
        with Canary(store, clock=clock, background=False, rng=random.Random(seed)) as canary:
            gate = canary.gate(POLICY)
            # When the candidate regresses on this one field, reported in this one form
            for i in range(2000):
                decision = gate.route(f"user-{seed}-{i}")
                value = form.bad if decision.arm.value == "candidate" else form.good
                _send(canary, decision, form, _noisy(value, rng, as_numpy))
            canary.tick()
        # Then the guardrail on that field saw it: it breached and rolled the candidate back
        status = rollouts.get(row.id)
        breached = {v.guardrail for v in status.verdicts if v.status.is_breach()}
        assert form.guardrail in breached, [v.reason for v in status.verdicts]
        assert status.rollout.state is RolloutState.ROLLED_BACK
