"""Fixtures of the ledger's tests: a database URL on SQLite and on PostgreSQL (a throwaway cluster)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ledger import postgres


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[postgres.Cluster]:
    why = postgres.available()
    if why:
        pytest.skip(why)
    cluster = postgres.Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    cluster: postgres.Cluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()
