"""The controller: the pure :func:`decide` and the loop that applies its actions.

``decide(plan, rollout_state, verdicts, now) -> Action`` is a function (``_decide.py``);
:class:`Controller` (``_loop.py``) loads every active rollout, folds its new events into the
monitors (``_monitoring.py``), calls ``decide()`` and applies the action in one transaction
(``_apply.py``, incidents from ``_bundle.py``), under a lock that lets one controller act at a
time (``_lock.py``) and a compare-and-swap on the rollout's revision (``_rows.py``) that lets a
transition apply at most once. ``_start.py`` and ``_restore.py`` hold the two writes that
:class:`policy_canary.rollouts.Rollouts` adds: starting a rollout, and restoring the previous
stable after a promotion. States, actions and every user-facing sentence live in ``_model.py``.
"""

from __future__ import annotations

from ._apply import Decision
from ._decide import decide
from ._lock import ControllerLock, default_holder
from ._loop import Controller, TickOutcome, TickReport
from ._model import (
    ACTIVE_STATES,
    MESSAGES,
    NOTICES,
    Action,
    ActionKind,
    Reason,
    RolloutSnapshot,
    RolloutState,
    message,
    notice,
)
from ._monitoring import Ledger, Monitor, MonitorFactory, StatisticalMonitors
from ._rows import Rollout, StaleRevisionError

__all__ = [
    "ACTIVE_STATES",
    "MESSAGES",
    "NOTICES",
    "Action",
    "ActionKind",
    "Controller",
    "ControllerLock",
    "Decision",
    "Ledger",
    "Monitor",
    "MonitorFactory",
    "Reason",
    "Rollout",
    "RolloutSnapshot",
    "RolloutState",
    "StaleRevisionError",
    "StatisticalMonitors",
    "TickOutcome",
    "TickReport",
    "decide",
    "default_holder",
    "message",
    "notice",
]
