"""What /metrics serves, computed from the database after each sync (a scrape never touches the database):
per-run totals for runs running or ended within the window, per scope and period, counter resets and
estimates per instance, and the ledger's health.
"""

from __future__ import annotations

import calendar
import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, func, select

from carbonwatch.contracts import LEDGER_BY_NAME
from carbonwatch.ledger import queries, schema
from carbonwatch.ledger.rows import RunRow
from carbonwatch.ledger.sync import Health

SCOPES = ("user", "project", "team", "model", "zone")
PERIODS = ("day", "month", "1d", "30d")
rb, nb, runs = schema.run_buckets, schema.node_buckets, schema.runs


@dataclass
class Snapshot:
    runs: list[RunRow] = field(default_factory=list)  # run rows (queries.run_row) within the window
    components: list[tuple[str, str, float, float]] = field(default_factory=list)
    scopes: dict[str, dict[tuple[str, str], tuple[float, float]]] = field(default_factory=dict)
    resets: dict[str, tuple[int, float]] = field(default_factory=dict)  # instance -> (count, last time)
    estimated: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    computed_at: float = 0.0
    cursor: float | None = None  # what the figures include: /metrics serves it as the cursor


def period_starts(cursor: float) -> dict[str, int]:
    """The first bucket hour of each period ending at `cursor` (rolling periods: whole hours)."""
    d = dt.datetime.fromtimestamp(cursor, dt.timezone.utc)
    current = int(cursor // 3600 * 3600)
    if current == cursor:
        current -= 3600  # the bucket holding a sample exactly on the hour
    return {"day": calendar.timegm((d.year, d.month, d.day, 0, 0, 0)),
            "month": calendar.timegm((d.year, d.month, 1, 0, 0, 0)),
            "1d": current - 23 * 3600, "30d": current - (30 * 24 - 1) * 3600}


def compute(engine: Engine, cursor: float, window: float) -> Snapshot:
    snap = Snapshot(computed_at=time.time(), cursor=cursor)
    with engine.connect() as conn:
        live = conn.execute(select(runs).where(func.coalesce(runs.c.end, runs.c.last_seen) >= cursor - window)).all()
        ids = [r.run_id for r in live]
        tot = queries.totals(conn, ids)
        snap.runs = [queries.run_row(r._mapping, cursor, tot.get(r.run_id)) for r in live]
        for i in range(0, len(ids), 500):
            q = select(rb.c.run_id, rb.c.component, func.sum(rb.c.energy_joules), func.sum(rb.c.emissions_grams))
            snap.components += [(str(x[0]), str(x[1]), float(x[2] or 0), float(x[3] or 0)) for x in conn.execute(
                q.where(rb.c.run_id.in_(ids[i:i + 500])).group_by(rb.c.run_id, rb.c.component))]
        snap.scopes = _scopes(conn, cursor)
        rs = schema.resets
        snap.resets = {r[0]: (int(r[1]), float(r[2])) for r in conn.execute(
            select(rs.c.instance, func.count(), func.max(rs.c.time)).where(rs.c.metric.in_(queries.ENERGY))
            .group_by(rs.c.instance))}
        for table in (rb, nb):  # node counters where there are, else the runs' (node energy includes them)
            snap.estimated.update({r[0]: float(r[1] or 0.0) for r in conn.execute(
                select(table.c.instance, func.sum(table.c.estimated_joules)).group_by(table.c.instance))})
        for name in schema.COUNTED:
            snap.rows[name] = int(conn.execute(select(func.count()).select_from(schema.metadata.tables[name]))
                                  .scalar() or 0)
    return snap


def _scopes(conn: Connection, cursor: float) -> dict[str, dict[tuple[str, str], tuple[float, float]]]:
    starts = period_starts(cursor)
    lo = min(starts.values())
    out: dict[str, dict[tuple[str, str], tuple[float, float]]] = {s: {} for s in SCOPES}
    cols = [runs.c[s] for s in SCOPES if s != "zone"]
    sums = [func.sum(rb.c.energy_joules), func.sum(rb.c.emissions_grams)]
    for period, start in starts.items():
        q = select(*cols, *sums).select_from(rb.join(runs, rb.c.run_id == runs.c.run_id))
        for r in conn.execute(q.where(rb.c.hour >= start, rb.c.hour >= lo).group_by(*cols)):
            for i, scope in enumerate(s for s in SCOPES if s != "zone"):
                e, g = out[scope].get((r[i], period), (0.0, 0.0))
                out[scope][(r[i], period)] = (e + (r[4] or 0.0), g + (r[5] or 0.0))
        q = select(nb.c.zone, func.sum(nb.c.energy_joules), func.sum(nb.c.emissions_grams))
        for r in conn.execute(q.where(nb.c.hour >= start).group_by(nb.c.zone)):
            out["zone"][(r[0], period)] = (float(r[1] or 0.0), float(r[2] or 0.0))
    return out


def _g(name: str) -> GaugeMetricFamily:
    spec = LEDGER_BY_NAME[name]
    return GaugeMetricFamily(name, spec.help, labels=list(spec.labels))


class LedgerCollector(Collector):
    """Fresh families from the latest snapshot and health at each scrape."""

    def __init__(self, health: Health, database: str, version: str, schema_version: int) -> None:
        self.snapshot = Snapshot()
        self.health = health
        self.database, self.version, self.schema_version = database, version, schema_version

    def collect(self) -> Iterator[Metric]:
        yield from self._runs(self.snapshot)
        yield from self._scopes(self.snapshot)
        yield from self._health(self.snapshot)

    def _runs(self, s: Snapshot) -> Iterator[Metric]:
        fam = {n: _g(f"carbonwatch_ledger_run_{n}") for n in ("energy_joules", "emissions_grams", "cost",
                                                              "budget_grams", "component_energy_joules",
                                                              "component_emissions_grams")}  # fmt: skip
        for r in s.runs:
            labels = [r["run_id"], r["user"], r["project"], r["model"], r["team"], r["status"]]
            fam["energy_joules"].add_metric(labels, r["energy_joules"])
            fam["emissions_grams"].add_metric(labels, r["emissions_grams"])
            fam["cost"].add_metric([r["run_id"], r["currency"]], r["cost"])
            if r["budget_grams"] is not None:
                fam["budget_grams"].add_metric([r["run_id"]], r["budget_grams"])
        for run_id, component, e, g in s.components:
            fam["component_energy_joules"].add_metric([run_id, component], e)
            fam["component_emissions_grams"].add_metric([run_id, component], g)
        yield from fam.values()

    def _scopes(self, s: Snapshot) -> Iterator[Metric]:
        for scope in SCOPES:
            e, g = _g(f"carbonwatch_ledger_{scope}_energy_joules"), _g(f"carbonwatch_ledger_{scope}_emissions_grams")
            for (value, period), (je, gg) in sorted(s.scopes.get(scope, {}).items()):
                e.add_metric([value, period], je)
                g.add_metric([value, period], gg)
            yield e
            yield g

    def _health(self, s: Snapshot) -> Iterator[Metric]:
        h = self.health
        simple = {"carbonwatch_ledger_synced_until_timestamp_seconds": s.cursor,
                  "carbonwatch_ledger_last_sync_timestamp_seconds": h.last_sync,
                  "carbonwatch_ledger_sync_lag_seconds": None if s.cursor is None else time.time() - s.cursor,
                  "carbonwatch_ledger_sync_duration_seconds": h.duration,
                  "carbonwatch_ledger_schema_version": float(self.schema_version)}
        for name, value in simple.items():
            if value is not None:
                fam = _g(name)
                fam.add_metric([], value)
                yield fam
        spec = LEDGER_BY_NAME["carbonwatch_ledger_sync_errors"]
        errors = CounterMetricFamily(spec.name, spec.help, labels=[])
        errors.add_metric([], h.errors)
        yield errors
        rows = _g("carbonwatch_ledger_rows")
        for table, n in sorted(s.rows.items()):
            rows.add_metric([table], n)
        yield rows
        info = _g("carbonwatch_ledger_info")
        info.add_metric([self.database, self.version], 1)
        yield info
        spec = LEDGER_BY_NAME["carbonwatch_ledger_counter_resets"]
        resets = CounterMetricFamily(spec.name, spec.help, labels=["instance"])
        stamp = _g("carbonwatch_ledger_counter_reset_timestamp_seconds")
        for inst, (n, t) in sorted(s.resets.items()):
            resets.add_metric([inst], n)
            stamp.add_metric([inst], t)
        yield resets
        yield stamp
        est = _g("carbonwatch_ledger_estimated_joules")
        for inst, j in sorted(s.estimated.items()):
            est.add_metric([inst], j)
        yield est
