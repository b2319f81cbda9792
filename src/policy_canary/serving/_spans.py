"""The assignment on the agent's own OpenTelemetry span (``Canary(trace_spans=True)``).

Loaded only when the option is on, so an agent without it never imports OpenTelemetry. The
hook adds the semantic conventions' ``feature_flag.evaluation`` event to the current span
when that span is recording (semantic conventions v1.37.0, feature flags: release candidate).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from policy_canary.errors import InputError

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from policy_canary.serving._gate import Decision

PROVIDER_NAME = "policy-canary"
#: The span attribute that joins a span to its decision (OTLP ingest reads it back).
DECISION_ID_ATTRIBUTE = "policy_canary.decision_id"
EVALUATION_EVENT = "feature_flag.evaluation"

RouteHook = Callable[["Decision", "str | None"], None]


def reason_of(decision: Decision) -> str:
    """The semantic conventions' reason: split, default (a rollout at 0 %) or static."""
    if decision.traffic_bp > 0:
        return "split"
    return "default" if decision.rollout_id is not None else "static"


def span_hook() -> RouteHook:
    """The hook ``route()`` calls; needs ``opentelemetry-api`` (the ``otel`` extra)."""
    try:
        from opentelemetry.trace import get_current_span
    except ImportError:
        raise InputError(
            "trace_spans=True needs OpenTelemetry's API: pip install 'policy-canary[otel]'"
        ) from None

    def on_route(decision: Decision, unit_key: str | None) -> None:
        try:
            _annotate(get_current_span(), decision, unit_key)
        except Exception:  # tracing trouble never reaches the agent's request
            return

    return on_route


def _annotate(span: Span, decision: Decision, unit_key: str | None) -> None:
    if not span.is_recording():
        return
    version = decision.version
    attributes: dict[str, str] = {
        "feature_flag.key": decision.policy,
        "feature_flag.result.variant": version.label,
        "feature_flag.result.reason": reason_of(decision),
        "feature_flag.provider.name": PROVIDER_NAME,
        "feature_flag.version": version.id,
        DECISION_ID_ATTRIBUTE: decision.decision_id,
    }
    if unit_key is not None:
        attributes["feature_flag.context.id"] = unit_key
    span.add_event(EVALUATION_EVENT, attributes)
