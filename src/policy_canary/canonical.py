"""Canonical JSON and content digests: the identity of a policy version.

The canonical form of a JSON value is unique: object keys sorted by code point, no
insignificant whitespace, UTF-8, and one normal form for every number (``1``, ``1.0`` and
``1.0e0`` all become ``1``; ``0.50`` becomes ``0.5``). NaN and Infinity are rejected. The sha256
of the canonical bytes is the version id.

:func:`jsonable` is the one conversion of arbitrary values into JSON data (what the trace,
incident bundles and alert payloads store).
Every value the canonical form accepts reads back exactly with :func:`loads`: a number whose
canonical spelling is integral becomes an ``int`` (integers of 21 digits or more are spelled
with an exponent, ``1.2345678901234567890123e+22``, which plain ``json.loads`` would round to a
float), any other number a ``float``. So a non-integral number must be a double: a
``Decimal`` with more digits than a double holds is refused, as is an integer of more than
:data:`MAX_INTEGER_DIGITS` digits (past Python's own limit for printing one).
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

#: Most digits an integral number may have (Python refuses to print longer ints by default).
MAX_INTEGER_DIGITS = 4300

JSONValue = Any  # a recursive JSON type buys nothing over Any at this boundary


def canonical_json(
    value: JSONValue, *, indent: int | None = None, max_depth: int = MAX_DEPTH
) -> str:
    """Return the canonical JSON text of ``value``; ``indent`` gives the pretty form used by diffs.

    Raises :class:`InvalidSpecError` naming the path of the first value that is not JSON
    (NaN, Infinity, a non-string key, a date, bytes, a lone surrogate, nesting deeper than
    ``max_depth`` ...). Documents that embed specs (incident bundles) pass a larger
    ``max_depth``.
    """
    parts: list[str] = []
    _write(value, parts, path="$", depth=0, indent=indent, max_depth=max_depth)
    return "".join(parts)


def loads(text: str) -> JSONValue:
    """Parse JSON text into the value whose canonical form it spells, exactly.

    Unlike ``json.loads``, integral numbers written with an exponent or a fraction
    (``1e+30``, ``2.0``) come back as exact ``int`` values, so
    ``canonical_json(loads(canonical_json(v))) == canonical_json(v)`` for every accepted ``v``.
    """
    return json.loads(text, parse_float=_exact_number)


def _exact_number(text: str) -> int | float:
    number = Decimal(text)
    if number == number.to_integral_value():
        return int(number)
    return float(text)


def digest(value: JSONValue, *, max_depth: int = MAX_DEPTH) -> str:
    """Return the sha256 hex digest of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value, max_depth=max_depth).encode("utf-8")).hexdigest()


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


def json_text(value: Any, **options: Any) -> str:
    """The sorted-keys JSON text of ``value``: json's own when it accepts ``value`` as it is.

    The controller writes every rollout's state and trace each tick, so plain JSON data is
    encoded as it is, with no copy and no walk over it first: json spells lists and tuples
    alike and keys that are numbers, booleans or None as JSON does (``1``, ``true``, ``null``).
    A value json refuses (a NaN, a datetime, a set, a key of another type, keys that cannot be
    sorted together) is spelled as :func:`jsonable` turns it.
    """
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False, **options)
    except (TypeError, ValueError):
        return json.dumps(jsonable(value), sort_keys=True, **options)


def _write(
    value: JSONValue, out: list[str], *, path: str, depth: int, indent: int | None, max_depth: int
) -> None:
    if depth > max_depth:
        raise InvalidSpecError(f"{path}: nested deeper than {max_depth} levels; flatten the spec")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        _check_text(value, path)
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, int | float | Decimal):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidSpecError(
                f"{path}: {value!r} is not allowed; JSON has no NaN or Infinity; "
                "use a number or null"
            )
        if isinstance(value, Decimal) and not value.is_finite():
            raise InvalidSpecError(f"{path}: {value} is not allowed; use a finite number or null")
        out.append(_exact_spelling(value, path))
    elif isinstance(value, Mapping):
        _write_object(value, out, path=path, depth=depth, indent=indent, max_depth=max_depth)
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        _write_array(value, out, path=path, depth=depth, indent=indent, max_depth=max_depth)
    else:
        kind = type(value).__name__
        raise InvalidSpecError(
            f"{path}: a {kind} value is not JSON; quote it as a string"
            + (" (YAML reads unquoted dates as dates)" if kind in {"date", "datetime"} else "")
        )


def _exact_spelling(value: int | float | Decimal, path: str) -> str:
    """The canonical spelling of ``value``, refusing numbers :func:`loads` cannot give back."""
    text = format_number(value)
    if isinstance(value, float):
        return text  # a double's shortest spelling reads back as that double
    number = Decimal(text)
    integral = number == number.to_integral_value()
    if integral and number.adjusted() >= MAX_INTEGER_DIGITS:
        raise InvalidSpecError(
            f"{path}: an integer of {number.adjusted() + 1:,} digits is too long; at most "
            f"{MAX_INTEGER_DIGITS:,} digits are allowed (store longer numbers as strings)"
        )
    if not integral and format_number(float(text)) != text:
        raise InvalidSpecError(
            f"{path}: {text} has more digits than a double holds, so it cannot be read back "
            "exactly; round it to 17 significant digits or store it as a string"
        )
    return text


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidSpecError(
            f"{path}: {text[exc.start]!r} is a lone surrogate, not a character; JSON text must be "
            "valid Unicode (write the character itself, or a surrogate pair)"
        ) from None


def _write_object(
    value: Mapping[Any, Any],
    out: list[str],
    *,
    path: str,
    depth: int,
    indent: int | None,
    max_depth: int,
) -> None:
    for key in value:
        if not isinstance(key, str):
            raise InvalidSpecError(f"{path}: key {key!r} is not a string; quote it")
        _check_text(key, path)
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
        _write(
            value[key],
            out,
            path=f"{path}.{key}",
            depth=depth + 1,
            indent=indent,
            max_depth=max_depth,
        )
    out.append(pad + "}")


def _write_array(
    value: Sequence[Any],
    out: list[str],
    *,
    path: str,
    depth: int,
    indent: int | None,
    max_depth: int,
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
        _write(item, out, path=f"{path}[{i}]", depth=depth + 1, indent=indent, max_depth=max_depth)
    out.append(pad + "]")


def _pads(indent: int | None, depth: int) -> tuple[str, str]:
    if indent is None:
        return "", ""
    return "\n" + " " * (indent * depth), "\n" + " " * (indent * (depth + 1))
