"""Where the rejected set of a one-dimensional family of tests ends: the bounds' bisection.

A confidence bound is the edge of the nulls a test rejects. When the rejected set is one
interval reaching from ``far`` towards ``near`` (the log e-value is monotone along the way),
:func:`rejection_edge` finds its edge by bisection.
"""

from __future__ import annotations

from collections.abc import Callable

#: Halvings of the search range: 2**-48 of it, past what any bound is reported to.
STEPS = 48


def rejection_edge(rejected: Callable[[float], bool], near: float, far: float) -> float | None:
    """The rejected value nearest to ``near``, within 2**-48 of the range (from the far side).

    ``None`` when even ``far`` is not rejected; ``near`` itself when it already is.
    """
    if not rejected(far):
        return None
    if rejected(near):
        return near
    for _ in range(STEPS):
        middle = 0.5 * (near + far)
        if rejected(middle):
            far = middle
        else:
            near = middle
    return far
