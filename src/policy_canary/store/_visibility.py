"""Which event and feedback ids a reader may pass: concurrent writers without a global lock.

The controller reads ``events`` (and ``feedback``) past an id cursor and moves the cursor to
the last id it read. PostgreSQL hands out ids (``nextval``) when rows are inserted but shows
them when their transaction commits, so with two writers a higher id can become visible while
a lower one is still in flight; a reader that moved past the higher id would never see the
lower. SQLite's write transactions are serial, so there its ids become visible in order.

Instead of making PostgreSQL's writers take turns, each writer *announces* where its ids will
start and the reader stops short of every announcement still held:

- **writer** (:func:`claim_floors`, the first statement of each write transaction): read the
  sequence's last handed-out value ``top`` and take a *shared* transaction-level advisory
  lock keyed ``(sequence oid, (top + 1) mod 2**32)``. Every id this transaction inserts is
  handed out later, so it is at least ``top + 1``: the floor. The lock is released when the
  transaction ends, after its rows became visible (PostgreSQL ends a transaction's
  visibility before it releases its locks).
- **reader** (:func:`visible_through`): first read ``S``, the sequence's last handed-out
  value, then the floors of every such lock held or awaited (``pg_locks``, one consistent
  view of the lock table). The horizon is ``min(S, smallest floor - 1)``; ids up to it are
  read, none above.

Why nothing is skipped. Take any id ``x <= H`` that some transaction ``T`` inserts. ``T``
took its floor lock before ``x`` was handed out, and ``x`` was handed out before the reader
read ``S`` (``x <= S``, and a sequence only grows), so the lock was taken before the reader
looked at the lock table. If ``T`` still held it then, its floor ``<= x <= H`` would be among
the floors and ``H`` would be below it: a contradiction. So ``T`` had ended: committed (its
rows are visible to every later statement) or rolled back (``x`` never appears). Ids above
``H`` are left for a later read, which computes a new horizon. A horizon stays valid after it
is computed, so one per tick serves every rollout of that tick.

Two more details keep this exact. The floor lock carries only 32 bits of the floor; the
reader takes the value nearest ``S`` with those bits, exact while a write transaction stays
open for fewer than 2**31 ids handed out by others (days of full ingest). Locks of other
schemas in the same database carry other sequences' oids and are ignored; an unrelated lock
that happens to carry our oid can only lower the horizon, never raise it.

Writers and readers of the previous protocol (one *exclusive* lock on
:data:`WRITER_LOCK` around every write) still interoperate: new writers also take that lock,
shared, and a new reader takes it shared while it computes the horizon, so an old writer in
flight is waited for and an old writer starting later hands out ids above ``S``. A reader of
the previous protocol relies on writers taking turns, so upgrade controllers before agents.

The price: a write transaction that stays open (a host cut off mid-batch) holds the horizon
back until PostgreSQL ends it, so the monitors see nothing newer meanwhile; other writers are
not held up (docs/operations.md, capacity planning).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

#: Advisory lock key ("pcev") of the previous protocol, now taken shared by everyone.
WRITER_LOCK = 0x70_63_65_76

_SPAN = 1 << 32
_HALF = 1 << 31

#: The (sequence, last handed-out value) of both id columns; 0 when none was handed out yet.
_TOPS = """
SELECT s.ev::oid::bigint, coalesce(pg_sequence_last_value(s.ev), 0),
       s.fb::oid::bigint, coalesce(pg_sequence_last_value(s.fb), 0)
FROM (SELECT pg_get_serial_sequence('events', 'id')::regclass AS ev,
             pg_get_serial_sequence('feedback', 'id')::regclass AS fb) AS s
"""


def _int4(value: str) -> str:
    """SQL turning a non-negative bigint expression into the int4 with its low 32 bits."""
    return f"(mod(({value}) + {_HALF}, {_SPAN}) - {_HALF})::int4"


#: The writer's one statement: the old protocol's lock (shared) and one floor per sequence.
#: Each floor's value is read in the argument of the call that locks it, so before the lock.
_CLAIM = f"""
SELECT pg_advisory_xact_lock_shared({WRITER_LOCK}),
       pg_advisory_xact_lock_shared({_int4("s.ev::oid::bigint")},
                                    {_int4("coalesce(pg_sequence_last_value(s.ev), 0) + 1")}),
       pg_advisory_xact_lock_shared({_int4("s.fb::oid::bigint")},
                                    {_int4("coalesce(pg_sequence_last_value(s.fb), 0) + 1")})
FROM (SELECT pg_get_serial_sequence('events', 'id')::regclass AS ev,
             pg_get_serial_sequence('feedback', 'id')::regclass AS fb) AS s
"""

_FLOORS = """
SELECT classid::bigint, objid::bigint FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND classid IN (%(ev)s, %(fb)s)
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclass(frozen=True, slots=True)
class Horizon:
    """The highest event and feedback ids a reader may pass now; None: no bound (SQLite)."""

    events: int | None = None
    feedback: int | None = None


def claim_floors(conn: Connection) -> None:
    """Announce where this write transaction's ids start (call before inserting; PostgreSQL).

    A no-op on SQLite, whose write transactions are serial.
    """
    if conn.dialect.name == "sqlite":
        return
    conn.exec_driver_sql(_CLAIM)


def visible_through(conn: Connection) -> Horizon:
    """The ids up to which every row that will ever commit is visible to later statements.

    Read in a transaction of its own, before the rows (see the module's argument).
    """
    if conn.dialect.name == "sqlite":
        return Horizon()
    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock_shared({WRITER_LOCK})")
    ev_oid, ev_top, fb_oid, fb_top = conn.exec_driver_sql(_TOPS).one()
    floors = conn.exec_driver_sql(_FLOORS, {"ev": int(ev_oid), "fb": int(fb_oid)}).all()
    return Horizon(
        events=horizon(int(ev_top), [int(low) for oid, low in floors if oid == ev_oid]),
        feedback=horizon(int(fb_top), [int(low) for oid, low in floors if oid == fb_oid]),
    )


def horizon(top: int, floor_bits: list[int]) -> int:
    """``min(top, floor - 1)`` over the floors whose low 32 bits are ``floor_bits``.

    Each floor is the value nearest ``top`` with those bits (see the module's argument).
    """
    through = top
    for bits in floor_bits:
        offset = (bits - top) % _SPAN
        floor = top + (offset - _SPAN if offset >= _HALF else offset)
        through = min(through, floor - 1)
    return through
