"""Errors raised by policy-canary: one root, a small tree, messages that say what to fix.

::

    CanaryError                      every error this package raises on purpose
    ├── InputError                   the caller handed us something we cannot accept
    │   ├── InvalidSpecError         malformed YAML/JSON, not an object, NaN, too large
    │   ├── InvalidNameError         a policy name outside the documented charset
    │   ├── InvalidMetricError       NaN / negative latency / quality outside [0, 1] ...
    │   └── PlanError                a rollout plan that does not validate
    ├── NotFoundError                an unknown policy, version, rollout, decision, incident
    │   └── AmbiguousReferenceError  a prefix that matches more than one version
    ├── ConflictError                the request clashes with stored state (active rollout ...)
    ├── StoreError                   the store is reachable but refused the operation
    │   └── StoreUnavailableError    the database cannot be reached or is not a database
    ├── AuthenticationError          no API token, or one that is unknown, revoked or expired
    ├── PermissionDeniedError        the token's role or policies do not allow the request
    ├── TooLargeError                a request body, batch or spec over its limit
    ├── UnsupportedMediaError        a request body in a content type or encoding we do not read
    └── RateLimitedError             too much at once (the event buffer is full); retry later

Every error carries an :class:`ErrorCode`; the surfaces (CLI exit codes, later HTTP statuses)
map codes to outcomes in exactly one place (``cli/_output.py``, ``server/_errors.py``).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable, machine-readable error codes (part of the ``--json`` contract)."""

    INVALID_INPUT = "invalid_input"
    INVALID_SPEC = "invalid_spec"
    INVALID_NAME = "invalid_name"
    INVALID_METRIC = "invalid_metric"
    INVALID_PLAN = "invalid_plan"
    NOT_FOUND = "not_found"
    AMBIGUOUS_REFERENCE = "ambiguous_reference"
    CONFLICT = "conflict"
    STORE_ERROR = "store_error"
    STORE_UNAVAILABLE = "store_unavailable"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"


class CanaryError(Exception):
    """Root of every error policy-canary raises on purpose."""

    code: ErrorCode = ErrorCode.INVALID_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(CanaryError):
    """The caller handed us something we cannot accept; nothing was stored."""

    code = ErrorCode.INVALID_INPUT


class InvalidSpecError(InputError):
    """A policy spec (or exported version file) that cannot be read or is not allowed."""

    code = ErrorCode.INVALID_SPEC


class InvalidNameError(InputError):
    """A policy name outside the documented charset."""

    code = ErrorCode.INVALID_NAME


class InvalidMetricError(InputError):
    """A metric value that cannot be recorded (NaN, negative latency, quality outside [0, 1])."""

    code = ErrorCode.INVALID_METRIC


class PlanError(InputError):
    """A rollout plan that does not validate.

    ``field`` names the key within the failing guardrail or stage, when one is to blame, so
    a plan file's error can point at that key's line and column.
    """

    code = ErrorCode.INVALID_PLAN

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFoundError(CanaryError):
    """An unknown policy, version, rollout, decision or incident."""

    code = ErrorCode.NOT_FOUND


class AmbiguousReferenceError(NotFoundError):
    """A version prefix that matches more than one version."""

    code = ErrorCode.AMBIGUOUS_REFERENCE


class ConflictError(CanaryError):
    """The request clashes with stored state (a rollout is already active) or a closed canary."""

    code = ErrorCode.CONFLICT


class StoreError(CanaryError):
    """The store is reachable but refused the operation."""

    code = ErrorCode.STORE_ERROR


class StoreUnavailableError(StoreError):
    """The database cannot be reached, or the file is not a database."""

    code = ErrorCode.STORE_UNAVAILABLE


class AuthenticationError(CanaryError):
    """No API token was given, or it is unknown, revoked or expired."""

    code = ErrorCode.UNAUTHENTICATED


class PermissionDeniedError(CanaryError):
    """The API token is valid but its role or policy list does not allow the request."""

    code = ErrorCode.FORBIDDEN


class TooLargeError(InputError):
    """A request body, an event batch or a spec over its limit; nothing was stored."""

    code = ErrorCode.TOO_LARGE


class UnsupportedMediaError(InputError):
    """A request body in a content type or content encoding that is not accepted."""

    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class RateLimitedError(CanaryError):
    """Too much at once (e.g. the event buffer is full); retry after ``retry_after`` seconds."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (of the driver's error, when it wraps one).

    Store errors carry multi-line SQL context; surfaces and status fields show one line.
    """
    inner = getattr(error, "orig", None) or error
    text = str(inner).strip()
    return text.splitlines()[0] if text else type(inner).__name__
