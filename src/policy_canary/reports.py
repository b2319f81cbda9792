"""The JSON documents that both surfaces return: ``--json`` on the CLI and the HTTP API.

Library objects render themselves (``to_dict()``); what lives here are the few documents a
command assembles from several of them, kept in one place so the CLI and the server agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policy_canary.monitoring import MetricCoverage, PreflightRow
from policy_canary.plan import RolloutPlan
from policy_canary.registry import RegisterResult, ReleaseEntry, Version


def push_report(result: RegisterResult) -> dict[str, Any]:
    """``policy push``: the version, and whether it is new and became stable."""
    return {
        "created": result.created,
        "became_stable": result.became_stable,
        "version": result.version.to_dict(),
    }


def import_report(result: RegisterResult) -> dict[str, Any]:
    """``policy import``: the version, and whether it is new here."""
    return {"created": result.created, "version": result.version.to_dict()}


def versions_report(versions: Sequence[Version], stable: Version | None) -> list[dict[str, Any]]:
    """``policy versions``: every version, with which one is stable."""
    return [{**v.to_dict(), "stable": bool(stable and v.id == stable.id)} for v in versions]


def set_stable_report(entry: ReleaseEntry | None) -> dict[str, Any]:
    """``policy set-stable``: whether the pointer moved, and the history entry."""
    return {"changed": entry is not None, "entry": entry.to_dict() if entry else None}


def plan_check_report(
    plan: RolloutPlan,
    rows: Sequence[PreflightRow],
    coverage: Sequence[MetricCoverage] | None = None,
) -> dict[str, Any]:
    """``plan check``: the normalised plan, its hash, the preflight sizing, the metrics coverage.

    ``metrics_coverage`` is present when the plan was checked against a policy: per guardrail,
    whether the policy's stable traffic carries its metric.
    """
    data: dict[str, Any] = {
        "ok": True,
        "plan_hash": plan.digest,
        "plan": plan.to_dict(),
        "warnings": [*plan.warnings(), *(r.warning for r in rows if r.warning)],
        "preflight": [
            {
                "stage": r.stage,
                "guardrail": r.guardrail,
                "expected_candidate_requests": r.expected_candidate_requests,
                "wald_floor": r.wald_floor,
                "expected_seconds": r.expected_duration.total_seconds()
                if r.expected_duration
                else None,
                "warning": r.warning,
                "note": r.note,
            }
            for r in rows
        ],
    }
    if coverage is not None:
        data["metrics_coverage"] = [c.to_dict() for c in coverage]
    return data
