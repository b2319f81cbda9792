"""The splitter: a deterministic, sticky map from (rollout salt, unit key) to an arm.

Hash scheme 1 (the only one so far; every decision records the scheme it used):

1. ``h`` = the first 8 bytes, read big-endian as an unsigned 64-bit integer, of
   ``SHA-256(salt_utf8 || 0x00 || key_utf8)``. SHA-256 because every language ships it
   (``tests/vectors/splitter.json`` lets another client check itself); the 0x00 separator
   keeps ``("ab", "c")`` and ``("a", "bc")`` apart.
2. ``bucket = (h * 10000) >> 64``, an integer in ``[0, 10000)``: basis points, computed
   with integer arithmetic only, so every language gets the same answer.
3. The unit is in the ``candidate`` arm iff ``bucket < share_bp``.

For speed the gate evaluates step 3 without converting to integers: ``bucket < share_bp``
holds iff ``h < ceil(share_bp * 2**64 / 10000)``, and comparing the raw digest with that
bound written as big-endian bytes (:func:`threshold`) is a single byte-string comparison.
Both forms are tested to agree for every share.

Because step 3 is a threshold on a fixed bucket, raising the share never moves a unit from
candidate back to stable (design invariant 5), and two rollouts with different salts assign
independently. The salt is random per rollout (:func:`new_salt`) and stored with it.

This module is pure: no I/O, no clock, and randomness only where it is handed in.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from enum import StrEnum

__all__ = [
    "BUCKETS",
    "SCHEME_VERSION",
    "Arm",
    "assign",
    "bucket",
    "bucket_prefixed",
    "new_salt",
    "random_bucket",
    "salt_prefix",
    "threshold",
]

#: The hash scheme implemented here; stored on every decision so the scheme can evolve.
SCHEME_VERSION = 1
#: Buckets per unit interval: one bucket is one basis point (0.01%) of traffic.
BUCKETS = 10_000

_sha256 = hashlib.sha256
_from_bytes = int.from_bytes


class Arm(StrEnum):
    """Which version serves a request."""

    STABLE = "stable"
    CANDIDATE = "candidate"

    def is_candidate(self) -> bool:
        """True for the version being rolled out."""
        return self is Arm.CANDIDATE


def new_salt() -> str:
    """Return a fresh random salt for a rollout (32 hex characters, 128 bits)."""
    return secrets.token_hex(16)


def salt_prefix(salt: str) -> bytes:
    """Return the bytes hashed before every key of a rollout: ``salt_utf8 || 0x00``.

    Routing tables keep this prefix so the hot path concatenates once instead of encoding
    the salt on every request.
    """
    return salt.encode("utf-8") + b"\x00"


def bucket_prefixed(prefix: bytes, key: str) -> int:
    """Return the bucket of ``key`` given a rollout's :func:`salt_prefix` (the hot path)."""
    digest = _sha256(prefix + key.encode("utf-8")).digest()
    return (_from_bytes(digest[:8], "big") * BUCKETS) >> 64


def threshold(share_bp: int) -> bytes:
    """Return the bound ``B`` with ``digest < B`` iff the unit's bucket is below ``share_bp``.

    ``digest`` is the full SHA-256 digest; byte strings compare lexicographically, which for
    equal-length big-endian numbers is numeric order, and a digest longer than ``B`` that
    starts with ``B`` is not smaller, exactly as ``h == bound`` must not be. A share of
    100% needs a bound above every digest: 33 bytes of 0xFF.
    """
    if not 0 <= share_bp <= BUCKETS:
        raise ValueError(f"share_bp must be within [0, {BUCKETS}], got {share_bp}")
    if share_bp == BUCKETS:
        return b"\xff" * 33
    bound = -(-(share_bp << 64) // BUCKETS)  # ceil(share_bp * 2**64 / BUCKETS)
    return bound.to_bytes(8, "big")


def bucket(salt: str, key: str) -> int:
    """Return the bucket in ``[0, 10000)`` of unit ``key`` in the rollout salted ``salt``."""
    return bucket_prefixed(salt_prefix(salt), key)


def assign(salt: str, key: str, share_bp: int) -> Arm:
    """Return the arm of unit ``key`` when the candidate gets ``share_bp`` basis points.

    ``share_bp`` outside ``[0, 10000]`` is a programming error and raises ``ValueError``.
    """
    if not 0 <= share_bp <= BUCKETS:
        raise ValueError(f"share_bp must be within [0, {BUCKETS}], got {share_bp}")
    return Arm.CANDIDATE if bucket(salt, key) < share_bp else Arm.STABLE


def random_bucket(rng: random.Random) -> int:
    """Return a uniformly random bucket: the assignment of a request without a unit key.

    ``int(random() * BUCKETS)`` rather than ``randrange``: it is several times cheaper on the
    hot path, and the 53-bit float makes any bias far below one basis point.
    """
    return int(rng.random() * BUCKETS)
