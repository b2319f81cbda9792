"""Range checks shared by the listing functions, made before a value reaches the database.

SQLite raises ``OverflowError`` past 64 bits and PostgreSQL "bigint out of range"; checking
here gives both backends the same answer: a user error naming the accepted range.
"""

from __future__ import annotations

from policy_canary.errors import InputError

#: Most rows one listing call returns (``--limit``).
MAX_LIST_LIMIT = 1_000_000


def check_limit(limit: int, *, what: str = "limit") -> int:
    """Return ``limit`` if it is a whole number from 1 to :data:`MAX_LIST_LIMIT`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InputError(
            f"{what} must be a whole number from 1 to {MAX_LIST_LIMIT:,}; got {limit!r}"
        )
    return limit
