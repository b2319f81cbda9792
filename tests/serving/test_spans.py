"""Canary(trace_spans=True): the assignment as a feature_flag.evaluation event on the span."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from _serving import POLICY, seed_policy, start_rollout
from policy_canary.clock import ManualClock
from policy_canary.registry import Registry
from policy_canary.serving._canary import Canary
from policy_canary.store import Store


@pytest.fixture
def spans() -> Iterator[tuple[trace.Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("agent"), exporter
    provider.shutdown()


def _canary(store: Store, clock: ManualClock, **kw: Any) -> Canary:
    return Canary(store, clock=clock, background=False, **kw)


def test_route_adds_the_evaluation_to_the_recording_span(
    store: Store, clock: ManualClock, spans: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = spans
    v1, v2 = seed_policy(store, clock)
    rollout = start_rollout(store, clock, baseline=v1, candidate=v2, traffic_bp=5000)
    canary = _canary(store, clock, trace_spans=True)
    gate = canary.gate(POLICY)
    with tracer.start_as_current_span("invoke_agent support"):
        decision = gate.route("user-42")
    canary.close()
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == "feature_flag.evaluation"
    assert dict(event.attributes or {}) == {
        "feature_flag.key": POLICY,
        "feature_flag.result.variant": decision.version.label,
        "feature_flag.result.reason": "split",
        "feature_flag.provider.name": "policy-canary",
        "feature_flag.context.id": "user-42",
        "feature_flag.version": decision.version.id,
        "policy_canary.decision_id": decision.decision_id,
    }
    assert decision.rollout_id == rollout


def test_without_a_rollout_the_reason_is_static_and_a_keyless_route_has_no_context_id(
    store: Store, clock: ManualClock, spans: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = spans
    seed_policy(store, clock)
    canary = _canary(store, clock, trace_spans=True)
    with tracer.start_as_current_span("invoke_agent"):
        canary.gate(POLICY).route()
    canary.close()
    (event,) = exporter.get_finished_spans()[0].events
    attributes = dict(event.attributes or {})
    assert attributes["feature_flag.result.reason"] == "static"
    assert attributes["feature_flag.result.variant"] == "v1"
    assert "feature_flag.context.id" not in attributes


def test_off_by_default_and_quiet_without_a_recording_span(
    store: Store, clock: ManualClock, spans: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    tracer, exporter = spans
    seed_policy(store, clock)
    plain = _canary(store, clock)
    with tracer.start_as_current_span("invoke_agent"):
        plain.gate(POLICY).route("u")
    plain.close()
    assert exporter.get_finished_spans()[0].events == ()
    traced = _canary(store, clock, trace_spans=True)
    assert traced.gate(POLICY).route("u").version.label == "v1"  # no span: nothing, no error
    traced.close()


class _BrokenSpan(trace.NonRecordingSpan):
    def is_recording(self) -> bool:
        return True

    def add_event(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("exporter bug")


def test_tracing_trouble_never_reaches_the_request(store: Store, clock: ManualClock) -> None:
    seed_policy(store, clock)
    canary = _canary(store, clock, trace_spans=True)
    with trace.use_span(_BrokenSpan(trace.INVALID_SPAN_CONTEXT)):
        assert canary.gate(POLICY).route("u").version.label == "v1"
    canary.close()


def _loaded(code: str) -> list[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    loaded: list[str] = json.loads(out.splitlines()[-1])
    return loaded


def test_opentelemetry_is_imported_only_when_the_option_is_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"
    store = Store.open(url)
    Registry(store).register(POLICY, {"prompt": "hi"}, author="t", message="m")
    store.close()
    run = f"canary.gate({POLICY!r}).route('u1')\ncanary.close()"
    off = _loaded(f"from policy_canary import Canary\ncanary = Canary.open({url!r}, "
                  f"background=False)\n{run}")  # fmt: skip
    on = _loaded(f"from policy_canary import Canary\ncanary = Canary.open({url!r}, "
                 f"background=False, trace_spans=True)\n{run}")  # fmt: skip
    assert not [m for m in off if m.startswith("opentelemetry")]
    assert "policy_canary.serving._spans" not in off
    assert "opentelemetry.trace" in on
