"""What an exported incident file proves, and the checks that back it.

* ``bundle_hash`` is the sha256 of the bundle's canonical JSON. It proves **integrity against
  accidents** (a truncated copy, a hand edit that forgot to re-hash), nothing more: anyone can
  edit a bundle and recompute the hash.
* The envelope (``incident``: id, policy, kind, summary ...) is a convenience copy; replay
  checks that every field of it equals the hashed bundle's, so nothing replay reports comes
  from outside the hash.
* ``signature`` is an HMAC-SHA256 of the bundle's canonical JSON under a shared key
  (``POLICY_CANARY_INCIDENT_KEY``), added on export when the key is set. It proves the file
  was exported by someone holding the key and has not changed since — **authenticity**
  against anyone without the key. It does not protect against someone who can write the
  store itself.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from policy_canary.canonical import canonical_json
from policy_canary.errors import InputError

#: The only signature algorithm; named in the file so a later one can be told apart.
SIGNATURE_ALG = "hmac-sha256"
#: The environment variable that holds the signing key (read through ``settings.py``).
KEY_ENV = "POLICY_CANARY_INCIDENT_KEY"

#: Envelope fields and where the hashed bundle holds the same value.
_ENVELOPE: Mapping[str, tuple[str, ...]] = {
    "id": ("id",),
    "kind": ("kind",),
    "created_at": ("created_at",),
    "summary": ("summary",),
    "policy": ("rollout", "policy"),
    "rollout_id": ("rollout", "id"),
}


def sign(bundle: Mapping[str, Any], key: bytes) -> dict[str, str]:
    """The ``signature`` object of an export: HMAC-SHA256 of the bundle's canonical JSON."""
    mac = hmac.new(key, canonical_json(bundle).encode("utf-8"), hashlib.sha256)
    return {"alg": SIGNATURE_ALG, "value": mac.hexdigest()}


def check_signature(
    document: Mapping[str, Any], bundle: Mapping[str, Any], key: bytes | None, *, source: str
) -> str:
    """Return ``"verified"``, ``"unsigned"`` or ``"unchecked"``; refuse a bad signature.

    With a key, a missing or wrong signature raises :class:`InputError`: the file cannot be
    shown to come from a holder of the key. Without a key nothing can be verified, and the
    result says so rather than pretending.
    """
    signature = document.get("signature")
    if key is None:
        return "unsigned" if signature is None else "unchecked"
    if signature is None:
        raise InputError(
            f"{source}: the file is not signed, but {KEY_ENV} is set, so it cannot be "
            "verified; export it again with the key, or unset the variable to replay it "
            "unverified"
        )
    if (
        not isinstance(signature, Mapping)
        or signature.get("alg") != SIGNATURE_ALG
        or not isinstance(signature.get("value"), str)
    ):
        raise InputError(
            f'{source}: \'signature\' must be {{"alg": "{SIGNATURE_ALG}", "value": HEX}}'
        )
    expected = sign(bundle, key)["value"]
    if not hmac.compare_digest(expected, signature["value"]):
        raise InputError(
            f"{source}: the signature does not match: the file was changed after export, "
            f"or signed with another {KEY_ENV}; refusing to replay it"
        )
    return "verified"


def envelope_problems(document: Mapping[str, Any], bundle: Mapping[str, Any]) -> list[str]:
    """Every envelope field that disagrees with the hashed bundle, as a replay problem."""
    envelope = document.get("incident")
    if envelope is None:
        return []
    if not isinstance(envelope, Mapping):
        return ["the 'incident' envelope is not an object"]
    problems = []
    for name, path in _ENVELOPE.items():
        if name not in envelope:
            continue
        value: Any = bundle
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if envelope[name] != value:
            problems.append(
                f"the envelope's {name} {envelope[name]!r} differs from the bundle's {value!r}: "
                "the file was edited outside the hashed bundle"
            )
    if "bundle_hash" in envelope and envelope["bundle_hash"] != document.get("bundle_hash"):
        problems.append("the envelope's bundle_hash differs from the file's bundle_hash")
    return problems
