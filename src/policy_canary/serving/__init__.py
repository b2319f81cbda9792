"""The in-agent serving path: canary, gates, the splitter, events to the store."""

from __future__ import annotations

from policy_canary.serving._canary import (
    Canary,
    IngestStats,
    PruneResult,
)
from policy_canary.serving._gate import (
    Decision,
    Gate,
    GateStatus,
)

__all__ = [
    "Canary",
    "Decision",
    "Gate",
    "GateStatus",
    "IngestStats",
    "PruneResult",
]
