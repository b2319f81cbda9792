"""Hypothesis strategies for JSON data: scalars, and documents nested from them."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy


def json_scalars(*, text: int, integers: SearchStrategy[int] | None = None) -> SearchStrategy[Any]:
    """null, booleans, integers (``integers``, default any), finite floats, short text."""
    return (
        st.none()
        | st.booleans()
        | (st.integers() if integers is None else integers)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=text)
    )


def json_values(
    scalars: SearchStrategy[Any], *, key_text: int, width: int, leaves: int
) -> SearchStrategy[Any]:
    """Arrays and objects (``width`` members at most, keys of ``key_text`` characters)."""
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=width)
            | st.dictionaries(st.text(max_size=key_text), inner, max_size=width)
        ),
        max_leaves=leaves,
    )
