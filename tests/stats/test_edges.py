"""The bisection every confidence bound shares finds the edge of the rejected interval."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from policy_canary.stats.edges import STEPS, rejection_edge

ENDS = st.floats(min_value=-50.0, max_value=50.0, allow_nan=False)


@given(near=ENDS, far=ENDS, where=st.floats(min_value=0.0, max_value=1.0))
@example(near=1.0, far=9.467217551990437e-76, where=1.0)  # edge rounds to 0.0, beyond far
def test_the_edge_is_rejected_and_within_the_resolution_of_the_true_edge(
    near: float, far: float, where: float
) -> None:
    edge = near + where * (far - near)  # rejected: from ``edge`` on, towards ``far``
    # Rounding can put ``edge`` just beyond an end (1 + (tiny - 1) is 0.0); the test means
    # an edge inside [near, far], so clamp it there.
    edge = min(max(edge, min(near, far)), max(near, far))
    towards_far = 1.0 if far >= near else -1.0

    def rejected(x: float) -> bool:
        return (x - edge) * towards_far >= 0.0

    found = rejection_edge(rejected, near, far)
    assert found is not None
    assert rejected(found)
    assert abs(found - edge) <= abs(far - near) * 2.0**-STEPS * 2 + 1e-12


def test_nothing_rejected_is_none_and_a_rejected_near_end_is_itself() -> None:
    assert rejection_edge(lambda x: False, 0.0, 1.0) is None
    assert rejection_edge(lambda x: True, 0.25, 1.0) == 0.25
    assert rejection_edge(lambda x: x >= 0.5, 0.0, 1.0) == 0.5  # exact on a dyadic edge
