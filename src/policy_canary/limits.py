"""Bounds on what policy-canary accepts, shared by the layers that check them.

The serving path refuses a value at ``record()``; the monitors refuse the same value when
they meet it in a stored row (written by an older version, or by hand). Both read it here so
the two checks cannot drift apart.
"""

from __future__ import annotations

from policy_canary.errors import InputError

#: Largest magnitude of any recorded number (latency in ms, cost, custom metrics): far beyond
#: any real value, and small enough that the monitors' sums of squares stay finite.
MAX_MAGNITUDE = 1e15


#: Most rows one listing call returns (``--limit``).
MAX_LIST_LIMIT = 1_000_000


def check_limit(limit: int, *, what: str = "limit") -> int:
    """Return ``limit`` if it is a whole number from 1 to :data:`MAX_LIST_LIMIT`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InputError(
            f"{what} must be a whole number from 1 to {MAX_LIST_LIMIT:,}; got {limit!r}"
        )
    return limit
