"""A rollout's stored state: the monitor's dict, the controller's ledger and the event cursors.

This module is the one owner of the ``monitor_states`` row: it alone builds the text stored
in ``monitor_states.state`` (``{"monitor": ..., "ledger": ...}``) and parses it back, so the
start, the controller's ticks, manual transitions and ``rollout status`` all read and write
the same format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select

from policy_canary.canonical import json_text
from policy_canary.controller._monitoring import Ledger, Monitor
from policy_canary.controller._rows import Cursors
from policy_canary.errors import StoreError
from policy_canary.store.schema import monitor_states


@dataclass(frozen=True, slots=True)
class StoredState:
    """What ``monitor_states`` holds for one rollout.

    ``monitor`` is the monitor's JSON-ready dict (:meth:`Monitor.to_dict` output; a
    :class:`~policy_canary.controller.MonitorFactory` turns it back into a monitor);
    ``ledger`` is mutable and is saved with whatever the caller added to it.
    """

    monitor: Mapping[str, Any]
    ledger: Ledger = field(default_factory=Ledger)
    cursors: Cursors = field(default_factory=Cursors)

    @classmethod
    def initial(cls, monitor: Monitor) -> StoredState:
        """The state a rollout starts with: a fresh monitor, an empty ledger, no events read."""
        return cls(monitor.to_dict())

    def dump(self) -> str:
        """The text stored in ``monitor_states.state``."""
        return json_text({"monitor": self.monitor, "ledger": self.ledger.to_dict()})

    @classmethod
    def parse(cls, text: str, cursors: Cursors) -> StoredState:
        """Inverse of :meth:`dump` (the cursors are columns of their own)."""
        data = json.loads(text)
        return cls(data["monitor"], Ledger.from_dict(data["ledger"]), cursors)


def read_state(conn: Connection, rollout_id: str) -> StoredState | None:
    """The rollout's stored state, or None when it has none."""
    row = conn.execute(
        select(monitor_states).where(monitor_states.c.rollout_id == rollout_id)
    ).first()
    if row is None:
        return None
    return StoredState.parse(row.state, Cursors(int(row.events_through), int(row.feedback_through)))


def read_states(conn: Connection, rollout_ids: Sequence[str]) -> dict[str, StoredState | Exception]:
    """Each rollout's stored state in one query, by id, or the error reading it raised.

    The errors are :func:`require_state`'s (a missing row) and :meth:`StoredState.parse`'s
    (a damaged text): one broken state fails its own rollout's tick, not its neighbours'.
    """
    found: dict[str, StoredState | Exception] = {
        rid: StoreError(_missing(rid)) for rid in rollout_ids
    }
    query = select(monitor_states).where(monitor_states.c.rollout_id.in_(rollout_ids))
    for row in conn.execute(query):
        cursors = Cursors(int(row.events_through), int(row.feedback_through))
        try:
            found[row.rollout_id] = StoredState.parse(row.state, cursors)
        except Exception as error:  # kept for the rollout's outcome, like require_state's
            found[row.rollout_id] = error
    return found


def require_state(conn: Connection, rollout_id: str) -> StoredState:
    """The rollout's stored state; a StoreError when it is missing."""
    state = read_state(conn, rollout_id)
    if state is None:  # every start writes one; a missing row means a damaged store
        raise StoreError(_missing(rollout_id))
    return state


def _missing(rollout_id: str) -> str:
    return f"rollout {rollout_id} has no monitor state; abort it and restart"


def read_cursors(conn: Connection, rollout_id: str) -> Cursors:
    """How far the rollout's stored state has read (no events yet when it has none)."""
    row = conn.execute(
        select(monitor_states.c.events_through, monitor_states.c.feedback_through).where(
            monitor_states.c.rollout_id == rollout_id
        )
    ).first()
    return Cursors() if row is None else Cursors(int(row[0]), int(row[1]))


def write_state(
    conn: Connection, rollout_id: str, state: StoredState, at: datetime, *, insert: bool = False
) -> None:
    """Insert (at the start) or update the rollout's stored state."""
    values = _values(state, at)
    if insert:
        conn.execute(monitor_states.insert().values(rollout_id=rollout_id, **values))
    else:
        write_states(conn, [(rollout_id, state, at)])


def write_states(conn: Connection, states: Sequence[tuple[str, StoredState, datetime]]) -> None:
    """Update each ``(rollout_id, state, at)``'s stored state in one statement (executemany)."""
    if not states:
        return
    names = ("state", "events_through", "feedback_through", "updated_at")
    update = (
        monitor_states.update()
        .where(monitor_states.c.rollout_id == bindparam("rid"))
        .values({name: bindparam(f"new_{name}") for name in names})
    )
    conn.execute(
        update,
        [
            {"rid": rid, **{f"new_{k}": v for k, v in _values(state, at).items()}}
            for rid, state, at in states
        ],
    )


def _values(state: StoredState, at: datetime) -> dict[str, Any]:
    """The columns of a ``monitor_states`` row besides its rollout id."""
    return {
        "state": state.dump(),
        "events_through": state.cursors.events_through,
        "feedback_through": state.cursors.feedback_through,
        "updated_at": at,
    }
