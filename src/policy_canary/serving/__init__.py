"""The in-agent serving path: the canary, its gates, the splitter, and events to the store.

Nothing here imports the controller or the statistics (numpy, scipy); the store's SQLAlchemy
loads when a store is opened. ``import-linter`` holds that line (``[tool.importlinter]`` in
``pyproject.toml``) and ``tests/serving/test_imports.py`` checks it at run time.
"""

from __future__ import annotations

from policy_canary.serving._canary import Canary, IngestStats, PruneResult
from policy_canary.serving._gate import Decision, Gate, GateStatus, flag_metadata, flag_reason
from policy_canary.serving._splitter import Arm

__all__ = [
    "Arm",
    "Canary",
    "Decision",
    "Gate",
    "GateStatus",
    "IngestStats",
    "PruneResult",
    "flag_metadata",
    "flag_reason",
]
