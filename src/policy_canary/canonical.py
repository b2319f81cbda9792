"""Canonical JSON and content digests: the identity of a policy version.

The canonical form of a JSON value is unique: object keys sorted by code point, no
insignificant whitespace, UTF-8, and one normal form for every number (``1``, ``1.0`` and
``1.0e0`` all become ``1``; ``0.50`` becomes ``0.5``). NaN and Infinity are rejected. The sha256
of the canonical bytes is the version id.

:func:`jsonable` is the one conversion of arbitrary values into JSON data (what the trace,
incident bundles and alert payloads store).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Context, Decimal
from enum import Enum
from typing import Any

from policy_canary.errors import InvalidSpecError

# Normalising must never round: a context wide enough for any number a spec holds.
_EXACT = Context(prec=100_000)

#: Deepest nesting a spec may have; deeper values are almost certainly a mistake or an attack.
MAX_DEPTH = 64

JSONValue = Any  # a recursive JSON type buys nothing over Any at this boundary


def canonical_json(value: JSONValue, *, indent: int | None = None) -> str:
    """Return the canonical JSON text of ``value``; ``indent`` gives the pretty form used by diffs.

    Raises :class:`InvalidSpecError` naming the path of the first value that is not JSON
    (NaN, Infinity, a non-string key, a date, bytes ...).
    """
    parts: list[str] = []
    _write(value, parts, path="$", depth=0, indent=indent)
    return "".join(parts)


def digest(value: JSONValue) -> str:
    """Return the sha256 hex digest of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def digest_text(canonical: str) -> str:
    """Return the sha256 hex digest of already-canonical JSON text."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def format_number(number: int | float | Decimal) -> str:
    """Return the one canonical spelling of a finite number."""
    if isinstance(number, int):
        if -(10**21) < number < 10**21:
            return str(number)  # the common case, without a Decimal round trip
        dec = Decimal(number)
    else:
        dec = Decimal(repr(number)) if isinstance(number, float) else number
    if not dec.is_finite():
        raise ValueError("not a finite number")
    if dec.is_zero():
        return "0"  # folds -0.0 and 0E-5 into one spelling
    dec = dec.normalize(_EXACT)
    integral = dec == dec.to_integral_value()
    if integral and dec.adjusted() < 21:
        return str(int(dec))
    if not integral and -7 <= dec.adjusted() < 21:
        return format(dec, "f")
    return format(dec, "e")


def jsonable(value: Any) -> Any:
    """Turn ``value`` into plain JSON data, never failing (the one JSON-safe conversion).

    Alert payloads, incident bundles, the decision trace and ``--json`` output are written
    inside the transaction that rolls a rollout back, so a value ``json`` cannot encode (an
    ``inf`` e-value, a datetime, an enum) must not abort the rollback: non-finite floats
    become ``"inf"``/``"nan"``, enums their values, datetimes ISO text, sets sorted lists and
    anything else its ``str()``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    return str(value)


def _write(value: JSONValue, out: list[str], *, path: str, depth: int, indent: int | None) -> None:
    if depth > MAX_DEPTH:
        raise InvalidSpecError(f"{path}: nested deeper than {MAX_DEPTH} levels; flatten the spec")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, int | float | Decimal):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidSpecError(
                f"{path}: {value!r} is not allowed; JSON has no NaN or Infinity; "
                "use a number or null"
            )
        if isinstance(value, Decimal) and not value.is_finite():
            raise InvalidSpecError(f"{path}: {value} is not allowed; use a finite number or null")
        out.append(format_number(value))
    elif isinstance(value, Mapping):
        _write_object(value, out, path=path, depth=depth, indent=indent)
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        _write_array(value, out, path=path, depth=depth, indent=indent)
    else:
        kind = type(value).__name__
        raise InvalidSpecError(
            f"{path}: a {kind} value is not JSON; quote it as a string"
            + (" (YAML reads unquoted dates as dates)" if kind in {"date", "datetime"} else "")
        )


def _write_object(
    value: Mapping[Any, Any], out: list[str], *, path: str, depth: int, indent: int | None
) -> None:
    for key in value:
        if not isinstance(key, str):
            raise InvalidSpecError(f"{path}: key {key!r} is not a string; quote it")
    if not value:
        out.append("{}")
        return
    pad, inner = _pads(indent, depth)
    out.append("{")
    for i, key in enumerate(sorted(value)):
        if i:
            out.append(",")
        out.append(inner)
        out.append(json.dumps(key, ensure_ascii=False))
        out.append(": " if indent is not None else ":")
        _write(value[key], out, path=f"{path}.{key}", depth=depth + 1, indent=indent)
    out.append(pad + "}")


def _write_array(
    value: Sequence[Any], out: list[str], *, path: str, depth: int, indent: int | None
) -> None:
    if not value:
        out.append("[]")
        return
    pad, inner = _pads(indent, depth)
    out.append("[")
    for i, item in enumerate(value):
        if i:
            out.append(",")
        out.append(inner)
        _write(item, out, path=f"{path}[{i}]", depth=depth + 1, indent=indent)
    out.append(pad + "]")


def _pads(indent: int | None, depth: int) -> tuple[str, str]:
    if indent is None:
        return "", ""
    return "\n" + " " * (indent * depth), "\n" + " " * (indent * (depth + 1))
