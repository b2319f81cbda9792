"""Settings read from the environment once, at the edge, and passed explicitly from there."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from policy_canary.errors import InputError

#: Specs larger than this (canonical UTF-8 bytes) are refused unless configured otherwise.
DEFAULT_MAX_SPEC_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Settings:
    """Process-wide configuration; build it with :meth:`from_env` at the program's edge."""

    db_url: str | None = None
    max_spec_bytes: int = DEFAULT_MAX_SPEC_BYTES

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``POLICY_CANARY_DB`` and ``POLICY_CANARY_MAX_SPEC_BYTES``."""
        env = os.environ if environ is None else environ
        raw_max = env.get("POLICY_CANARY_MAX_SPEC_BYTES")
        max_bytes = DEFAULT_MAX_SPEC_BYTES
        if raw_max:
            try:
                max_bytes = int(raw_max)
            except ValueError:
                raise InputError(
                    f"POLICY_CANARY_MAX_SPEC_BYTES={raw_max!r} is not a whole number of bytes"
                ) from None
            if max_bytes <= 0:
                raise InputError("POLICY_CANARY_MAX_SPEC_BYTES must be a positive number of bytes")
        return cls(db_url=env.get("POLICY_CANARY_DB") or None, max_spec_bytes=max_bytes)
