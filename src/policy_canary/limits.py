"""Bounds on what policy-canary accepts, shared by the layers that check them.

The serving path refuses a value at ``record()``; the monitors refuse the same value when
they meet it in a stored row (written by an older version, or by hand). Both read it here so
the two checks cannot drift apart.
"""

from __future__ import annotations

#: Largest magnitude of any recorded number (latency in ms, cost, custom metrics): far beyond
#: any real value, and small enough that the monitors' sums of squares stay finite.
MAX_MAGNITUDE = 1e15
