"""policy-canary: ship LLM agent policy changes like production releases.

The public API is what this module exports; everything else is internal. In an agent::

    from policy_canary import Canary

    canary = Canary.open()                     # $POLICY_CANARY_DB or ./policy-canary.db
    gate = canary.gate("support-agent")
    with gate.route(user_id) as decision:      # sticky per user; measures latency
        reply = run_agent(decision.spec)
        decision.record(quality=None, cost_usd=0.004, safety_flags=())

Names load on first use (PEP 562): ``from policy_canary import Canary`` imports the serving
path only, so an agent's cold start pays neither for the controller nor for the statistics
(numpy, scipy); the store's SQLAlchemy loads when a store is opened.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from policy_canary.clock import Clock, ManualClock, SystemClock
from policy_canary.errors import (
    AmbiguousReferenceError,
    CanaryError,
    ConflictError,
    ErrorCode,
    InputError,
    InvalidMetricError,
    InvalidNameError,
    InvalidSpecError,
    NotFoundError,
    PlanError,
    StoreError,
    StoreUnavailableError,
)

if TYPE_CHECKING:
    from policy_canary.alerts import (
        Alert,
        AlertKind,
        AlertSink,
        Dispatcher,
        LogSink,
        MemorySink,
        SlackWebhookSink,
        WebhookSink,
        load_sinks,
    )
    from policy_canary.controller import (
        Controller,
        Incident,
        Incidents,
        ReplayResult,
        Rollouts,
        RolloutState,
        RolloutStatus,
        TickReport,
        decide,
        replay,
        replay_file,
    )
    from policy_canary.guardrails import Guardrail, GuardrailAction
    from policy_canary.monitoring import Verdict, VerdictStatus
    from policy_canary.plan import RolloutPlan, Stage
    from policy_canary.registry import Registry, ReleaseEntry, ReleaseKind, Version, VersionDiff
    from policy_canary.serving import (
        Arm,
        Canary,
        Decision,
        Gate,
        GateStatus,
        IngestStats,
        PruneResult,
    )
    from policy_canary.store import Store

#: Where each lazily loaded public name lives (its package).
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        (
            "Alert",
            "AlertKind",
            "AlertSink",
            "Dispatcher",
            "LogSink",
            "MemorySink",
            "SlackWebhookSink",
            "WebhookSink",
            "load_sinks",
        ),
        "policy_canary.alerts",
    ),
    **dict.fromkeys(
        (
            "Controller",
            "Incident",
            "Incidents",
            "ReplayResult",
            "RolloutState",
            "RolloutStatus",
            "Rollouts",
            "TickReport",
            "decide",
            "replay",
            "replay_file",
        ),
        "policy_canary.controller",
    ),
    **dict.fromkeys(["Guardrail", "GuardrailAction"], "policy_canary.guardrails"),
    **dict.fromkeys(["Verdict", "VerdictStatus"], "policy_canary.monitoring"),
    **dict.fromkeys(["RolloutPlan", "Stage"], "policy_canary.plan"),
    **dict.fromkeys(
        ["Registry", "ReleaseEntry", "ReleaseKind", "Version", "VersionDiff"],
        "policy_canary.registry",
    ),
    **dict.fromkeys(
        ["Arm", "Canary", "Decision", "Gate", "GateStatus", "IngestStats", "PruneResult"],
        "policy_canary.serving",
    ),
    "Store": "policy_canary.store",
}


def __getattr__(name: str) -> Any:
    """Load a public name's package on first use, then keep the name here."""
    package = _LAZY.get(name)
    if package is None:
        raise AttributeError(f"module 'policy_canary' has no attribute {name!r}")
    value = getattr(importlib.import_module(package), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "Alert",
    "AlertKind",
    "AlertSink",
    "AmbiguousReferenceError",
    "Arm",
    "Canary",
    "CanaryError",
    "Clock",
    "ConflictError",
    "Controller",
    "Decision",
    "Dispatcher",
    "ErrorCode",
    "Gate",
    "GateStatus",
    "Guardrail",
    "GuardrailAction",
    "Incident",
    "Incidents",
    "IngestStats",
    "InputError",
    "InvalidMetricError",
    "InvalidNameError",
    "InvalidSpecError",
    "LogSink",
    "ManualClock",
    "MemorySink",
    "NotFoundError",
    "PlanError",
    "PruneResult",
    "Registry",
    "ReleaseEntry",
    "ReleaseKind",
    "ReplayResult",
    "RolloutPlan",
    "RolloutState",
    "RolloutStatus",
    "Rollouts",
    "SlackWebhookSink",
    "Stage",
    "Store",
    "StoreError",
    "StoreUnavailableError",
    "SystemClock",
    "TickReport",
    "Verdict",
    "VerdictStatus",
    "Version",
    "VersionDiff",
    "WebhookSink",
    "__version__",
    "decide",
    "load_sinks",
    "replay",
    "replay_file",
]
