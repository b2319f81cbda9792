"""Canonical JSON: one text per value, whatever the key order, whitespace or number spelling."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import _json_values as _json
from policy_canary.canonical import (
    MAX_INTEGER_DIGITS,
    canonical_json,
    digest,
    format_number,
    json_text,
    jsonable,
    loads,
)
from policy_canary.errors import InvalidSpecError

json_scalars = _json.json_scalars(
    text=20, integers=st.integers() | st.integers(min_value=-(10**400), max_value=10**400)
)
json_values = _json.json_values(json_scalars, key_text=10, width=5, leaves=30)


def _shuffle_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shuffle_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_shuffle_keys(v) for v in value]
    return value


@given(json_values)
def test_canonical_form_ignores_key_order(value: Any) -> None:
    assert canonical_json(_shuffle_keys(value)) == canonical_json(value)


@given(json_values)
def test_canonical_form_ignores_whitespace_and_round_trips(value: Any) -> None:
    pretty = json.dumps(value, indent=4)
    assert canonical_json(json.loads(pretty)) == canonical_json(value)
    # The canonical text parses back to a value with the same canonical text.
    assert canonical_json(loads(canonical_json(value))) == canonical_json(value)


@given(json_values)
def test_every_accepted_value_reads_back_exactly(value: Any) -> None:
    text = canonical_json(value)
    back = loads(text)
    assert canonical_json(back) == text
    # What the CLI prints with --json (and writes into an export) reads back the same again.
    assert canonical_json(json.loads(json.dumps(back))) == text


@given(st.integers())
def test_integers_of_any_accepted_size_come_back_as_the_same_int(n: int) -> None:
    back = loads(canonical_json({"x": n}))["x"]
    assert type(back) is int
    assert back == n


@given(st.decimals(allow_nan=False, allow_infinity=False, places=None))
def test_decimals_are_either_read_back_exactly_or_refused(d: Decimal) -> None:
    as_double = Decimal(format_number(float(d)))
    if d != d.to_integral_value() and as_double != d:
        with pytest.raises(InvalidSpecError, match="more digits than a double holds"):
            canonical_json(d)
        return
    assert Decimal(format_number(loads(canonical_json(d)))) == d


def test_a_decimal_more_precise_than_a_double_is_refused() -> None:
    with pytest.raises(
        InvalidSpecError, match=r"\$\.x: 0\.12345678901234567890123 has more digits"
    ):
        canonical_json({"x": Decimal("0.12345678901234567890123")})
    assert canonical_json({"x": Decimal("0.25")}) == '{"x":0.25}'


def test_integers_longer_than_the_limit_are_refused_with_their_path() -> None:
    assert loads(canonical_json([10 ** (MAX_INTEGER_DIGITS - 1)])) == [
        10 ** (MAX_INTEGER_DIGITS - 1)
    ]
    with pytest.raises(InvalidSpecError, match=r"\$\[0\]: an integer of 4,301 digits"):
        canonical_json([10**MAX_INTEGER_DIGITS])


@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_integral_numbers_have_one_spelling(n: int) -> None:
    spellings = {canonical_json(n), canonical_json(float(n)), canonical_json(Decimal(n))}
    assert spellings == {str(n)}


@given(st.integers())
def test_integers_of_any_size_keep_their_exact_value(n: int) -> None:
    assert Decimal(format_number(n)) == n


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_spelling_round_trips_exactly(x: float) -> None:
    text = format_number(x)
    assert float(text) == x or (x == 0 and float(text) == 0)
    assert format_number(float(text)) == text


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (1.0, "1"),
        (-0.0, "0"),
        (0.5, "0.5"),
        (1e-9, "1e-9"),
        (1.5e300, "1.5e+300"),
        (100, "100"),
        (10**21, "1e+21"),
        (1e21, "1e+21"),
        (10**25 + 1, "1.0000000000000000000000001e+25"),
    ],
)
def test_number_normal_form_examples(number: float, text: str) -> None:
    assert format_number(number) == text


def test_same_value_spelled_differently_in_json_text_gets_same_digest() -> None:
    a = json.loads('{"b": 1.0, "a": [0.50, 1e2]}')
    b = json.loads('{ "a" : [0.5, 100] ,"b":1 }')
    assert digest(a) == digest(b)
    assert canonical_json(a) == '{"a":[0.5,100],"b":1}'


@given(json_values, json_values)
def test_distinct_values_get_distinct_digests(a: Any, b: Any) -> None:
    if canonical_json(a) != canonical_json(b):
        assert digest(a) != digest(b)
    else:
        assert digest(a) == digest(b)


def test_unicode_is_kept_as_utf8_not_escaped() -> None:
    assert canonical_json({"prompt": "héllo ✓"}) == '{"prompt":"héllo ✓"}'


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_rejected_with_their_path(bad: float) -> None:
    with pytest.raises(InvalidSpecError, match=r"\$\.limits\.temperature"):
        canonical_json({"limits": {"temperature": bad}})


def test_non_string_keys_and_non_json_values_are_rejected() -> None:
    with pytest.raises(InvalidSpecError, match="not a string"):
        canonical_json({1: "x"})
    with pytest.raises(InvalidSpecError, match="quote it"):
        canonical_json({"x": b"bytes"})


def test_pathologically_deep_nesting_is_rejected() -> None:
    value: Any = "leaf"
    for _ in range(100):
        value = [value]
    with pytest.raises(InvalidSpecError, match="nested deeper"):
        canonical_json(value)


class _Colour(StrEnum):
    RED = "red"


odd_scalars = json_scalars | st.sampled_from(
    [math.inf, -math.inf, math.nan, _Colour.RED, datetime(2026, 1, 1, tzinfo=UTC), b"x"]
)
odd_values = st.recursive(
    odd_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.frozensets(st.integers(0, 9), max_size=4)
        | st.dictionaries(st.text(max_size=10) | st.integers(0, 9), children, max_size=5)
    ),
    max_leaves=30,
)


@given(odd_values)
def test_jsonable_makes_any_value_strict_json_and_is_idempotent(value: Any) -> None:
    data = jsonable(value)
    text = json.dumps(data, allow_nan=False, sort_keys=True)
    assert json.loads(text) == data
    assert jsonable(data) == data


@given(json_values)
def test_jsonable_leaves_json_data_alone(value: Any) -> None:
    assert jsonable(value) == value


@given(json_values)
def test_json_text_spells_plain_json_data_as_json_and_jsonable_do(value: Any) -> None:
    assert json_text(value) == json.dumps(jsonable(value), sort_keys=True)
    assert json_text(value, separators=(",", ":")) == json.dumps(
        value, sort_keys=True, separators=(",", ":")
    )


@given(odd_values)
def test_json_text_reads_back_as_jsonable_s_copy_or_json_s_own(value: Any) -> None:
    # Whatever json refuses takes jsonable's way; what it accepts reads back as jsonable's copy
    # but for keys json spells itself (an int key 3 is "3" both ways).
    text = json_text(value)
    assert json.loads(text) == json.loads(json.dumps(jsonable(value), sort_keys=True))


def test_json_text_spells_what_json_refuses_as_jsonable_does() -> None:
    value = {"e": math.inf, "at": datetime(2026, 1, 1, tzinfo=UTC), "seen": {3, 1}, 2: "two"}
    assert json_text(value) == json.dumps(jsonable(value), sort_keys=True)
    assert json.loads(json_text(value)) == {
        "e": "inf", "at": "2026-01-01T00:00:00+00:00", "seen": [1, 3], "2": "two"
    }  # fmt: skip
