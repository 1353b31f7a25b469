"""Reading the ledger: runs with their totals, one run's breakdown and data-quality notes, usage per group
and period. Everything is summed from the hourly buckets at read time; nothing derived is stored.

A bucket `hour` holds the samples in (hour, hour + 3600]; a range [from, to) takes the buckets whose hour
starts in it (ranges are whole hours).
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, FromClause, RowMapping, Table, case, distinct, func, literal, select

from carbonwatch.errors import ConfigError
from carbonwatch.ledger import schema
from carbonwatch.ledger.rows import (
    ComponentRow,
    NodeRow,
    Quality,
    ResetRow,
    RunDetail,
    RunPage,
    RunRow,
    SegmentRow,
    Totals,
)

LIVE = 300.0  # a run without a pushed status is `running` while it had a sample this recently
RUN_SCOPES = ("user", "project", "model", "team")
GROUPS = RUN_SCOPES + ("run", "zone", "node")
MAX_LIMIT = 10000
ENERGY = ("run_energy", "node_energy")  # the resets shown (emissions counters reset with them)
rb, nb, runs = schema.run_buckets, schema.node_buckets, schema.runs
rd, nd = schema.run_days, schema.node_days


@dataclass(frozen=True)
class RunFilter:
    user: str | None = None
    project: str | None = None
    model: str | None = None
    team: str | None = None
    status: str | None = None
    zone: str | None = None
    node: str | None = None
    start: float | None = None  # runs active at or after
    end: float | None = None  # runs active before
    limit: int = 100
    offset: int = 0


def status_expr(cursor: float) -> ColumnElement[str]:
    return case((runs.c.status != "", runs.c.status), (runs.c.last_seen >= cursor - LIVE, "running"),
                else_="ended")  # fmt: skip


def _where(f: RunFilter, cursor: float) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [getattr(runs.c, k) == getattr(f, k) for k in RUN_SCOPES
                                        if getattr(f, k) is not None]  # fmt: skip
    if f.status is not None:
        where.append(status_expr(cursor) == f.status)
    if f.zone is not None:
        where.append(runs.c.run_id.in_(select(rb.c.run_id).where(rb.c.zone == f.zone)))
    if f.node is not None:
        where.append(runs.c.run_id.in_(select(rb.c.run_id).where(rb.c.instance == f.node)))
    if f.start is not None:
        where.append(func.coalesce(runs.c.end, runs.c.last_seen) >= f.start)
    if f.end is not None:
        where.append(func.coalesce(runs.c.start, runs.c.first_seen) < f.end)
    return where


def totals(conn: Connection, run_ids: list[str], start: float | None = None,
           end: float | None = None) -> dict[str, Totals]:
    """run_id -> energy_joules, emissions_grams, cost, estimated_joules (within [start, end) if given)."""
    out: dict[str, Totals] = {}
    for i in range(0, len(run_ids), 500):
        q = select(rb.c.run_id, func.sum(rb.c.energy_joules), func.sum(rb.c.emissions_grams), func.sum(rb.c.cost),
                   func.sum(rb.c.estimated_joules)).where(rb.c.run_id.in_(run_ids[i:i + 500]), *_hours(start, end))
        for r in conn.execute(q.group_by(rb.c.run_id)):
            out[r[0]] = {"energy_joules": r[1] or 0.0, "emissions_grams": r[2] or 0.0, "cost": r[3] or 0.0,
                         "estimated_joules": r[4] or 0.0}
    return out


def _hours(start: float | None, end: float | None, table: Table = rb) -> list[ColumnElement[bool]]:
    where = []
    if start is not None:
        where.append(table.c.hour >= int(start // 3600 * 3600))
    if end is not None:
        where.append(table.c.hour < end)
    return where


def run_row(r: RowMapping, cursor: float, tot: Totals | None) -> RunRow:
    """The row of a `runs` record (`row._mapping`) with its totals."""
    tot = tot or {"energy_joules": 0.0, "emissions_grams": 0.0, "cost": 0.0, "estimated_joules": 0.0}
    status = r["status"] or ("running" if r["last_seen"] >= cursor - LIVE else "ended")
    energy = tot["energy_joules"]
    return {
        "run_id": r["run_id"], "user": r["user"], "project": r["project"], "model": r["model"], "team": r["team"],
        "status": status, "start": r["start"] if r["start"] is not None else r["first_seen"],
        "end": r["end"] if r["end"] is not None else (None if status == "running" else r["last_seen"]),
        "energy_joules": energy, "emissions_grams": tot["emissions_grams"], "cost": tot["cost"],
        "currency": r["currency"], "budget_grams": r["budget_grams"], "samples": r["samples"],
        "epochs": r["epochs"], "estimated": tot["estimated_joules"] / energy if energy > 0 else 0.0,
    }


def list_runs(conn: Connection, f: RunFilter, cursor: float) -> RunPage:
    where = _where(f, cursor)
    total = int(conn.execute(select(func.count()).select_from(runs).where(*where)).scalar() or 0)
    q = select(runs).where(*where).order_by(func.coalesce(runs.c.start, runs.c.first_seen).desc(), runs.c.run_id)
    rows = list(conn.execute(q.limit(f.limit).offset(f.offset)))
    tot = totals(conn, [r.run_id for r in rows])
    nxt = f.offset + len(rows)
    return {"runs": [run_row(r._mapping, cursor, tot.get(r.run_id)) for r in rows], "total": total,
            "next_offset": nxt if nxt < total else None}


def one_run(conn: Connection, run_id: str, cursor: float) -> RunDetail | None:
    r = conn.execute(select(runs).where(runs.c.run_id == run_id)).first()
    if r is None:
        return None
    nodes = _nodes(conn, run_id)
    return {**run_row(r._mapping, cursor, totals(conn, [run_id]).get(run_id)),
            "labels": {k: r._mapping[k] for k in RUN_SCOPES}, "nodes": nodes,
            "components": _components(conn, run_id), "segments": _segments(conn, run_id),
            "quality": quality(conn, run_id, nodes)}


def _components(conn: Connection, run_id: str) -> list[ComponentRow]:
    return [
        {"component": c[0], "energy_joules": c[1], "emissions_grams": c[2], "estimated_joules": c[3]}
        for c in conn.execute(select(rb.c.component, func.sum(rb.c.energy_joules), func.sum(rb.c.emissions_grams),
                                     func.sum(rb.c.estimated_joules)).where(rb.c.run_id == run_id)
                              .group_by(rb.c.component).order_by(rb.c.component))]  # fmt: skip


def _segments(conn: Connection, run_id: str) -> list[SegmentRow]:
    sg = schema.segments
    return [{"instance": s.instance, "start": s.start, "end": s.end} for s in conn.execute(
        select(sg).where(sg.c.run_id == run_id).order_by(sg.c.start, sg.c.instance))]


def _nodes(conn: Connection, run_id: str) -> list[NodeRow]:
    s = schema.series
    times = {(t.instance, t.component): (t.first_time, t.last_time) for t in conn.execute(
        select(s.c.instance, s.c.component, s.c.first_time, s.c.last_time)
        .where(s.c.run_id == run_id, s.c.metric == "run_energy"))}
    q = select(rb.c.instance, rb.c.component, rb.c.zone, func.sum(rb.c.energy_joules),
               func.sum(rb.c.emissions_grams), func.sum(rb.c.estimated_joules)).where(rb.c.run_id == run_id)
    out: list[NodeRow] = []
    for n in conn.execute(q.group_by(rb.c.instance, rb.c.component, rb.c.zone).order_by(rb.c.instance,
                                                                                         rb.c.component)):
        first, last = times.get((n[0], n[1]), (None, None))
        out.append({"instance": n[0], "component": n[1], "zone": n[2], "energy_joules": n[3],
                    "emissions_grams": n[4], "estimated_joules": n[5], "first_sample": first, "last_sample": last})
    return out


def quality(conn: Connection, run_id: str, nodes: list[NodeRow]) -> Quality:
    est = conn.execute(select(rb.c.hour, func.sum(rb.c.estimated_joules)).where(
        rb.c.run_id == run_id, rb.c.estimated_joules > 0).group_by(rb.c.hour).order_by(rb.c.hour)).all()
    rs = schema.resets
    q = select(rs).where(rs.c.run_id == run_id, rs.c.metric.in_(ENERGY)).order_by(rs.c.time)
    resets: list[ResetRow] = [{"instance": x.instance, "component": x.component, "metric": x.metric, "time": x.time,
               "value_before": x.value_before, "value_after": x.value_after} for x in conn.execute(q)]
    notes = []
    if est:
        notes.append(f"{sum(e for _, e in est):.6g} J spread linearly over scrape gaps in {len(est)} hour(s)")
    for x in resets:
        notes.append(f"counter {x['metric']} of {x['component']} on {x['instance']} started again from 0 at "
                     f"{iso(x['time'])}; the {x['value_before']:.6g} it held before stays counted")
    if len({n["instance"] for n in nodes}) > 1:
        notes.append(f"ran on {len({n['instance'] for n in nodes})} nodes")
    return {"estimated_joules": sum(e for _, e in est), "estimated_hours": [h for h, _ in est],
            "counter_resets": resets, "notes": notes}


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def month_starts(start: float, end: float) -> list[int]:
    """Unix starts of the calendar months (UTC) overlapping [start, end)."""
    d = dt.datetime.fromtimestamp(max(start, 0), dt.timezone.utc)
    y, m = d.year, d.month
    out: list[int] = []
    while True:
        t = calendar.timegm((y, m, 1, 0, 0, 0))
        if out and t >= end:
            return out
        out.append(t)
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
        if len(out) > 1200:
            return out


def _period(hour: ColumnElement[int], period: str, start: float, end: float) -> ColumnElement[int]:
    if period == "day":
        day: ColumnElement[int] = hour - hour % 86400
        return day
    if period == "month":
        starts = month_starts(start, end)
        if len(starts) == 1:
            return literal(starts[0])
        whens = [(hour < nxt, literal(s)) for s, nxt in zip(starts, starts[1:], strict=False)]
        return case(*whens, else_=literal(starts[-1]))
    if period == "all":
        return literal(0)
    raise ConfigError(f"period: {period!r} is not day or month")


def usage(conn: Connection, group_by: str, period: str, start: float | None,
          end: float | None) -> list[dict[str, object]]:
    """Rows per group and period: energy, emissions, cost, estimated energy, runs. Whole-day ranges (the
    default: every day held) read the day rollups, others the hour buckets."""
    if group_by not in GROUPS:
        raise ConfigError(f"group_by: {group_by!r} is not one of {', '.join(GROUPS)}")
    lo = start if start is not None else _edge_hour(conn, first=True) // 86400 * 86400
    hi = end if end is not None else -(-(_edge_hour(conn, first=False) + 3600) // 86400) * 86400
    days = lo % 86400 == 0 and hi % 86400 == 0 and group_by != "node"
    lo = lo // 3600 * 3600  # the hour holding `from` (a no-op for whole days)
    node = group_by in ("zone", "node")
    table = (nd if days else nb) if node else (rd if days else rb)
    if node:
        col = table.c.zone if group_by == "zone" else table.c.instance
        src: FromClause = table
    else:
        col = table.c.run_id if group_by == "run" else getattr(runs.c, group_by)
        src = table if group_by == "run" else table.join(runs, table.c.run_id == runs.c.run_id)
    t = table.c.day if days else table.c.hour
    per = _period(t, period, lo, hi).label("period")
    q = select(col.label("g"), per, func.sum(table.c.energy_joules), func.sum(table.c.emissions_grams),
               func.sum(table.c.cost), func.sum(table.c.estimated_joules)).select_from(src)
    q = q.where(t >= lo, t < hi).group_by(col, per).order_by(per, col)
    counts = _run_counts(conn, group_by, period, lo, hi, days)
    currency = ",".join(sorted({r.currency for r in conn.execute(select(schema.prices.c.currency))} - {""}))
    return [{group_by: r[0], "period": iso(r[1]) if period != "all" else None, "energy_joules": r[2] or 0.0,
             "emissions_grams": r[3] or 0.0, "cost": r[4] or 0.0, "currency": currency,
             "estimated_joules": r[5] or 0.0, "runs": counts.get((r[0], r[1]), 0)}
            for r in conn.execute(q)]


def _run_counts(conn: Connection, group_by: str, period: str, lo: float, hi: float,
                days: bool) -> dict[tuple[object, object], int]:
    table = rd if days and group_by != "node" else rb
    col = {"zone": table.c.zone, "node": rb.c.instance, "run": table.c.run_id}.get(group_by)
    src: FromClause = table
    if col is None:
        col = getattr(runs.c, group_by)
        src = table.join(runs, table.c.run_id == runs.c.run_id)
    t = table.c.day if table is rd else table.c.hour
    per = _period(t, period, lo, hi).label("period")
    q = select(col, per, func.count(distinct(table.c.run_id))).select_from(src).where(t >= lo, t < hi)
    return {(r[0], r[1]): int(r[2]) for r in conn.execute(q.group_by(col, per))}


def _edge_hour(conn: Connection, first: bool) -> float:
    """The first or last bucket hour held; 0 for an empty ledger."""
    edge = func.min if first else func.max
    found = [float(x) for x in (conn.execute(select(edge(t.c.hour))).scalar() for t in (rb, nb)) if x is not None]
    if not found:
        return 0.0
    return min(found) if first else max(found)


def export_runs(conn: Connection, start: float | None, end: float | None, cursor: float) -> list[RunRow]:
    """One row per run with energy in [start, end): labels, status, times, energy, emissions, cost."""
    ids = [r[0] for r in conn.execute(select(rb.c.run_id).distinct().where(*_hours(start, end)))]
    tot = totals(conn, ids, start, end)
    out: list[RunRow] = []
    for i in range(0, len(ids), 500):
        for r in conn.execute(select(runs).where(runs.c.run_id.in_(ids[i:i + 500]))):
            out.append(run_row(r._mapping, cursor, tot.get(r.run_id)))
    return sorted(out, key=lambda x: (x["start"] or 0, x["run_id"]))

