"""flush() writes everything pending when it was called, even after a short batch failed."""

from __future__ import annotations

from _serving import POLICY, seed_policy, store_down
from policy_canary.clock import ManualClock
from policy_canary.serving._canary import Canary
from policy_canary.store import Store


def test_a_short_batch_left_in_flight_does_not_strand_the_rest(
    store: Store, clock: ManualClock
) -> None:
    seed_policy(store, clock)
    canary = Canary(store, clock=clock, background=False, batch_size=10)
    gate = canary.gate(POLICY)
    for i in range(3):
        gate.route(f"u{i}").record(latency_ms=1.0)
    with store_down(store):
        assert canary.flush() == 0  # the 3 stay in flight: a batch of 3, not 10
    for i in range(15):
        gate.route(f"v{i}").record(latency_ms=1.0)
    assert canary.flush() == 18  # was 13: two "batches" counted for 18 rows, the first short
    assert canary.stats().buffered == 0
    canary.close()
