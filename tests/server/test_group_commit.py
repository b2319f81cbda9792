"""Event batches that arrive while a commit runs are committed together, each answered after it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from policy_canary.errors import StoreUnavailableError
from policy_canary.registry import Registry
from policy_canary.server._remote_events import GroupCommit
from policy_canary.serving._direct import StoreLink
from policy_canary.serving._link import EventRow, FeedbackRow, FeedbackWrite
from policy_canary.serving._outcomes import outcome
from policy_canary.store import Store
from policy_canary.store.schema import events

AT = datetime(2026, 1, 1, tzinfo=UTC)


def _rows(digest: str, prefix: str, n: int) -> list[EventRow]:
    tail = outcome(5.0, False, 0.5, (), None, None, None, None, None)
    return [
        (f"{prefix}-{i}", "support-agent", None, "stable", digest, None, 0, 1, True, AT, *tail)
        for i in range(n)
    ]


class _HeldLink(StoreLink):
    """A real link whose first write waits until the test lets it go; counts writes."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []
        self.fail_with: Exception | None = None

    def write(
        self, rows: Sequence[EventRow], fb_rows: Sequence[FeedbackRow], *, retry: bool
    ) -> FeedbackWrite:
        if not self.batches and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30), "the test never released the first commit"
        self.batches.append(len(rows))
        if self.fail_with is not None:
            raise self.fail_with
        return super().write(rows, fb_rows, retry=retry)


def _stored(store: Store) -> list[str]:
    with store.read() as conn:
        return sorted(conn.execute(select(events.c.decision_id)).scalars())


def _wait_for_waiting(writer: GroupCommit, count: int) -> None:
    for _ in range(3_000_000):  # bounded: the threads only have to reach the queue
        with writer._changed:
            if len(writer._waiting) == count:
                return
    raise AssertionError(f"{count} batches never queued")


def _start(writer: GroupCommit, rows: list[EventRow], errors: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            writer.write(rows)
        except Exception as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_batches_waiting_behind_a_commit_share_the_next_one(store: Store) -> None:
    # Given a commit in progress (held) and two more batches arriving meanwhile
    digest = Registry(store).register("support-agent", {"p": 1}, author="t").version.id
    link = _HeldLink(store)
    writer = GroupCommit(link)
    errors: list[Any] = []
    first = _start(writer, _rows(digest, "a", 3), errors)
    assert link.entered.wait(30)
    later = [_start(writer, _rows(digest, p, 2), errors) for p in ("b", "c")]
    _wait_for_waiting(writer, 2)
    assert _stored(store) == []
    # When the first commit finishes
    link.release.set()
    for thread in (first, *later):
        thread.join(30)
    # Then the two waiting batches went in one transaction, and every row is stored
    assert errors == []
    assert link.batches == [3, 4]
    assert _stored(store) == sorted(
        [f"a-{i}" for i in range(3)] + [f"b-{i}" for i in range(2)] + [f"c-{i}" for i in range(2)]
    )


def test_a_failed_group_commit_fails_every_request_in_it(store: Store) -> None:
    # Given two batches waiting behind a held commit, and a store that then refuses
    digest = Registry(store).register("support-agent", {"p": 1}, author="t").version.id
    link = _HeldLink(store)
    writer = GroupCommit(link)
    errors: list[Any] = []
    first = _start(writer, _rows(digest, "a", 1), errors)
    assert link.entered.wait(30)
    later = [_start(writer, _rows(digest, p, 1), errors) for p in ("b", "c")]
    _wait_for_waiting(writer, 2)
    link.fail_with = StoreUnavailableError("the database is down")
    # When the commits run
    link.release.set()
    for thread in (first, *later):
        thread.join(30)
    # Then all three requests see the error, nothing is stored, and the writer still works
    assert len(errors) == 3
    assert all(isinstance(e, StoreUnavailableError) for e in errors)
    assert _stored(store) == []
    link.fail_with = None
    writer.write(_rows(digest, "d", 2))
    assert _stored(store) == ["d-0", "d-1"]


def test_a_repeated_batch_in_a_group_is_written_idempotently(store: Store) -> None:
    # Given rows already stored (an SDK retrying a batch whose answer it never saw)
    digest = Registry(store).register("support-agent", {"p": 1}, author="t").version.id
    writer = GroupCommit(StoreLink(store))
    writer.write(_rows(digest, "a", 2))
    # When the same rows come again together with new ones
    writer.write(_rows(digest, "a", 2) + _rows(digest, "b", 1))
    # Then each decision is stored once
    assert _stored(store) == ["a-0", "a-1", "b-0"]
