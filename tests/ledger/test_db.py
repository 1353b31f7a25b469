"""Opening the database: URL checks, migrations from every older version, a newer schema refused."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, inspect, select, text

from carbonwatch.errors import ConfigError, NetworkError
from carbonwatch.ledger import db, schema


def test_urls_are_checked_and_postgresql_maps_to_psycopg(tmp_path):
    assert db.engine_url("postgresql://u:p@h:5/d") == "postgresql+psycopg://u:p@h:5/d"
    assert db.engine_url(f"sqlite:///{tmp_path}/x.db").startswith("sqlite:///")
    for bad, says in (("mysql://h/d", "not supported"), ("nonsense", "not a database URL"),
                      ("sqlite://", "names no file"), ("sqlite:///:memory:", "names no file"),
                      ("postgresql+psycopg2://h/d", "psycopg 3")):
        with pytest.raises(ConfigError, match=says):
            db.engine_url(bad)


def test_unreachable_postgresql_is_a_network_error_naming_it():
    from tests.support import free_port
    with pytest.raises(NetworkError, match=r"cannot open postgresql\+psycopg://u:\*\*\*@127.0.0.1"):
        db.connect(f"postgresql://u:secret@127.0.0.1:{free_port()}/x")


def test_empty_database_migrates_to_the_newest_version(database_url):
    engine = db.connect(database_url)
    with engine.connect() as conn:
        assert db.current_version(conn) == schema.SCHEMA_VERSION
        assert set(schema.metadata.tables) <= set(inspect(conn).get_table_names())
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


@pytest.mark.parametrize("version", sorted(db.MIGRATIONS))
def test_every_older_version_opens_and_keeps_its_rows(database_url, version):
    """A database left at each released version opens with its rows intact and ends at the newest."""
    engine = create_engine(db.engine_url(database_url))
    db.migrate(engine, target=version)
    with engine.begin() as conn:
        conn.execute(schema.runs.insert().values(run_id="old", first_seen=1.0, last_seen=2.0, user="u",
                                                 project="", model="", team="", status="", label_origin="",
                                                 currency=""))
    engine.dispose()
    engine = db.connect(database_url)
    with engine.connect() as conn:
        assert db.current_version(conn) == schema.SCHEMA_VERSION
        assert conn.execute(select(schema.runs.c.user).where(schema.runs.c.run_id == "old")).scalar() == "u"
    engine.dispose()


def test_a_newer_schema_is_refused_with_a_clear_error(database_url):
    engine = db.connect(database_url)
    with engine.begin() as conn:
        conn.execute(schema.schema_version.update().values(version=schema.SCHEMA_VERSION + 7))
    engine.dispose()
    with pytest.raises(ConfigError, match=f"schema version {schema.SCHEMA_VERSION + 7}, newer than this"):
        db.connect(database_url)
