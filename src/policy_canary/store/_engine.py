"""Opening a store: URL resolution, engine set-up per backend, migrations, transactions."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, exc, select
from sqlalchemy.engine import URL, make_url

from policy_canary.errors import (
    ConflictError,
    InputError,
    StoreError,
    StoreUnavailableError,
    first_line,
)
from policy_canary.store._sqlite import WriteQueue, sqlite_engine
from policy_canary.store.schema import ROUTING_KEY, store_state

if TYPE_CHECKING:
    # Alembic loads only when a migration has to run, psycopg's LISTEN support only on
    # PostgreSQL: an agent on SQLite starts without either.
    from alembic.config import Config

    from policy_canary.store._notify import ChangeListener

#: The embedded default: a SQLite file in the working directory.
DEFAULT_DB_URL = "sqlite:///policy-canary.db"
#: The one environment variable that chooses the database.
ENV_VAR = "POLICY_CANARY_DB"

_MIGRATIONS = Path(__file__).parent / "migrations"
#: The newest migration's revision. Opening a store at this revision skips Alembic entirely;
#: ``tests/store/test_store.py`` checks it against the migrations folder.
SCHEMA_HEAD = "0006"
# Arbitrary constant key: serialises concurrent migrations on PostgreSQL.
_MIGRATION_LOCK = 0x70_63_6D_69  # "pcmi"


def resolve_db_url(url: str | None = None) -> str:
    """Return the database URL: the argument, else ``$POLICY_CANARY_DB``, else the default."""
    return normalize_url(url or os.environ.get(ENV_VAR) or DEFAULT_DB_URL)


def normalize_url(url: str) -> str:
    """Accept a bare file path (SQLite) and plain ``postgresql://`` URLs (psycopg 3)."""
    if "://" not in url:
        return f"sqlite:///{url}"
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (exc.ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)  # unparseable: still mask it


class Store:
    """A database holding policy-canary's state; the only object that talks SQL.

    Use :meth:`open`; :meth:`begin` yields a connection in a write transaction (on SQLite an
    ``IMMEDIATE`` one, so two writers serialise instead of failing halfway), :meth:`read` a
    connection for consistent reads.
    """

    def __init__(self, engine: Engine, url: str, *, writes: WriteQueue | None = None) -> None:
        self.engine = engine
        self.url = url
        #: SQLite: the queue its writers take turns in (``_sqlite.WriteQueue``).
        self.writes = writes
        #: True when :meth:`open` created the database file (first use of a new SQLite path).
        self.created = False

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @classmethod
    def open(cls, url: str | None = None, *, migrate: bool = True) -> Store:
        """Open (and by default migrate) the store at ``url``; see :func:`resolve_db_url`.

        Raises :class:`StoreUnavailableError` when the database cannot be reached or the file
        is not a database. A SQLite file is created only here, only with ``migrate`` and only
        where none exists (:attr:`created` says so); an open store never creates one, and
        reports a deleted or replaced file as unavailable (``_sqlite.py``).
        """
        resolved = resolve_db_url(url)
        parsed = _parse_url(resolved)
        backend = parsed.get_backend_name()
        created = False
        writes = None
        if backend == "sqlite":
            engine, created, writes = sqlite_engine(resolved, parsed.database, create=migrate)
        elif backend == "postgresql":
            _check_postgres_url(parsed)
            engine = _engine(
                parsed,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=10,
                connect_args=postgres_connect_defaults(parsed),
            )
        else:
            raise StoreUnavailableError(
                f"unsupported database {backend!r} in {safe_url(resolved)}; "
                "policy-canary stores state in SQLite or PostgreSQL"
            )
        store = cls(engine, resolved, writes=writes)
        store.created = created
        try:
            with store.read() as conn:
                conn.exec_driver_sql("SELECT 1")
            if migrate and store.current_revision() != SCHEMA_HEAD:
                store.upgrade()
        except StoreUnavailableError:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    # -- transactions ---------------------------------------------------------------------

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """Yield a connection inside a write transaction, committed on normal exit."""
        # On SQLite the connection is opened before the write turn is taken (opening one costs
        # more than half a millisecond; the next writer's turn should not wait for it).
        turn = self.writes.turn() if self.writes is not None else nullcontext()
        with self._errors(), self.engine.connect() as conn, turn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """Yield a connection for reads (a deferred transaction, rolled back at the end)."""
        with (
            self._errors(),
            self.engine.connect().execution_options(pc_read=True) as conn,
            conn.begin(),
        ):
            yield conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (exc.OperationalError, exc.ProgrammingError) as error:
            text = str(error.orig)
            if "no such table" in text or ("relation" in text and "does not exist" in text):
                raise StoreError(
                    f"the database at {safe_url(self.url)} lacks policy-canary's tables (not "
                    f"migrated, or opened with migrate=False): {first_line(error)}; run "
                    "'policy-canary db upgrade'"
                ) from error
            if isinstance(error, exc.ProgrammingError):
                raise
            raise StoreUnavailableError(
                f"the store at {safe_url(self.url)} is unavailable: {first_line(error)}; "
                "check that the database is running and the URL is right"
            ) from error
        except exc.InterfaceError as error:
            raise StoreUnavailableError(
                f"the store at {safe_url(self.url)} is unavailable: {first_line(error)}; "
                "check that the database is running and the URL is right"
            ) from error
        except exc.DatabaseError as error:
            if "not a database" in str(error.orig):
                raise StoreUnavailableError(
                    f"{safe_url(self.url)} is not a policy-canary database (the file is not "
                    "SQLite); point --db at a new or existing store"
                ) from error
            if isinstance(error, exc.IntegrityError | exc.ProgrammingError):
                raise
            raise StoreError(f"the store refused the operation: {first_line(error)}") from error

    # -- migrations -----------------------------------------------------------------------

    def _alembic(self, conn: Connection) -> Config:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        cfg.attributes["connection"] = conn
        return cfg

    def upgrade(self) -> str | None:
        """Apply pending migrations (idempotent, safe to run from several processes)."""
        from alembic import command

        with self.begin() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            try:
                command.upgrade(self._alembic(conn), "head")
            except (exc.OperationalError, exc.ProgrammingError) as error:
                if "already exists" not in str(error.orig):
                    raise
                raise ConflictError(
                    f"the database at {safe_url(self.url)} already holds tables policy-canary did "
                    f"not create ({first_line(error)}); give policy-canary a database (or a "
                    "PostgreSQL schema, ?options=-csearch_path%3DNAME) of its own"
                ) from error
        return self.current_revision()

    def current_revision(self) -> str | None:
        """Return the schema revision the database is at (``None`` for an empty database)."""
        try:
            with self.read() as conn:
                rev = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except StoreError:  # no alembic_version table: nothing was ever migrated here
            return None
        return None if rev is None else str(rev)

    def head_revision(self) -> str | None:
        """Return the newest schema revision this version of policy-canary knows."""
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(_MIGRATIONS))
        head: str | None = ScriptDirectory.from_config(cfg).get_current_head()
        return head

    # -- change counter -------------------------------------------------------------------

    def bump_epoch(self, conn: Connection, key: str = ROUTING_KEY) -> int:
        """Increment a change counter inside the caller's transaction; return its new value.

        Gates poll the ``routing`` counter cheaply to learn that a routing table changed; on
        PostgreSQL its bumps are also announced with NOTIFY, delivered to listeners
        (:meth:`listen`) when the transaction commits.
        """
        updated = conn.execute(
            store_state.update()
            .where(store_state.c.key == key)
            .values(value=store_state.c.value + 1)
            .returning(store_state.c.value)
        ).scalar_one_or_none()
        value = 1 if updated is None else int(updated)
        if updated is None:
            conn.execute(store_state.insert().values(key=key, value=value))
        if key == ROUTING_KEY and self.dialect == "postgresql":
            from policy_canary.store._notify import notify_routing

            notify_routing(conn, value)
        return value

    def read_epoch(self, conn: Connection, key: str = ROUTING_KEY) -> int:
        """Return the current value of a change counter (0 if it was never bumped)."""
        value = conn.execute(
            select(store_state.c.value).where(store_state.c.key == key)
        ).scalar_one_or_none()
        return int(value or 0)

    @property
    def can_listen(self) -> bool:
        """Whether routing changes are pushed (PostgreSQL through psycopg 3), see :meth:`listen`."""
        return self.dialect == "postgresql" and self.engine.dialect.driver == "psycopg"

    def listen(self) -> ChangeListener:
        """Open a dedicated connection that waits for routing changes of this store.

        PostgreSQL only (:attr:`can_listen`); the caller closes it. Raises
        :class:`StoreUnavailableError` when the database cannot be reached.
        """
        if not self.can_listen:
            raise StoreError(
                f"{self.dialect} through {self.engine.dialect.driver} cannot push routing "
                "changes; they are polled (LISTEN/NOTIFY needs PostgreSQL through psycopg 3)"
            )
        from policy_canary.store._notify import ChangeListener

        try:
            with self._errors():
                return ChangeListener.open(self.engine)
        except exc.SQLAlchemyError as error:  # e.g. the pool timed out
            raise StoreUnavailableError(
                f"cannot listen for routing changes at {safe_url(self.url)}: {first_line(error)}"
            ) from error


_URL_FORMS = "use sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DATABASE"


def _parse_url(url: str) -> URL:
    """Parse a database URL; a malformed one is an :class:`InputError` saying what to write."""
    try:
        parsed = make_url(url)
        parsed.get_dialect()  # an unknown driver ("postgresql+nope") fails here
    except exc.NoSuchModuleError:
        raise InputError(
            f"{safe_url(url)!r} names a database driver policy-canary does not know; {_URL_FORMS}"
        ) from None
    except (exc.ArgumentError, ValueError) as error:  # ValueError: port 'abc', '[::1'
        raise InputError(
            f"{safe_url(url)!r} is not a database URL ({error}); {_URL_FORMS}"
        ) from None
    if parsed.get_dialect().is_async:
        raise InputError(
            f"{safe_url(url)!r} names the asyncio driver {parsed.get_driver_name()!r}; "
            "policy-canary needs a synchronous one: postgresql+psycopg://..."
        )
    return parsed


#: libpq connection parameters set unless the URL sets them. ``tcp_user_timeout`` (ms)
#: abandons a connection whose sent data went unacknowledged that long: after a network
#: partition a query in flight fails instead of waiting out TCP's retransmissions (up to a
#: quarter of an hour), so the SDK reconnects as soon as the network is back.
POSTGRES_CONNECT_DEFAULTS = {"connect_timeout": 5, "tcp_user_timeout": 10_000}


def postgres_connect_defaults(url: URL) -> dict[str, Any]:
    """The defaults above, less those the URL's query gives (the URL wins)."""
    return {k: v for k, v in POSTGRES_CONNECT_DEFAULTS.items() if k not in url.query}


def _check_postgres_url(url: URL) -> None:
    if url.port is not None and not 0 < url.port < 65536:
        raise InputError(
            f"{url.render_as_string(hide_password=True)!r}: port {url.port} is not a TCP port "
            "(1-65535; PostgreSQL listens on 5432 by default)"
        )
    # Without a database name libpq falls back to the user's name ("postgres"), and the
    # store would migrate the server's maintenance database.
    if not url.database and "dbname" not in url.query:
        raise InputError(
            f"{url.render_as_string(hide_password=True)!r} names no database; add one after "
            "the host, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/policy_canary"
        )


def _engine(url: URL, **kwargs: Any) -> Engine:
    try:
        return create_engine(url, **kwargs)
    except ImportError as error:  # the URL names a driver that is not installed
        raise InputError(
            f"the database driver {url.get_driver_name()!r} is not installed ({error}); "
            f"{_URL_FORMS} (psycopg 3 comes with policy-canary)"
        ) from None
