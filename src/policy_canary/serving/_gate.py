"""The in-agent gate: ``route()`` a request to a policy version, ``record()`` what happened.

A :class:`Gate` answers from an in-memory routing table that its :class:`~policy_canary.Canary`
refreshes in the background, so ``route()`` does no I/O, takes no lock and costs about a
microsecond. A :class:`Decision` says which version serves the request and why; recording
its outcome appends one row to a bounded buffer that a background flusher writes in batches.

Only caller mistakes raise (a bad metric, a decision recorded twice); store trouble never
reaches the agent's request.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from policy_canary.errors import InputError, InvalidMetricError
from policy_canary.serving._outcomes import NO_FLAGS, Outcome, outcome
from policy_canary.serving._routing import RouteTable, VersionInfo
from policy_canary.serving._splitter import BUCKETS, SCHEME_VERSION, Arm

if TYPE_CHECKING:
    from policy_canary.serving._routed import Window

__all__ = ["Decision", "Gate", "GateStatus", "flag_metadata", "flag_reason"]

_CANDIDATE: Final = Arm.CANDIDATE
_STABLE: Final = Arm.STABLE

# Decision life cycle: routed → (inside a ``with`` block) → recorded. Ints, not an enum:
# this is checked on the hot path and never leaves the object. _MISUSED is a block in which
# the SDK was misused (the decision entered again, or recorded twice): the usage error that
# leaves the block is the caller's bug, not a failed request.
_ROUTED, _IN_BLOCK, _RECORDED, _MISUSED = 0, 1, 2, 3


class Decision:
    """Which policy version serves one request, and the handle to record its outcome.

    Use it as a context manager to measure latency and catch errors::

        with gate.route(user_id) as d:
            reply = run_agent(d.spec)
            d.record(quality=judge(reply), cost_usd=cost)   # optional, inside the block

    or call :meth:`record` once when the request is done. ``spec`` is shared by every request
    served by the same version and is read-only.
    """

    # _held and _start are only set by __enter__: fewer stores keep route() cheap.
    __slots__ = (
        "_arm",
        "_gate",
        "_held",
        "_seq",
        "_start",
        "_state",
        "_sticky",
        "_table",
        "_window",
    )

    _held: Outcome | None
    _start: float

    def __init__(
        self,
        gate: Gate,
        table: RouteTable,
        arm: Arm,
        sticky: bool,
        seq: int,
        window: Window | None = None,
    ) -> None:
        self._gate = gate
        self._table = table
        self._arm = arm
        self._sticky = sticky
        self._seq = seq
        self._state = _ROUTED
        # The routing window this decision was counted in (serving/_routed.py): its outcome
        # is counted against the same window, however late it is recorded.
        self._window = window

    # -- what was decided -----------------------------------------------------------------

    @property
    def arm(self) -> Arm:
        """``stable`` or ``candidate``."""
        return self._arm

    @property
    def sticky(self) -> bool:
        """True when the arm is a function of the unit key; False for a per-request draw."""
        return self._sticky

    @property
    def decision_id(self) -> str:
        """The id that joins this decision's event and any later feedback."""
        return f"{self._gate._id_prefix}{self._seq:x}"

    @property
    def policy(self) -> str:
        """The policy's name."""
        return self._table.policy

    @property
    def version(self) -> VersionInfo:
        """The version that serves this request (id, number, spec)."""
        table = self._table
        if self._arm is _CANDIDATE and table.candidate is not None:
            return table.candidate
        return table.stable

    @property
    def spec(self) -> Mapping[str, Any]:
        """The serving version's spec (read-only; shared across requests)."""
        return self.version.spec

    @property
    def rollout_id(self) -> str | None:
        """The active rollout when the request was routed, or None."""
        return self._table.rollout_id

    @property
    def stage(self) -> str | None:
        """The rollout's stage name when the plan names one, else None."""
        return self._table.stage

    @property
    def traffic_bp(self) -> int:
        """The candidate's share in basis points when the request was routed."""
        return self._table.share_bp

    @property
    def scheme(self) -> int:
        """The splitter hash scheme that made the assignment."""
        return SCHEME_VERSION

    @property
    def recorded(self) -> bool:
        """True once the outcome was recorded (it cannot be recorded again)."""
        return self._state == _RECORDED

    def __repr__(self) -> str:
        return (
            f"Decision(id={self.decision_id!r}, policy={self.policy!r}, arm={self.arm.value!r}, "
            f"version={self.version.label}, rollout_id={self.rollout_id!r}, sticky={self.sticky})"
        )

    # -- what happened --------------------------------------------------------------------

    def record(
        self,
        *,
        latency_ms: float | None = None,
        error: bool | None = None,
        quality: float | None = None,
        safety_flags: Sequence[str] | int = NO_FLAGS,
        cost_usd: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        model: str | None = None,
        metrics: Mapping[str, float | bool] | None = None,
    ) -> None:
        """Record the request's outcome (once). Inside a ``with`` block it is completed on exit.

        ``latency_ms`` and ``cost_usd`` are finite and >= 0, ``quality`` is in [0, 1], token
        counts are ints >= 0, ``safety_flags`` is a list of flag names (or a count) and
        ``metrics`` maps names to finite numbers or booleans. Numbers may be numpy scalars
        (and ``np.bool_`` a bool); they are stored as plain values. The event is stamped with
        the time of this call (or of the block's exit) and queued; it reaches the store with
        the next flush. After ``canary.close()`` it is dropped and counted instead.

        Raises :class:`InvalidMetricError` for NaN, infinite or negative amounts, a quality
        outside [0, 1], more than 64 safety flags (names of 1..64 characters) or custom
        metrics, a ``model`` beyond 200 characters, text with a NUL or a lone surrogate, or a
        second record of the same decision; nothing is stored then.
        """
        state = self._state
        if state in (_RECORDED, _MISUSED) or (state == _IN_BLOCK and self._held is not None):
            if state == _IN_BLOCK:
                self._state = _MISUSED
            raise InvalidMetricError(
                f"decision {self.decision_id} was already recorded; record each decision "
                "once (use canary.feedback() for scores that arrive later)"
            )
        out = outcome(
            latency_ms,
            error,
            quality,
            safety_flags,
            cost_usd,
            input_tokens,
            output_tokens,
            model,
            metrics,
        )
        if state == _IN_BLOCK:
            self._held = out  # the block's exit adds latency and error, then emits
            return
        self._state = _RECORDED
        self._gate._emit(self, out)

    def __enter__(self) -> Decision:
        if self._state != _ROUTED:
            if self._state in (_IN_BLOCK, _MISUSED):
                self._state = _MISUSED
                raise InvalidMetricError(
                    f"decision {self.decision_id} is already inside its 'with' block; enter it "
                    "once (nested 'with' of one decision), and route() each request anew"
                )
            raise InvalidMetricError(
                f"decision {self.decision_id} was already used; route() each request anew"
            )
        self._state = _IN_BLOCK
        self._held = None
        self._start = perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed_ms = (perf_counter() - self._start) * 1000.0
        held = self._held
        self._held = None
        # The SDK's own usage error leaving the block is not the request failing.
        misused = self._state == _MISUSED and isinstance(exc, InvalidMetricError)
        self._state = _RECORDED
        if misused:
            if held is not None:  # what was recorded before the mistake stands as recorded
                latency = held[0] if held[0] is not None else elapsed_ms
                self._gate._emit(self, (latency, bool(held[1]), *held[2:]))
            return
        if held is None:
            failed = exc_type is not None
            out: Outcome = (elapsed_ms, failed, None, "[]", 0, None, None, None, None, "{}")
        else:
            latency = held[0] if held[0] is not None else elapsed_ms
            failed = True if exc_type is not None else bool(held[1])
            out = (latency, failed, *held[2:])
        self._gate._emit(self, out)
        # Returning None lets the agent's exception propagate unchanged.


def flag_reason(decision: Decision) -> str:
    """OpenFeature's reason: SPLIT if the splitter chose, DEFAULT at a share of 0, else STATIC."""
    if decision.traffic_bp > 0:
        return "SPLIT"
    return "DEFAULT" if decision.rollout_id is not None else "STATIC"


def flag_metadata(decision: Decision) -> dict[str, bool | int | float | str]:
    """The flag metadata an OpenFeature evaluation carries (OFREP bodies and the provider).

    ``decisionId`` is what later feedback names; ``rolloutId`` and ``stage`` only during a
    rollout.
    """
    data: dict[str, bool | int | float | str] = {
        "decisionId": decision.decision_id,
        "versionDigest": decision.version.id,
        "arm": decision.arm.value,
        "sticky": decision.sticky,
        "trafficBp": decision.traffic_bp,
    }
    if decision.rollout_id is not None:
        data["rolloutId"] = decision.rollout_id
    if decision.stage is not None:
        data["stage"] = decision.stage
    return data


def _bad_key(unit_key: object) -> InputError:
    """The error for a unit key the splitter cannot hash: not text, or not valid Unicode."""
    if not isinstance(unit_key, str):
        return InputError(
            f"unit_key must be a str (a user, session or conversation id), "
            f"got {type(unit_key).__name__}; convert it with str()"
        )
    try:
        unit_key.encode("utf-8")
    except UnicodeEncodeError as error:
        return InputError(
            f"unit_key {unit_key[:40]!r} is not valid text ({error.reason} at position "
            f"{error.start}); pass a str that encodes as UTF-8, e.g. bytes decoded with "
            "errors='replace'"
        )
    return InputError(f"unit_key {unit_key[:40]!r} cannot be hashed; pass a plain str")


@dataclass(frozen=True, slots=True)
class GateStatus:
    """How fresh a gate's routing table is, and what it currently serves.

    ``age`` is the time since the last successful refresh; ``stale`` is True when the last
    refresh failed or ``age`` exceeds the canary's staleness limit (the gate keeps serving
    its last table either way).
    """

    policy: str
    stable_version: int
    candidate_version: int | None
    rollout_id: str | None
    rollout_state: str | None
    traffic_bp: int
    stage: str | None
    epoch: int
    loaded_at: datetime
    last_refresh_attempt_at: datetime | None
    last_error: str | None
    age: timedelta
    stale: bool
    buffered_events: int
    dropped_events: int

    @classmethod
    def of(
        cls,
        table: RouteTable,
        *,
        loaded_at: datetime | None,
        attempt: datetime | None,
        error: str | None,
        now: datetime,
        stale_after: timedelta,
        buffered: int,
        dropped: int,
    ) -> GateStatus:
        """The status of ``table``, last loaded at ``loaded_at`` (never: ``now``)."""
        loaded = loaded_at or now
        age = max(now - loaded, timedelta(0))
        return cls(
            policy=table.policy,
            stable_version=table.stable.number,
            candidate_version=table.candidate.number if table.candidate else None,
            rollout_id=table.rollout_id,
            rollout_state=table.rollout_state,
            traffic_bp=table.share_bp,
            stage=table.stage,
            epoch=table.epoch,
            loaded_at=loaded,
            last_refresh_attempt_at=attempt,
            last_error=error,
            age=age,
            stale=error is not None or age > stale_after,
            buffered_events=buffered,
            dropped_events=dropped,
        )


class Gate:
    """Routes one policy's requests; get one with :meth:`Canary.gate`. Thread-safe."""

    __slots__ = (
        "_add",
        "_id_prefix",
        "_ids",
        "_now",
        "_on_route",
        "_random",
        "_status",
        "_table",
    )

    def __init__(
        self,
        status: Callable[[Gate], GateStatus],
        table: RouteTable,
        *,
        add: Callable[[tuple[Any, ...]], None],
        now: Callable[[], datetime],
        rng: random.Random,
        ids: Callable[[], int],
        id_prefix: str,
        on_route: Callable[[Decision, str | None], None] | None = None,
    ) -> None:
        self._status = status
        # Canary(trace_spans=True): the assignment on the current span (serving/_spans.py).
        self._on_route = on_route
        self._table = table
        self._add = add
        self._now = now
        self._random = rng.random
        self._ids = ids
        self._id_prefix = id_prefix

    @property
    def policy(self) -> str:
        """The policy this gate routes."""
        return self._table.policy

    @property
    def table(self) -> RouteTable:
        """The routing table currently served (an immutable snapshot)."""
        return self._table

    def route(self, unit_key: str | None = None) -> Decision:
        """Decide which version serves a request for ``unit_key`` (user, session, conversation).

        The same key gets the same arm for as long as the rollout's share does not shrink;
        without a key the request is assigned at random and the decision says ``sticky=False``.
        Does no I/O and never raises for store trouble; raises :class:`InputError` for a key
        that is not a ``str`` or not valid Unicode (a lone surrogate), rollout or not.
        """
        table = self._table
        share = table.share_bp
        if share:
            if unit_key is None:
                candidate = int(self._random() * BUCKETS) < share
                sticky = False
            else:
                hasher = table.hasher.copy()
                try:
                    hasher.update(unit_key.encode("utf-8"))
                except (AttributeError, UnicodeEncodeError):
                    raise _bad_key(unit_key) from None
                # The splitter's scheme, as one byte-string comparison (see threshold()).
                candidate = hasher.digest() < table.bound
                sticky = True
            # Routed decisions are counted so that lost outcomes show (serving/_routed.py).
            tally = table.tally
            window = None
            if tally is not None:
                window = tally.window
                next(window.routed[candidate])
            decision = Decision(
                self, table, _CANDIDATE if candidate else _STABLE, sticky, self._ids(), window
            )
            if self._on_route is not None:
                self._on_route(decision, unit_key)
            return decision
        # The same keys are refused with or without a rollout; ASCII keys skip the encoding.
        if unit_key is not None and (type(unit_key) is not str or not unit_key.isascii()):
            try:
                unit_key.encode("utf-8")
            except (AttributeError, UnicodeEncodeError):
                raise _bad_key(unit_key) from None
        decision = Decision(self, table, _STABLE, unit_key is not None, self._ids())
        if self._on_route is not None:
            self._on_route(decision, unit_key)
        return decision

    def status(self) -> GateStatus:
        """Report the routing table's freshness and what the gate serves now."""
        return self._status(self)

    def _emit(self, decision: Decision, out: Outcome) -> None:
        """Turn a recorded decision into an event row and queue it (never raises)."""
        table = decision._table
        if decision._arm is _CANDIDATE and table.candidate is not None:
            version_id, arm = table.candidate.id, "candidate"
        else:
            version_id, arm = table.stable.id, "stable"
        window = decision._window
        if window is not None:
            next(window.recorded[arm == "candidate"])
        self._add(
            (
                f"{self._id_prefix}{decision._seq:x}",
                table.policy,
                table.rollout_id,
                arm,
                version_id,
                table.stage,
                table.share_bp,
                SCHEME_VERSION,
                decision._sticky,
                self._now(),
                *out,
            )
        )


def install_table(gate: Gate, table: RouteTable) -> None:
    """Serve ``table`` from now on: one reference assignment, so route() sees old or new."""
    gate._table = table


def rebind_gate(
    gate: Gate, *, add: Callable[[tuple[Any, ...]], None], ids: Callable[[], int], id_prefix: str
) -> None:
    """Point ``gate`` at a new buffer hook and id source (a forked child's, or a closed sink)."""
    gate._add = add
    gate._ids = ids
    gate._id_prefix = id_prefix
