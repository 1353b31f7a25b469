"""Opening the ledger's database: URL checks, SQLite's pragmas (WAL, foreign keys, a busy timeout),
PostgreSQL through psycopg 3, and the numbered migrations that run at start-up.

`schema_version` holds the version the database is at. Each migration brings version N-1 to N inside one
transaction; a database at a version newer than this build knows is refused (an older binary must not write
into a schema it does not understand).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, Table, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

from carbonwatch.errors import ConfigError, NetworkError
from carbonwatch.ledger import schema

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite


def default_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return f"sqlite:///{os.path.join(base, 'carbonwatch', 'ledger.db')}"


def engine_url(url: str, what: str = "--database") -> str:
    """`url` with `postgresql://` mapped to psycopg 3; ConfigError for anything else than SQLite or PostgreSQL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{what}: {url!r} is not a database URL (use sqlite:///path/ledger.db or "
                          "postgresql://user:password@host:5432/dbname)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername != "sqlite":
            raise ConfigError(f"{what}: use plain sqlite:///path, not {parsed.drivername}")
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(f"{what}: {url!r} names no file; the ledger must be durable "
                              "(sqlite:///path/ledger.db, four slashes for an absolute path)")
        return parsed.render_as_string(hide_password=False)
    if backend == "postgresql":
        if parsed.drivername not in ("postgresql", "postgresql+psycopg"):
            raise ConfigError(f"{what}: the PostgreSQL driver is psycopg 3 (postgresql://...), "
                              f"not {parsed.drivername}")
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ConfigError(f"{what}: {parsed.drivername!r} is not supported; use sqlite:/// or postgresql://")


def redacted(url: str) -> str:
    """The URL as logs and /metrics may show it: no password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "?"


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at each checkpoint, never corrupt
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def connect(url: str, what: str = "--database") -> Engine:
    """An engine for `url` with the schema at the newest version (migrated if older)."""
    full = engine_url(url, what)
    parsed = make_url(full)
    if parsed.get_backend_name() == "sqlite":
        path = Path(str(parsed.database))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{what}: cannot create {path.parent}: {exc.strerror}") from None
        engine = create_engine(full, connect_args={"timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(full, pool_pre_ping=True, pool_size=4, max_overflow=4)
    try:
        migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        raise NetworkError(f"{what}: cannot open {redacted(full)}: {str(exc.orig).strip().splitlines()[0]}") \
            from None
    except SQLAlchemyError as exc:
        engine.dispose()
        raise ConfigError(f"{what}: {redacted(full)}: {type(exc).__name__}: {exc}") from None
    return engine


# ------------------------------------------------------------------------------------------- migrations


def _v1(conn: Connection) -> None:
    """The first schema: every table of schema.py as it was at version 1."""
    schema.metadata.create_all(conn)


# version -> the step that brings version-1 to it. Append; never edit a released step.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1}


def current_version(conn: Connection) -> int:
    """The database's schema version; 0 for an empty database."""
    if not inspect(conn).has_table("schema_version"):
        return 0
    value = conn.execute(select(schema.schema_version.c.version)).scalar()
    return int(value or 0)


def migrate(engine: Engine, target: int = schema.SCHEMA_VERSION) -> int:
    """Run every migration from the database's version to `target`, each in its own transaction. Returns
    the version reached. ConfigError when the database is newer than this build."""
    with engine.begin() as conn:
        version = current_version(conn)
    if version > max(MIGRATIONS):
        raise ConfigError(
            f"the ledger database is at schema version {version}, newer than this carbonwatch knows "
            f"({max(MIGRATIONS)}); run a newer carbonwatch, or restore a backup made with this one")
    for step in range(version + 1, target + 1):
        with engine.begin() as conn:
            if step == 1:
                MIGRATIONS[1](conn)
                conn.execute(schema.schema_version.insert().values(version=1))
                continue
            MIGRATIONS[step](conn)
            conn.execute(schema.schema_version.update().values(version=step))
    return max(version, target)


def dialect_insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT into `table`, with ON CONFLICT (SQLite and PostgreSQL share the method names)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    return sqlite_insert(table)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
