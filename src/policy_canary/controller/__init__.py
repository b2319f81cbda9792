"""The controller: the pure :func:`decide` and the loop that applies its actions.

``decide(plan, rollout_state, verdicts, now) -> Action`` is a function (``_decide.py``);
:class:`Controller` (``_loop.py``) loads every active rollout, folds its new events into the
monitors (``_monitoring.py``; their stored state has one owner, ``_state.py``), calls
``decide()`` and applies the action in one transaction (``_apply.py``, incidents from
``_bundle.py``), under a lock that lets one controller act at a time (``_lock.py``) and a
compare-and-swap on the rollout's revision (``_rows.py``) that lets a transition apply at
most once. ``_start.py`` and ``_restore.py`` hold the two writes that :class:`Rollouts`
(``_rollouts.py``) adds: starting a rollout, and restoring the previous stable after a
promotion; ``_incidents.py`` lists, exports and replays incidents. States, actions and every
user-facing sentence live in ``_model.py``.
"""

from __future__ import annotations

from policy_canary.controller._apply import AppliedAction
from policy_canary.controller._chunk import TickOutcome
from policy_canary.controller._decide import decide
from policy_canary.controller._incidents import (
    Incident,
    Incidents,
    ReplayResult,
    ReplayStep,
    replay,
    replay_file,
)
from policy_canary.controller._lock import ControllerLock, default_holder
from policy_canary.controller._loop import Controller, TickReport
from policy_canary.controller._model import (
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
from policy_canary.controller._monitoring import (
    Ledger,
    Monitor,
    MonitorFactory,
    StatisticalMonitors,
)
from policy_canary.controller._rollouts import RollbackResult, Rollouts, RolloutStatus
from policy_canary.controller._rows import Rollout, StaleRevisionError
from policy_canary.controller._shards import MAX_PROCESSES

__all__ = [
    "ACTIVE_STATES",
    "MAX_PROCESSES",
    "MESSAGES",
    "NOTICES",
    "Action",
    "ActionKind",
    "AppliedAction",
    "Controller",
    "ControllerLock",
    "Incident",
    "Incidents",
    "Ledger",
    "Monitor",
    "MonitorFactory",
    "Reason",
    "ReplayResult",
    "ReplayStep",
    "RollbackResult",
    "Rollout",
    "RolloutSnapshot",
    "RolloutState",
    "RolloutStatus",
    "Rollouts",
    "StaleRevisionError",
    "StatisticalMonitors",
    "TickOutcome",
    "TickReport",
    "decide",
    "default_holder",
    "message",
    "notice",
    "replay",
    "replay_file",
]
