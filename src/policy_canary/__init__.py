"""policy-canary: ship LLM agent policy changes like production releases.

The public API is what this module exports; everything else is internal. In an agent::

    from policy_canary import Canary

    canary = Canary.open()                     # $POLICY_CANARY_DB or ./policy-canary.db
    gate = canary.gate("support-agent")
    with gate.route(user_id) as decision:      # sticky per user; measures latency
        reply = run_agent(decision.spec)
        decision.record(quality=None, cost_usd=0.004, safety_flags=())
"""

from __future__ import annotations

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
from policy_canary.clock import Clock, ManualClock, SystemClock
from policy_canary.controller import Controller, RolloutState, TickReport, decide
from policy_canary.controller._incidents import (
    Incident,
    Incidents,
    ReplayResult,
    replay,
    replay_file,
)
from policy_canary.controller._rollouts import Rollouts, RolloutStatus
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
from policy_canary.guardrails import Guardrail
from policy_canary.monitoring._verdict import GuardrailAction, Verdict, VerdictStatus
from policy_canary.plan import RolloutPlan, Stage
from policy_canary.registry import Registry, ReleaseEntry, ReleaseKind, Version, VersionDiff
from policy_canary.serving._canary import Canary, IngestStats, PruneResult
from policy_canary.serving._gate import Decision, Gate, GateStatus
from policy_canary.serving._splitter import Arm
from policy_canary.store import Store

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
