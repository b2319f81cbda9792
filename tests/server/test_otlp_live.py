"""An agent instrumented only with OpenTelemetry: the real SDK's OTLP/HTTP exporter, a live server.

The agent routes with its own canary (``trace_spans=True`` puts the assignment on its span),
never calls ``record()``, and exports protobuf spans to ``policy-canary serve``; the server
turns them into events, and a candidate whose spans carry a critical guardrail result is
rolled back by the controller.
"""

from __future__ import annotations

import time
from pathlib import Path

from _live import start, stop
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from sqlalchemy import func, select

from policy_canary.controller import Controller, RolloutState
from policy_canary.controller._rollouts import Rollouts
from policy_canary.plan import RolloutPlan
from policy_canary.registry import Registry
from policy_canary.serving._canary import Canary
from policy_canary.store import Store
from policy_canary.store.schema import events

POLICY = "support-agent"
PLAN = """\
guardrails:
  - {name: critical, metric: safety_flags, tripwire: true, flags: [critical]}
stages:
  - {name: canary, traffic: 50, min_duration: 1h, min_samples: 1000}
"""


def _events(store: Store, most: int, seconds: float = 10.0) -> int:
    deadline = time.monotonic() + seconds
    while True:  # bounded polling: the server's flusher writes every 0.5 s
        with store.read() as conn:
            count = int(conn.execute(select(func.count()).select_from(events)).scalar_one())
        if count >= most or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


def test_an_otel_only_agent_has_its_regressing_candidate_rolled_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/otel.db"
    store = Store.open(url)
    registry = Registry(store)
    registry.register(POLICY, {"prompt": "v1"}, message="stable", author="t")
    registry.register(POLICY, {"prompt": "v2"}, message="candidate", author="t")
    rollout = Rollouts(store).start(
        POLICY, candidate="v2", plan=RolloutPlan.loads(PLAN, source="plan.yaml"), reason="t"
    )
    proc, base = start(url, "--no-auth")
    agent = Canary.open(url, trace_spans=True, background=False)
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(f"{base}/v1/traces")))
    tracer = tracing.get_tracer("support-agent")
    try:
        served = {"v1": 0, "v2": 0}
        for i in range(40):
            with tracer.start_as_current_span("invoke_agent support-agent") as span:
                span.set_attribute("gen_ai.operation.name", "invoke_agent")
                decision = agent.gate(POLICY).route(f"user-{i}")
                served[decision.version.label] += 1
                with tracer.start_as_current_span("chat gpt-large") as chat:
                    chat.set_attribute("gen_ai.request.model", "gpt-large")
                    chat.set_attribute("gen_ai.usage.input_tokens", 100)
                    chat.set_attribute("gen_ai.usage.output_tokens", 20)
                    if decision.version.label == "v2":  # the candidate says something it must not
                        chat.add_event("gen_ai.guardrail.result",
                                       {"gen_ai.guardrail.name": "critical"})  # fmt: skip
        assert served["v1"] > 0
        assert served["v2"] > 0
        assert _events(store, 40) == 40  # every request, from spans alone
        with store.read() as conn:
            flagged = conn.execute(
                select(func.count()).select_from(events).where(events.c.flag_count > 0)
            ).scalar_one()
            arms = dict(
                conn.execute(select(events.c.arm, func.count()).group_by(events.c.arm)).all()
            )
        assert flagged == served["v2"]
        assert arms == {"stable": served["v1"], "candidate": served["v2"]}
        Controller(store, holder="otel-test").tick()
        status = Rollouts(store).get(rollout.id)
        assert status.rollout.state is RolloutState.ROLLED_BACK
    finally:
        tracing.shutdown()
        agent.close()
        stop(proc)
        store.close()
