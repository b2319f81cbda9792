"""A controller's helper processes: each ticks its own share of the rollouts.

``Controller(processes=N)`` ticks the rollouts of shard 0 itself and hands shard i (1 to N-1)
to a child process of its own, all at the same time: a tick's reads, folds and verdicts are
CPU work in Python, which one process does on one core. A rollout's shard is fixed (a CRC of
its id), so the monitor it keeps in memory stays in one process across ticks.

A child is spawned (a fresh interpreter: no threads, locks or connections inherited) with
its own :class:`~policy_canary.store.Store` on the same URL and a controller of its own that
never takes the lease: the parent holds it, decides when to tick and hands each child its
rollouts, the time and the read horizon; the child ticks them chunk by chunk exactly as the
parent does and returns what happened. Writes stay safe across processes for the reasons
they are safe across controllers: policy locks and a revision check on every write
(``_chunk.py``). A child that dies or cannot start fails its rollouts' tick; it is started
again on the next tick, and its rollouts read their stored state again, as after a restart.
"""

from __future__ import annotations

import os
import pickle
import signal
import traceback
import zlib
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from multiprocessing import get_context
from typing import TYPE_CHECKING

from policy_canary.errors import InputError
from policy_canary.resilience import store_trouble
from policy_canary.store import Horizon, Store

if TYPE_CHECKING:
    from policy_canary.controller._loop import Controller, Ticked
    from policy_canary.controller._monitoring import MonitorFactory

#: Most processes a controller may use.
MAX_PROCESSES = 64


def shard_of(rollout_id: str, processes: int) -> int:
    """The process (0: the controller's own) that ticks this rollout, the same every tick."""
    return zlib.crc32(rollout_id.encode()) % processes


@dataclass(frozen=True, slots=True)
class ShardConfig:
    """What a child needs to build its controller: everything but the lease and the clock."""

    url: str
    monitors: MonitorFactory
    batch_size: int
    chunk_size: int
    actor: str
    holder: str


def check_processes(processes: int, monitors: MonitorFactory) -> None:
    """Refuse a number of processes out of range, or one the monitor factory cannot serve.

    (Every store can be opened by every process: Store.open refuses in-memory SQLite.)
    """
    if not 1 <= processes <= MAX_PROCESSES:
        raise InputError(
            f"processes must be between 1 and {MAX_PROCESSES} (one per core is the most that "
            f"helps); got {processes}"
        )
    if processes == 1:
        return
    try:
        pickle.dumps(monitors)
    except Exception as exc:
        raise InputError(
            f"processes > 1 sends the monitor factory to each process, and "
            f"{type(monitors).__name__} cannot be pickled ({exc}); define it at module level "
            "or use processes=1"
        ) from None


class Shards:
    """The child processes of one controller, started on first use and again after a death."""

    def __init__(self, config: ShardConfig, processes: int) -> None:
        self.config = config
        self.processes = processes
        self._pools: dict[int, ProcessPoolExecutor] = {}

    def split(self, pending: Sequence[tuple[str, str]]) -> list[list[tuple[str, str]]]:
        """``pending``'s rollouts by shard, each part in ``pending``'s order."""
        parts: list[list[tuple[str, str]]] = [[] for _ in range(self.processes)]
        for rid, policy in pending:
            parts[shard_of(rid, self.processes)].append((rid, policy))
        return parts

    def submit(
        self, shard: int, part: Sequence[tuple[str, str]], now: datetime, horizon: Horizon
    ) -> Future[list[Ticked]]:
        """Tick ``part`` in shard ``shard``'s process (started now if it is not running, or
        again if it died since the last tick)."""
        pool = self._pools.get(shard)
        if pool is not None:
            try:
                return pool.submit(_tick, list(part), now, horizon)
            except BrokenProcessPool:  # it died between ticks
                self.lost(shard)
        pool = self._pools[shard] = ProcessPoolExecutor(
            max_workers=1,
            mp_context=get_context("spawn"),
            initializer=_start,
            initargs=(self.config,),
        )
        return pool.submit(_tick, list(part), now, horizon)

    def lost(self, shard: int) -> None:
        """Forget shard ``shard``'s process (it died or failed): the next tick starts another."""
        pool = self._pools.pop(shard, None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop every child process (each finishes the part it is ticking first)."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


#: The child's controller, built by :func:`_start` when the process starts.
_child: Controller | None = None


def _start(config: ShardConfig) -> None:
    """Build the child's controller (each child runs this once, first)."""
    # The parent stops its children; Ctrl-C at a terminal reaches the whole process group,
    # and must not print a traceback from every child.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from policy_canary.controller._loop import Controller

    global _child
    store = Store.open(config.url, migrate=False)
    _child = Controller(
        store,
        monitors=config.monitors,
        holder=config.holder,
        batch_size=config.batch_size,
        chunk_size=config.chunk_size,
        actor=config.actor,
    )


def _tick(part: list[tuple[str, str]], now: datetime, horizon: Horizon) -> list[Ticked]:
    """Tick ``part`` in this child; every error made fit to cross back to the parent."""
    assert _child is not None, "_start builds the child's controller before any tick"
    return [
        (rid, policy, outcome, None if error is None else _portable(error), transition)
        for rid, policy, outcome, error, transition in _child.tick_part(part, now, horizon)
    ]


def _portable(error: BaseException) -> BaseException:
    """``error`` as the parent can unpickle it, with where it was raised when that matters."""
    if not store_trouble(error):
        where = "".join(traceback.format_exception(error)).rstrip()
        error.add_note(f"raised in controller process {os.getpid()}:\n{where}")
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        plain = RuntimeError(f"{type(error).__name__}: {error}")
        plain.__notes__ = list(getattr(error, "__notes__", []))
        return plain
    return error
