"""Settings read from the environment once, at the edge, and passed explicitly from there."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from policy_canary.errors import InputError

#: Specs larger than this (canonical UTF-8 bytes) are refused unless configured otherwise.
DEFAULT_MAX_SPEC_BYTES = 1024 * 1024
#: Shortest accepted incident signing key; shorter secrets are guessable.
MIN_INCIDENT_KEY_CHARS = 16


@dataclass(frozen=True, slots=True)
class Settings:
    """Process-wide configuration; build it with :meth:`from_env` at the program's edge."""

    db_url: str | None = None
    max_spec_bytes: int = DEFAULT_MAX_SPEC_BYTES
    #: The HMAC key that signs exported incidents and verifies them on replay, if any.
    incident_key: bytes | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``POLICY_CANARY_DB``, ``POLICY_CANARY_MAX_SPEC_BYTES`` and
        ``POLICY_CANARY_INCIDENT_KEY``."""
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
        return cls(
            db_url=env.get("POLICY_CANARY_DB") or None,
            max_spec_bytes=max_bytes,
            incident_key=_incident_key(env.get("POLICY_CANARY_INCIDENT_KEY")),
        )


def _incident_key(raw: str | None) -> bytes | None:
    if not raw:
        return None
    if len(raw) < MIN_INCIDENT_KEY_CHARS:
        raise InputError(
            f"POLICY_CANARY_INCIDENT_KEY is {len(raw)} characters; use at least "
            f"{MIN_INCIDENT_KEY_CHARS} (e.g. the output of 'openssl rand -hex 32')"
        )
    return raw.encode("utf-8", "surrogateescape")
