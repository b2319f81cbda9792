"""EventBatch: the columns the monitors fold say what MonitorEvent and observe() say."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_canary.errors import InvalidMetricError
from policy_canary.guardrails import ModelPrice
from policy_canary.monitoring import EventBatch, MonitorEvent
from policy_canary.monitoring._observations import observe

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PRICES = {"gpt-x": ModelPrice(input_usd_per_1m=2.5, output_usd_per_1m=10.0)}
METRICS = (
    "error", "latency_ms", "quality", "cost_usd", "safety_flags", "metrics.score",
    "metrics.ok", "unknown",
)  # fmt: skip

#: Values no SDK would have written, but another writer might have stored, by column.
BAD = {
    "arm": ["canary"], "traffic_bp": [10_001, -1], "latency_ms": [-1.0, math.nan, math.inf],
    "quality": [1.5, -0.1, math.nan], "flag_count": [-1], "cost_usd": [-0.5, math.nan],
    "input_tokens": [-3], "output_tokens": [-1], "metrics": ['{"score": NaN}', '{"ok": "yes"}'],
}  # fmt: skip


@st.composite
def stored_rows(draw: st.DrawFn) -> dict[str, list[Any]]:
    """Columns of event rows as a database returns them (flags and metrics as JSON text),
    sometimes with one value another writer might have stored."""
    n = draw(st.integers(0, 12))

    def column(strategy: st.SearchStrategy[Any]) -> list[Any]:
        return draw(st.lists(strategy, min_size=n, max_size=n))

    columns = {
        "arm": column(st.sampled_from(["stable", "candidate"])),
        "traffic_bp": column(st.sampled_from([0, 100, 5000, 10_000])),
        "at": [T0 + timedelta(seconds=i) for i in range(n)],
        "latency_ms": column(st.none() | st.floats(0, 1e6)),
        "error": column(st.sampled_from([None, 0, 1, True, False])),
        "quality": column(st.none() | st.floats(0, 1)),
        "safety_flags": column(
            st.sampled_from(["[]", '["critical"]', '["pii", "critical"]', '["pii"]', None])
        ),
        "flag_count": column(st.sampled_from([0, 0, 1, 3])),
        "cost_usd": column(st.none() | st.floats(0, 10)),
        "input_tokens": column(st.sampled_from([None, 0, 900])),
        "output_tokens": column(st.sampled_from([None, 210])),
        "model": column(st.sampled_from([None, "gpt-x", "other"])),
        "metrics": column(st.sampled_from(["{}", None, '{"score": 0.5}', '{"ok": true}'])),
    }
    if n and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(BAD)))
        columns[name][draw(st.integers(0, n - 1))] = draw(st.sampled_from(BAD[name]))
    return columns


def _one_by_one(columns: dict[str, list[Any]]) -> list[MonitorEvent]:
    """What MonitorEvent makes of each row, as the controller read rows before batches."""
    made = []
    for i in range(len(columns["at"])):
        flags, metrics, error = (columns[k][i] for k in ("safety_flags", "metrics", "error"))
        made.append(
            MonitorEvent(
                columns["arm"][i],
                columns["traffic_bp"][i],
                columns["at"][i],
                columns["latency_ms"][i],
                None if error is None else bool(error),
                columns["quality"][i],
                tuple(json.loads(flags)) if flags and flags != "[]" else (),
                columns["flag_count"][i],
                columns["cost_usd"][i],
                columns["input_tokens"][i],
                columns["output_tokens"][i],
                columns["model"][i],
                json.loads(metrics) if metrics and metrics != "{}" else {},
            )
        )
    return made


def _same(batch: EventBatch, made: list[MonitorEvent], metric: str) -> None:
    """Each event's observation of ``metric`` in the batch is observe()'s of the event."""
    flags = ("critical",) if metric == "safety_flags" else ()
    for restrict in ((), flags) if flags else ((),):
        numbers = batch.numbers(metric, PRICES, restrict)
        got = batch.values(metric, restrict) if numbers is None else numbers.tolist()
        expected = [observe(metric, e, PRICES, restrict) for e in made]
        for value, want in zip(got, expected, strict=True):
            if want is None:
                assert value is None or (isinstance(value, float) and math.isnan(value))
            else:
                assert value == pytest.approx(float(want))


@settings(max_examples=300, deadline=None)
@given(columns=stored_rows())
def test_a_batch_of_stored_rows_refuses_what_an_event_refuses_and_observes_the_same(
    columns: dict[str, list[Any]],
) -> None:
    # Given stored rows, some of them with values no SDK would have written
    try:
        made = _one_by_one(columns)
    except InvalidMetricError as exc:
        refused: Exception | None = exc
    else:
        refused = None
    # When the controller reads them as one batch
    if refused is not None:
        # Then a row MonitorEvent refuses makes the batch refused too, saying what is wrong
        with pytest.raises(InvalidMetricError) as caught:
            EventBatch.from_columns(**columns)
        assert str(caught.value).split(" ")[0] == str(refused).split(" ")[0]
        return
    batch = EventBatch.from_columns(**columns)
    # Then every metric a guardrail may read is what observe() reads from each event
    assert len(batch) == len(made)
    for metric in METRICS:
        _same(batch, made, metric)
    tripped = [
        None if e.flag_count and not e.safety_flags else
        tuple(f for f in e.safety_flags if f == "critical") for e in made
    ]  # fmt: skip
    seen, picks, names = batch.tripped(("critical",))
    assert seen == sum(t is not None for t in tripped)
    assert list(zip(picks, names, strict=True)) == [(i, t) for i, t in enumerate(tripped) if t]
    # and the batch gives back the same events
    assert list(batch) == made
    assert batch.requests() == len(made)


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(
        st.builds(
            MonitorEvent,
            arm=st.sampled_from(["stable", "candidate"]),
            traffic_bp=st.integers(0, 10_000),
            at=st.just(T0),
            latency_ms=st.none() | st.floats(0, 1e6),
            error=st.none() | st.booleans(),
            quality=st.none() | st.floats(0, 1),
            safety_flags=st.sampled_from([(), ("critical",), ("pii",)]),
            flag_count=st.integers(0, 3),
            cost_usd=st.none() | st.floats(0, 10),
            input_tokens=st.none() | st.integers(0, 10_000),
            output_tokens=st.none() | st.integers(0, 10_000),
            model=st.sampled_from([None, "gpt-x"]),
            metrics=st.sampled_from([{}, {"score": 0.25}, {"ok": False}]),
            feedback=st.booleans(),
        ),
        max_size=10,
    )
)
def test_a_batch_of_events_observes_what_each_event_does(events: list[MonitorEvent]) -> None:
    batch = EventBatch.of(events)
    for metric in METRICS:
        _same(batch, events, metric)
    assert list(batch) == events
    assert batch.requests() == sum(not e.feedback for e in events)


def test_a_nan_stored_where_a_value_may_be_absent_is_refused_not_read_as_absent() -> None:
    columns: dict[str, Any] = {
        "arm": ["stable", "stable"], "traffic_bp": [100, 100], "at": [T0, T0],
        "latency_ms": [None, math.nan], "error": [None, 0], "quality": [None, None],
        "safety_flags": ["[]", "[]"], "flag_count": [0, 0], "cost_usd": [None, None],
        "input_tokens": [None, None], "output_tokens": [None, None], "model": [None, None],
        "metrics": ["{}", "{}"],
    }  # fmt: skip
    with pytest.raises(InvalidMetricError, match="latency_ms must be a finite number >= 0"):
        EventBatch.from_columns(**columns)
    columns["latency_ms"] = [None, 12.5]
    batch = EventBatch.from_columns(**columns)
    assert np.isnan(batch.latency_ms[0])
    assert batch.latency_ms[1] == 12.5


@pytest.mark.parametrize(
    ("column", "stored", "message"),
    [
        ("safety_flags", "pii,critical", "safety_flags of a stored event is not JSON"),
        ("safety_flags", '{"pii": 1}', "safety_flags must be a list of flag names"),
        ("metrics", "{score: 1}", "metrics of a stored event is not JSON"),
        ("metrics", "[1, 2]", "metrics must be an object"),
    ],
)
def test_a_stored_json_column_that_does_not_parse_is_refused_naming_it(
    column: str, stored: str, message: str
) -> None:
    columns: dict[str, Any] = {
        "arm": ["stable"], "traffic_bp": [100], "at": [T0], "latency_ms": [None],
        "error": [None], "quality": [None], "safety_flags": ["[]"], "flag_count": [0],
        "cost_usd": [None], "input_tokens": [None], "output_tokens": [None], "model": [None],
        "metrics": ["{}"], column: [stored],
    }  # fmt: skip
    with pytest.raises(InvalidMetricError, match=message):
        EventBatch.from_columns(**columns)
