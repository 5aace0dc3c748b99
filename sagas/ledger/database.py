"""The ledger's database edge: which server, the engine, migrations, and error translation.

``SAGAS_DATABASE_URL`` picks the server; unset, an embedded Postgres starts in the per-user data
directory (see ``embedded.py``). The schema is migrated on first use, under an advisory lock so
that two processes starting at once do not race. ``translate_db_errors`` is the one place where
SQLAlchemy and psycopg exceptions become ``LedgerError``.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError

from sagas.errors import ConfigurationError, LedgerError, LedgerUnavailableError
from sagas.retry import RetryPolicy
from sagas.settings import Settings

T = TypeVar("T")

_MIGRATION_LOCK_KEY = 0x5A6A5  # pg_advisory_lock key held while migrating
_MIGRATIONS = Path(__file__).parent / "migrations"
_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """``postgresql://`` or ``postgres://`` (optionally with a driver suffix) -> psycopg 3 URL."""
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigurationError("SAGAS_DATABASE_URL is not a valid URL") from exc
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigurationError("SAGAS_DATABASE_URL must be a postgresql:// URL")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return normalise_url(settings.database_url.get_secret_value())
    from sagas.ledger.embedded import embedded_server_url

    return normalise_url(embedded_server_url(settings.home / "pgdata"))


def engine_for(settings: Settings) -> Engine:
    """One engine per URL per process, with the schema migrated to head."""
    url = database_url(settings)
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(
                url,
                pool_size=10,
                max_overflow=20,
                pool_recycle=1800,
                # The most recently used connection first: it has the runner's statements
                # prepared (with generic plans) already; FIFO would spread them over ten.
                pool_use_lifo=True,
                connect_args={"connect_timeout": 10, "application_name": "arcadia-sagas"},
            )
            event.listen(engine, "checkout", _drop_if_server_hung_up)
            with translate_db_errors("connect to the ledger database"):
                upgrade_schema(engine)
            _engines[url] = engine
    return engine


def _drop_if_server_hung_up(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool checkout: hand out no connection the server has already closed, without a round trip.

    An idle connection has nothing to read. When the server ended it (a restart,
    ``pg_terminate_backend``, an idle timeout) it sent its goodbye and closed the socket, which is
    then readable: the pool drops that connection and opens a fresh one. This replaces
    ``pool_pre_ping``'s ``SELECT 1`` on every checkout, a round trip per ledger write.
    """
    if dbapi_connection.closed or dbapi_connection.broken:
        raise DisconnectionError("the ledger connection is closed")
    readable, _, _ = select.select([dbapi_connection.fileno()], [], [], 0)
    if readable:
        raise DisconnectionError("the database server closed this connection")


def dispose_engines(urls: Iterable[str] | None = None) -> None:
    """Close the pooled connections of the engines for ``urls`` (every engine when None) and forget
    them. Only for engines nothing will use again: one used after this opens a pool of its own that
    no one closes."""
    with _engines_lock:
        for url in list(_engines) if urls is None else [normalise_url(u) for u in urls]:
            engine = _engines.pop(url, None)
            if engine is not None:
                engine.dispose()


def upgrade_schema(engine: Engine, revision: str = "head") -> str | None:
    """Apply migrations up to ``revision``; returns the revision the database is at afterwards."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head and revision == "head":
            return head
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def autocommit_cursor(engine: Engine) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
    """A cursor (rows as dicts) on a pooled connection's own psycopg connection, in autocommit.

    For one-statement writes on the hot path: no BEGIN/COMMIT round trips and no SQLAlchemy
    statement machinery. The connection goes back to the pool as it came (autocommit off); one
    that broke is dropped from the pool.
    """
    pooled = engine.raw_connection()
    healthy = False
    try:
        conn: psycopg.Connection[Any] = pooled.driver_connection  # type: ignore[assignment]
        conn.autocommit = True
        try:
            with conn.cursor(row_factory=dict_row) as cursor:
                yield cursor
        finally:
            if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
                conn.autocommit = False
                healthy = True
    finally:
        if not healthy:
            pooled.invalidate()
        pooled.close()


# Reads outside a runner's lease wait this long for the ledger to come back (a failover, a restart).
READ_RECOVERY_SECONDS = 5.0


def while_ledger_recovers(fn: Callable[[], T], *, deadline: float) -> T:
    """``fn()``, tried again while the ledger is unreachable (a reset connection, a failover, a
    restart), for at most ``deadline`` seconds; then its LedgerUnavailableError. Any other ledger
    error (a constraint, a bad statement) is raised at once: trying again would not change it."""
    policy = RetryPolicy(
        on=LedgerUnavailableError,
        attempts=1_000,  # the deadline is the bound
        deadline=deadline,
        base_delay=0.05,
        max_delay=1.0,
    )
    return policy.run(fn)


@contextmanager
def translate_db_errors(doing: str) -> Iterator[None]:
    """Turn a database failure into a LedgerError that says what we were doing."""
    try:
        yield
    except psycopg.Error as exc:  # from the driver directly (``autocommit_cursor``)
        if isinstance(exc, psycopg.OperationalError):
            raise LedgerUnavailableError(
                f"could not {doing}: the ledger database is unreachable ({type(exc).__name__});"
                " check SAGAS_DATABASE_URL and that the server is up"
            ) from exc
        raise LedgerError(f"could not {doing}: {_first_line(exc)}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated or _is_connection_problem(exc):
            raise LedgerUnavailableError(
                f"could not {doing}: the ledger database is unreachable ({type(exc.orig).__name__});"
                " check SAGAS_DATABASE_URL and that the server is up"
            ) from exc
        raise LedgerError(f"could not {doing}: {_first_line(exc.orig)}") from exc
    except SQLAlchemyError as exc:
        raise LedgerError(f"could not {doing}: {_first_line(exc)}") from exc


def _is_connection_problem(exc: DBAPIError) -> bool:
    return isinstance(exc.orig, psycopg.OperationalError)


def _first_line(exc: object) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
