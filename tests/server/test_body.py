"""JSON bodies parse to exactly what the standard library would give, or fail as it explains.

Given any JSON document, when the server parses it (pydantic-core's parser first, the
standard library's for errors and for what only it accepts), then the value equals
``json.loads``'s, type for type (an integer stays an integer, ``1.0`` a float, big integers
exact); NaN and Infinity, bad UTF-8, malformed JSON and absurd nesting are refused with a
message that says what to fix, and a lone surrogate escape or deep nesting still parses.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _json_values import json_scalars, json_values
from policy_canary.errors import InputError, UnsupportedMediaError
from policy_canary.server._body import parse_json

_VALUES = json_values(
    json_scalars(text=20, integers=st.integers(min_value=-(10**40), max_value=10**40)),
    key_text=8,
    width=5,
    leaves=40,
)


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 and 1.0 and True differ here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


@settings(max_examples=300)
@given(value=_VALUES, ascii_only=st.booleans(), indent=st.sampled_from([None, 2]))
def test_any_document_parses_to_what_the_standard_library_gives(
    value: Any, ascii_only: bool, indent: int | None
) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()
    assert _same(parse_json(raw, "application/json"), json.loads(raw))


@pytest.mark.parametrize(
    "text",
    ['{"a": 1, "a": 2}', '{"a": 1e400}', '{"a": -0.0}', '"\\u0000"', '{"x": 1E2, "y": 1.5e+3}',
     '[5e-324, 1.7976931348623157e308, 123456789012345678901234567890]', '  {"a": [] }  '],
)  # fmt: skip
def test_edge_cases_parse_as_the_standard_library_parses_them(text: str) -> None:
    assert _same(parse_json(text.encode(), "application/json"), json.loads(text))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"latency_ms": NaN}', "NaN is not a JSON number; send finite numbers only"),
        (b'{"latency_ms": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"a": "\xff"}', "the body is not UTF-8 (byte 7)"),
        (b'{"a": 1,\n "b": }', "not valid JSON: Expecting value at line 2 column 7"),
        (b'{"a": 1} x', "not valid JSON: Extra data at line 1 column 10"),
        (b"[" * 100_000 + b"]" * 100_000, "the body nests too deeply"),
    ],
)
def test_refused_bodies_say_what_to_fix(body: bytes, message: str) -> None:
    with pytest.raises(InputError) as raised:
        parse_json(body, "application/json")
    assert message in raised.value.message


def test_what_only_the_standard_library_accepts_still_parses() -> None:
    assert parse_json(b'{"a": "\\ud800"}', "application/json") == {"a": "\ud800"}
    deep = b"[" * 500 + b"]" * 500  # pydantic-core stops at 200 levels
    assert parse_json(deep, "application/json") == json.loads(deep)


def test_a_body_must_be_json_and_present() -> None:
    with pytest.raises(UnsupportedMediaError):
        parse_json(b"{}", "text/plain")
    with pytest.raises(InputError, match="needs a JSON body"):
        parse_json(b"", "application/json")
    assert parse_json(b"", "application/json", optional=True) == {}
