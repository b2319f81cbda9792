"""The one owner of a rollout's stored state: what it dumps, it parses back unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from policy_canary.controller._monitoring import ArmAggregate, Ledger
from policy_canary.controller._rows import Cursors
from policy_canary.controller._state import StoredState

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
numbers = st.one_of(st.integers(-(10**6), 10**6), finite, st.sampled_from([float("inf")]))
monitors = st.dictionaries(st.text(max_size=5), st.one_of(numbers, st.lists(numbers, max_size=3)))
aggregates = st.builds(
    ArmAggregate,
    requests=st.integers(0, 100),
    errors=st.integers(0, 100),
    latency_sum=finite.map(abs),
    latency_n=st.integers(0, 100),
)
ledgers = st.builds(
    Ledger,
    stages=st.dictionaries(
        st.sampled_from(["canary", "half"]), st.fixed_dictionaries({"stable": aggregates})
    ),
    alerted=st.sets(st.sampled_from(["errors", "latency"])),
    first_event_at=st.one_of(
        st.none(),
        st.integers(0, 10**6).map(
            lambda s: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=s)
        ),
    ),
)


@given(monitor=monitors, ledger=ledgers, events=st.integers(0, 10**9), fb=st.integers(0, 10**9))
def test_parse_inverts_dump(
    monitor: dict[str, object], ledger: Ledger, events: int, fb: int
) -> None:
    state = StoredState(monitor, ledger, Cursors(events, fb))
    back = StoredState.parse(state.dump(), state.cursors)
    assert back.ledger.to_dict() == ledger.to_dict()
    assert back.cursors == state.cursors
    # Non-finite numbers are spelled as strings, everything else round-trips exactly.
    assert back.monitor == json.loads(json.dumps(back.monitor))
    assert StoredState.parse(back.dump(), back.cursors).dump() == state.dump()
