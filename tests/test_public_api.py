"""The public API is exactly what ``policy_canary.__all__`` names, and every name is documented."""

from __future__ import annotations

import policy_canary

EXPECTED = {
    # SDK
    "Canary", "Gate", "Decision", "GateStatus", "IngestStats", "PruneResult", "Arm",
    # registry and store
    "Registry", "Version", "VersionDiff", "ReleaseEntry", "ReleaseKind", "Store",
    # rollouts, plans, controller, monitors' verdicts
    "Rollouts", "RolloutStatus", "RolloutState", "RolloutPlan", "Stage", "Guardrail",
    "Controller", "TickReport", "decide", "Verdict", "VerdictStatus", "GuardrailAction",
    # alerts and incidents
    "Alert", "AlertKind", "AlertSink", "Dispatcher", "LogSink", "MemorySink", "WebhookSink",
    "SlackWebhookSink", "load_sinks", "Incident", "Incidents", "ReplayResult", "replay",
    "replay_file",
    # clocks
    "Clock", "SystemClock", "ManualClock",
    # errors
    "CanaryError", "ErrorCode", "InputError", "InvalidSpecError", "InvalidNameError",
    "InvalidMetricError", "PlanError", "NotFoundError", "AmbiguousReferenceError",
    "ConflictError", "StoreError", "StoreUnavailableError",
    "__version__",
}  # fmt: skip


def test_public_names_are_exactly_the_curated_list() -> None:
    assert set(policy_canary.__all__) == EXPECTED
    assert len(policy_canary.__all__) == len(EXPECTED)


def test_every_public_name_resolves_and_has_a_docstring() -> None:
    for name in policy_canary.__all__:
        obj = getattr(policy_canary, name)
        if name == "__version__":
            assert isinstance(obj, str)
            continue
        assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_every_error_derives_from_the_one_root() -> None:
    for name in policy_canary.__all__:
        obj = getattr(policy_canary, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, policy_canary.CanaryError), name
