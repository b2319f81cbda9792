"""The provider: every evaluation is ``Gate.route()``; its decision is recorded later."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import (
    FlagNotFoundError,
    GeneralError,
    ProviderFatalError,
    TypeMismatchError,
)
from openfeature.flag_evaluation import FlagEvaluationDetails, FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from policy_canary.errors import (
    CanaryError,
    InputError,
    NotFoundError,
    StoreUnavailableError,
    first_line,
)
from policy_canary.resilience import loop_interval
from policy_canary.serving._gate import Decision, Gate, flag_metadata, flag_reason
from policy_canary.serving._routing import RouteTable

if TYPE_CHECKING:
    from policy_canary.serving._canary import Canary

PROVIDER_NAME = "policy-canary"
#: Decisions kept for :meth:`CanaryProvider.record` before the oldest are forgotten.
DEFAULT_OPEN_DECISIONS = 100_000

FlagObject = Sequence[Any] | Mapping[str, Any]


def _reason(decision: Decision, stale: bool) -> str:
    """STALE on an old table; else as OFREP says (:func:`~policy_canary.serving.flag_reason`)."""
    return Reason.STALE if stale else Reason(flag_reason(decision))


def _metadata(decision: Decision) -> dict[str, bool | int | float | str]:
    """OFREP's flag metadata plus the version's label."""
    return {"version": decision.version.label, **flag_metadata(decision)}


def _not_an_object(flag_key: str, wanted: str) -> NoReturn:
    raise TypeMismatchError(
        f"flag {flag_key!r} is a policy whose value is its spec (an object); evaluate it with "
        f"get_object_value()/get_object_details(), not as a {wanted}"
    )


class CanaryProvider(AbstractProvider):
    """OpenFeature provider: flags are policies, values are specs, variants version labels.

    ``policies`` are opened on :meth:`initialize` (so a missing one fails start-up); others
    open on their first evaluation. With ``watch_interval`` (seconds) a thread calls
    :meth:`check` that often; without, call it yourself. Evaluations never do I/O after a
    policy's first, and never raise into the request: errors come back as the default value
    with an error code, as the OpenFeature specification requires.
    """

    def __init__(
        self,
        canary: Canary,
        *,
        policies: Sequence[str] = (),
        watch_interval: float | None = None,
        open_decisions: int = DEFAULT_OPEN_DECISIONS,
    ) -> None:
        super().__init__()
        self._canary = canary
        self._policies = tuple(policies)
        self._interval = (
            loop_interval("watch_interval", watch_interval) if watch_interval is not None else None
        )
        if open_decisions < 1:
            raise InputError(f"open_decisions must be at least 1; got {open_decisions}")
        self._capacity = open_decisions
        self._open: OrderedDict[str, Decision] = OrderedDict()
        self._lock = threading.Lock()
        self._seen: dict[str, RouteTable] = {}
        self._stale = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------

    def get_metadata(self) -> Metadata:
        return Metadata(name=PROVIDER_NAME)

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Open the declared policies' gates (a missing one is a fatal start-up error)."""
        for policy in self._policies:
            try:
                self._seen[policy] = self._canary.gate(policy).table
            except NotFoundError as error:  # it cannot serve what it was given: fatal
                raise ProviderFatalError(error.message) from None
            except CanaryError as error:  # the store is down: an error, retried by the SDK user
                raise GeneralError(first_line(error)) from None
        if self._interval is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._watch, name="policy-canary-openfeature", daemon=True
            )
            self._thread.start()

    def shutdown(self) -> None:
        """Stop watching (the canary stays open: it belongs to the caller)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def check(self) -> None:
        """Refresh the routing tables, then emit what changed (never raises).

        CONFIGURATION_CHANGED names the policies whose routing moved; STALE once when the
        tables went stale (the store is unreachable); READY when they are fresh again.
        """
        try:
            self._canary.refresh_now()
            statuses = {s.policy: s for s in self._canary.gate_statuses()}
        except CanaryError:
            return  # the canary was closed: nothing to watch
        changed = []
        for policy in statuses:
            table = self._canary.gate(policy).table
            if policy in self._seen and self._seen[policy] is not table:
                changed.append(policy)
            self._seen[policy] = table
        stale = any(s.stale for s in statuses.values())
        if stale and not self._stale:
            error = next((s.last_error for s in statuses.values() if s.last_error), None)
            self.emit_provider_stale(ProviderEventDetails(message=error or "routing is stale"))
        elif self._stale and not stale:
            self.emit_provider_ready(ProviderEventDetails(message="routing is fresh again"))
        self._stale = stale
        if changed:
            self.emit_provider_configuration_changed(
                ProviderEventDetails(flags_changed=sorted(changed), message="routing changed")
            )

    def _watch(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            self.check()

    # -- evaluation -----------------------------------------------------------------------

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: FlagObject,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[FlagObject]:
        gate = self._gate(flag_key)
        key = evaluation_context.targeting_key if evaluation_context is not None else None
        try:
            decision = gate.route(key)
        except InputError as error:
            raise GeneralError(error.message) from None
        with self._lock:
            self._open[decision.decision_id] = decision
            while len(self._open) > self._capacity:
                self._open.popitem(last=False)
        return FlagResolutionDetails(
            value=decision.spec,
            reason=_reason(decision, self._stale),
            variant=decision.version.label,
            flag_metadata=_metadata(decision),
        )

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        self._gate(flag_key)
        _not_an_object(flag_key, "boolean")

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        self._gate(flag_key)
        _not_an_object(flag_key, "string")

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        self._gate(flag_key)
        _not_an_object(flag_key, "integer")

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        self._gate(flag_key)
        _not_an_object(flag_key, "float")

    def _gate(self, flag_key: str) -> Gate:
        try:
            return self._canary.gate(flag_key)
        except NotFoundError as error:
            raise FlagNotFoundError(error.message) from None
        except StoreUnavailableError as error:
            raise GeneralError(f"policy {flag_key!r} cannot be loaded: {error.message}") from None
        except CanaryError as error:
            raise GeneralError(first_line(error)) from None

    # -- outcomes -------------------------------------------------------------------------

    def record(self, details: FlagEvaluationDetails[Any], **outcome: Any) -> None:
        """Record the outcome of the request that ``details`` served (once).

        ``outcome`` takes :meth:`Decision.record`'s keywords (``latency_ms``, ``error``,
        ``quality``, ...). Raises :class:`InputError` for an evaluation that made no decision
        (it returned the default) and :class:`NotFoundError` for one already recorded or
        forgotten; :class:`InvalidMetricError` for bad values, as ``record()`` does.
        """
        decision_id = details.flag_metadata.get("decisionId")
        if not isinstance(decision_id, str):
            why = f" ({details.error_code}: {details.error_message})" if details.error_code else ""
            raise InputError(
                f"the evaluation of {details.flag_key!r} made no decision{why}; only "
                "evaluations that returned a version can be recorded"
            )
        with self._lock:
            decision = self._open.pop(decision_id, None)
        if decision is None:
            raise NotFoundError(
                f"decision {decision_id!r} is not open: it was already recorded, or it was one "
                f"of more than {self._capacity:,} unrecorded decisions and was forgotten"
            )
        try:
            decision.record(**outcome)
        except CanaryError:
            with self._lock:  # a caller's mistake: the decision may still be recorded
                self._open[decision_id] = decision
            raise


__all__ = ["PROVIDER_NAME", "CanaryProvider"]
