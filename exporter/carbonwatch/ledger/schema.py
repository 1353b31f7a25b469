"""The ledger's tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL.

Raw facts only: hourly buckets per run, instance, component and zone (and per node), the runs' labels and
what their clients pushed, segments (a run's stretch on one node), counter resets, and the accumulation
state (each series' last raw value, the cursor) that is written in the same transaction as the buckets it
produced. Every period is summed from the buckets.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

SCHEMA_VERSION = 1  # the newest migration in migrations.MIGRATIONS

schema_version = Table("schema_version", metadata, Column("version", Integer, primary_key=True))

cursor = Table(
    "cursor", metadata,
    Column("source", String(200), primary_key=True),
    Column("synced_until", Float, nullable=False),  # every raw sample at or before it is in the buckets
    Column("updated_at", Float, nullable=False),
)

series = Table(
    "series", metadata,
    Column("key", String(700), primary_key=True),  # metric + identity labels (replica labels dropped)
    Column("metric", String(100), nullable=False),
    Column("run_id", Text, nullable=False),  # "" for node series
    Column("instance", String(300), nullable=False),
    Column("component", String(50), nullable=False),
    Column("last_value", Float, nullable=False),
    Column("last_time", Float, nullable=False),
    Column("first_time", Float, nullable=False),
)

def _bucket() -> tuple[Column[int] | Column[float], ...]:
    return (
        Column("hour", BigInteger, nullable=False),  # Unix seconds of the hour's start (UTC)
        Column("energy_joules", Float, nullable=False, default=0.0),
        Column("emissions_grams", Float, nullable=False, default=0.0),
        Column("estimated_joules", Float, nullable=False, default=0.0),  # the part spread over a scrape gap
        Column("estimated_grams", Float, nullable=False, default=0.0),
        Column("cost", Float, nullable=False, default=0.0),  # energy x the zone's price when it was synced
    )

run_buckets = Table(
    "run_buckets", metadata,
    Column("run_id", Text, nullable=False),
    Column("instance", String(300), nullable=False),
    Column("component", String(50), nullable=False),
    Column("zone", String(100), nullable=False),
    *_bucket(),
    PrimaryKeyConstraint("run_id", "instance", "component", "zone", "hour"),
)

node_buckets = Table(
    "node_buckets", metadata,
    Column("instance", String(300), nullable=False),
    Column("component", String(50), nullable=False),
    Column("zone", String(100), nullable=False),
    *_bucket(),
    PrimaryKeyConstraint("instance", "component", "zone", "hour"),
)

# Day rollups of the buckets above (day = the UTC day holding the bucket's hour), kept in the same transaction
# so a month's usage reads ~30 rows per run instead of ~2,000; store.rebuild_days makes them again from the
# buckets, which stay the facts.
run_days = Table(
    "run_days", metadata,
    Column("run_id", Text, nullable=False),
    Column("zone", String(100), nullable=False),
    Column("day", BigInteger, nullable=False),
    *_bucket()[1:],
    PrimaryKeyConstraint("run_id", "zone", "day"),
)

node_days = Table(
    "node_days", metadata,
    Column("instance", String(300), nullable=False),
    Column("zone", String(100), nullable=False),
    Column("day", BigInteger, nullable=False),
    *_bucket()[1:],
    PrimaryKeyConstraint("instance", "zone", "day"),
)

runs = Table(
    "runs", metadata,
    Column("run_id", Text, primary_key=True),
    Column("user", String(200), nullable=False, default=""),
    Column("project", String(200), nullable=False, default=""),
    Column("model", String(200), nullable=False, default=""),
    Column("team", String(200), nullable=False, default=""),
    Column("status", String(50), nullable=False, default=""),  # as pushed; "" when no client pushed one
    Column("label_origin", String(50), nullable=False, default=""),  # client or the exporter's origin
    Column("start", Float),  # pushed start, else the first sample
    Column("end", Float),  # pushed end
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("budget_grams", Float),
    Column("samples", Float),
    Column("epochs", Float),
    Column("currency", String(20), nullable=False, default=""),
)

segments = Table(
    "segments", metadata,
    Column("run_id", Text, nullable=False),
    Column("instance", String(300), nullable=False),
    Column("start", Float, nullable=False),
    Column("end", Float, nullable=False),
    PrimaryKeyConstraint("run_id", "instance", "start"),
)

resets = Table(
    "resets", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instance", String(300), nullable=False),
    Column("run_id", Text, nullable=False),
    Column("component", String(50), nullable=False),
    Column("metric", String(100), nullable=False),
    Column("time", Float, nullable=False),
    Column("value_before", Float, nullable=False),
    Column("value_after", Float, nullable=False),
)

zones = Table(
    "zones", metadata,
    Column("instance", String(300), primary_key=True),
    Column("zone", String(100), nullable=False),
)

prices = Table(
    "prices", metadata,
    Column("zone", String(100), primary_key=True),
    Column("currency", String(20), nullable=False),
    Column("price_per_kwh", Float, nullable=False),
)

COUNTED = ("runs", "run_buckets", "node_buckets", "run_days", "node_days", "series", "segments",
           "resets")  # carbonwatch_ledger_rows
