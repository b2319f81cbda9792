"""The shared exponential backoff: exact doubling up to a cap, for any number of retries."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy_canary.clock import exponential_backoff

seconds = st.floats(min_value=1e-6, max_value=1e6)


@given(retry=st.integers(0, 200), first=seconds, extra=seconds)
def test_backoff_doubles_exactly_up_to_the_cap(retry: int, first: float, extra: float) -> None:
    cap = first + extra
    expected = min(Fraction(cap), Fraction(first) * 2**retry)
    assert Fraction(exponential_backoff(retry, first=first, cap=cap)) == expected


@given(retry=st.integers(0, 10**6), first=seconds, extra=seconds)
def test_backoff_never_passes_the_cap_nor_shrinks(retry: int, first: float, extra: float) -> None:
    cap = first + extra
    delay = exponential_backoff(retry, first=first, cap=cap)
    assert first <= delay <= cap
    assert exponential_backoff(retry + 1, first=first, cap=cap) >= delay


def test_backoff_survives_a_store_down_for_ever_and_refuses_negative_retries() -> None:
    assert exponential_backoff(10**9, first=1.0, cap=60.0) == 60.0
    assert exponential_backoff(3, first=0.0, cap=60.0) == 0.0
    with pytest.raises(ValueError, match="retry counts from 0"):
        exponential_backoff(-1, first=1.0, cap=60.0)
