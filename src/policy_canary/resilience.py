"""What keeps background loops alive: backoff delays, and logging an outage once.

Every loop policy-canary runs in the background (the SDK's refresher and flusher, the
controller's ticks, alert dispatch) follows one rule: no exception ends it. A step that fails
is reported through an :class:`Outage`, which logs the first failure of a run of failures
(with the traceback only when the error is not plain store trouble, i.e. when it is a bug
worth a stack), logs repeats quietly or in one line, and logs the recovery; the loop then
waits (:func:`retry_delay` where a backoff is safe) and tries again.
"""

from __future__ import annotations

import logging
import numbers
import time

from policy_canary.clock import exponential_backoff
from policy_canary.errors import CanaryError, InputError, StoreUnavailableError, first_line

#: First delay before retrying after a failure (capped by the loop's own interval).
RETRY_MIN = 1.0
#: Longest delay between retries.
RETRY_MAX = 60.0
#: Set (True) on the log record of a recovery, so a handler can show it beside warnings.
RECOVERED = "policy_canary_recovered"
#: Longest interval of any SDK loop (refresh, flush, prune): a day.
MAX_INTERVAL = 86_400.0


def retry_delay(failures: int, interval: float, *, longest: float = RETRY_MAX) -> float:
    """Seconds to wait after ``failures + 1`` failures in a row.

    Doubles from ``min(interval, RETRY_MIN)`` up to ``longest``.
    """
    return exponential_backoff(failures, first=min(interval, RETRY_MIN), cap=longest)


def loop_interval(name: str, value: object) -> float:
    """``value`` as the seconds between a loop's runs: a finite number in (0, MAX_INTERVAL].

    Anything else would stop the loop (``inf`` overflows a thread's wait) or spin it, so it
    is refused with an :class:`InputError` that names the option.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        seconds = float(value)
        if 0.0 < seconds <= MAX_INTERVAL:  # also false for NaN
            return seconds
        raise InputError(
            f"{name}={value!r} is not allowed; use a number of seconds above 0 and at most "
            f"{MAX_INTERVAL:g} (a day)"
        )
    raise InputError(f"{name} must be a number of seconds, got {type(value).__name__}")


def store_trouble(error: BaseException) -> bool:
    """True for "cannot reach / cannot lock the database": retry later, as is.

    Raw driver errors (from COPY, or a connection taken outside SQLAlchemy's wrapping)
    count too: their classes derive from the DB-API's OperationalError or InterfaceError
    (psycopg's DiskFull, for one, is an OperationalError).
    """
    # SQLAlchemy's wrappers carry the same class names as the DB-API's, so one look at the
    # class hierarchy covers both without importing either here (the serving path must not).
    if isinstance(error, StoreUnavailableError):
        return True
    return any(kind.__name__ in _DRIVER_TROUBLE for kind in type(error).__mro__)


_DRIVER_TROUBLE = frozenset({"OperationalError", "InterfaceError"})


def describe(error: BaseException | str) -> str:
    """One line for a log or a status field: the error's type and first line."""
    if isinstance(error, str):
        return error
    if isinstance(error, CanaryError):
        return first_line(error)
    return f"{type(error).__name__}: {first_line(error)}"


class Outage:
    """A run of failures of one background step: logged when it starts, repeats and ends.

    ``what`` says what fails and what happens meanwhile ("events cannot be written; they
    stay buffered and are retried"); the error's line is appended. The first failure is
    logged at ``level`` (with the traceback unless it is store trouble or a CanaryError,
    whose messages already say what to fix), each repeat at ``repeat_level`` in one line,
    the recovery at INFO. Used by one thread.
    """

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        level: int = logging.WARNING,
        repeat_level: int = logging.DEBUG,
    ) -> None:
        self._log = log
        self._what = what
        self._level = level
        self._repeat_level = repeat_level
        self.failures = 0
        self._since = 0.0

    @property
    def down_for(self) -> float:
        """Seconds since the first failure of the current run (0 when none)."""
        return time.monotonic() - self._since if self.failures else 0.0

    def failed(self, error: BaseException | str) -> None:
        """Count one failure and log it (with its traceback only if it starts the run)."""
        line = describe(error)
        if self.failures == 0:
            self._since = time.monotonic()
            stack = None
            if isinstance(error, BaseException) and not (
                isinstance(error, CanaryError) or store_trouble(error)
            ):
                stack = error
            self._log.log(self._level, "%s: %s", self._what, line, exc_info=stack)
        else:
            self._log.log(
                self._repeat_level,
                "%s (failing for %.0fs, %d attempts): %s",
                self._what,
                self.down_for,
                self.failures + 1,
                line,
            )
        self.failures += 1

    def recovered(self, done: str) -> None:
        """End the run, if one is going on, and log ``done`` ("events are written again")."""
        if self.failures:
            self._log.info(
                "%s after %.0fs and %d failed attempts",
                done,
                self.down_for,
                self.failures,
                extra={RECOVERED: True},
            )
        self.failures = 0
