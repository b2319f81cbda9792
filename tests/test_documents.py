"""Strict YAML/JSON loading: locations on every error, no duplicate keys, bounded expansion."""

from __future__ import annotations

import re

import pytest

from policy_canary.documents import load_document
from policy_canary.errors import InputError, InvalidSpecError
from policy_canary.settings import DEFAULT_MAX_SPEC_BYTES, Settings


def test_values_and_locations_are_returned() -> None:
    loaded = load_document("a: 1\nb:\n  c: [x, y]\n", source="f.yaml")
    assert loaded.value == {"a": 1, "b": {"c": ["x", "y"]}}
    assert loaded.where(("b", "c", 1)) == "f.yaml:3:10"
    assert loaded.where(("b", "missing")) == "f.yaml:3:3"


def test_duplicate_keys_are_refused_with_their_location() -> None:
    with pytest.raises(InputError, match=r"f.yaml:3:3: duplicate key 'x'"):
        load_document("a:\n  x: 1\n  x: 2\n", source="f.yaml")


def test_merge_keys_are_resolved() -> None:
    loaded = load_document("base: &b {x: 1}\nchild:\n  <<: *b\n  y: 2\n", source="f.yaml")
    assert loaded.value["child"] == {"x": 1, "y": 2}


def test_alias_bombs_are_refused() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 8):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lines.append(
            f"{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]"
        )
    with pytest.raises(InputError, match="more than"):
        load_document("\n".join(lines), source="bomb.yaml")


def test_the_error_class_is_the_callers() -> None:
    with pytest.raises(InvalidSpecError, match=r"x.json:1:\d+: malformed JSON"):
        load_document("{oops", source="x.json", error=InvalidSpecError, fmt="json")
    with pytest.raises(InvalidSpecError, match="duplicate key 'a'"):
        load_document('{"a": 1, "a": 2}', source="x.json", error=InvalidSpecError, fmt="json")


def test_non_string_keys_are_refused() -> None:
    with pytest.raises(InputError, match="key 1 is not a string"):
        load_document("1: one\n", source="f.yaml")


def test_settings_read_the_environment() -> None:
    assert Settings.from_env({}) == Settings(db_url=None, max_spec_bytes=DEFAULT_MAX_SPEC_BYTES)
    env = {"POLICY_CANARY_DB": "x.db", "POLICY_CANARY_MAX_SPEC_BYTES": "2048"}
    assert Settings.from_env(env) == Settings(db_url="x.db", max_spec_bytes=2048)
    with pytest.raises(InputError, match="not a whole number"):
        Settings.from_env({"POLICY_CANARY_MAX_SPEC_BYTES": "lots"})
    with pytest.raises(InputError, match="positive"):
        Settings.from_env({"POLICY_CANARY_MAX_SPEC_BYTES": "0"})


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("c: !!python/object/apply:os.system [ls]\n", "!!python/object/apply:os.system"),
        ("x: !!python/name:os.system\n", "!!python/name:os.system"),
        ("s: !!set {a, b}\n", "!!set"),
        ("o: !!omap [a: 1]\n", "!!omap"),
        ("b: !!binary aGk=\n", "!!binary"),
        ("c: !custom [1, 2]\n", "!custom"),
        ("d: !custom {a: 1}\n", "!custom"),
    ],
)
def test_unknown_yaml_tags_are_refused_not_dropped(text: str, tag: str) -> None:
    with pytest.raises(
        InputError, match=rf"f.yaml:1:4: YAML tag '{re.escape(tag)}' is not allowed"
    ):
        load_document(text, source="f.yaml")


def test_standard_tags_still_read_as_json_values() -> None:
    text = "a: !!str 5\nb: !!int '7'\nc: !!map {x: !!seq [1]}\nd: !!null ''\n"
    assert load_document(text, source="f.yaml").value == {
        "a": "5",
        "b": 7,
        "c": {"x": [1]},
        "d": None,
    }
