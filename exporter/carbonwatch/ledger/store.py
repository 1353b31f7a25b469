"""Writing one synced window into the database: the buckets it produced, the series' last raw values, the
runs' metadata, segments, resets and the cursor, all in ONE transaction. A crash anywhere before the commit
leaves the database as it was (the window is read again); after it, nothing of the window is read again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Connection, Engine, Insert, Table, Update, bindparam, func, select

from carbonwatch.contracts import JOULES_PER_KWH
from carbonwatch.errors import CarbonwatchError
from carbonwatch.ledger import schema
from carbonwatch.ledger.accumulate import SeriesState
from carbonwatch.ledger.db import dialect_insert

RunKey = tuple[str, str, str, str, int]  # run_id, instance, component, zone, hour
NodeKey = tuple[str, str, str, int]  # instance, component, zone, hour
DayKey = tuple[str, str, int]  # run_id or instance, zone, day
_Hourly = TypeVar("_Hourly", RunKey, NodeKey)
_Key = TypeVar("_Key", RunKey, NodeKey, DayKey)
Cell = list[float]  # energy J, emissions g, estimated J, estimated g
CURSOR = "prometheus"  # the one source today
RUN_FIELDS = ("user", "project", "model", "team", "status", "label_origin", "start", "end", "budget_grams",
              "samples", "epochs", "currency")
CHUNK_PARAMS = 500  # ids per IN (...) list


@dataclass(slots=True)
class SeriesRow:
    kind: str
    run_id: str
    instance: str
    component: str
    state: SeriesState


@dataclass
class Batch:
    """Everything one window adds; `until` becomes the cursor."""

    until: float
    run_cells: dict[RunKey, Cell] = field(default_factory=dict)
    node_cells: dict[NodeKey, Cell] = field(default_factory=dict)
    series: dict[str, SeriesRow] = field(default_factory=dict)
    resets: list[dict[str, object]] = field(default_factory=list)
    runs: dict[str, dict[str, object]] = field(default_factory=dict)  # run_id -> fields seen in the window
    seen: dict[tuple[str, str], tuple[float, float, float | None]] = field(default_factory=dict)
    zones: dict[str, str] = field(default_factory=dict)
    prices: dict[str, tuple[str, float]] = field(default_factory=dict)
    floor: float = 60.0  # the gap limit at least (accumulate's `floor`)
    spacings: list[float] = field(default_factory=list)  # seconds between samples of some series


Hook = Callable[[str], None]  # called between statements (tests raise in it to simulate a crash)


def _nohook(_: str) -> None:
    return None


def load_states(engine: Engine) -> dict[str, SeriesRow]:
    t = schema.series
    with engine.connect() as conn:
        return {r.key: SeriesRow(r.metric, r.run_id, r.instance, r.component,
                                 SeriesState(r.last_value, r.last_time, r.first_time))
                for r in conn.execute(select(t))}  # fmt: skip


def load_cursor(engine: Engine) -> float | None:
    with engine.connect() as conn:
        v = conn.execute(select(schema.cursor.c.synced_until).where(schema.cursor.c.source == CURSOR)).scalar()
    return None if v is None else float(v)


def load_prices(engine: Engine) -> dict[str, tuple[str, float]]:
    with engine.connect() as conn:
        return {r.zone: (r.currency, r.price_per_kwh) for r in conn.execute(select(schema.prices))}


def load_zones(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {r.instance: r.zone for r in conn.execute(select(schema.zones))}


class CursorMoved(CarbonwatchError):
    """The cursor in the database is not where this process left it: another ledger writes the same
    database. The window was rolled back; read the state again."""


def commit(engine: Engine, batch: Batch, now: float, hook: Hook = _nohook, previous: float | None = None) -> None:
    """Write `batch` and move the cursor from `previous` (None: no cursor yet) to `batch.until`, atomically.
    CursorMoved (nothing written) when the database's cursor is not `previous`."""
    with engine.begin() as conn:
        hook("begin")
        _move_cursor(conn, previous, batch.until, now)
        _zones_prices(conn, batch)
        hook("zones")
        _cells(conn, schema.run_buckets, ("run_id", "instance", "component", "zone", "hour"), batch.run_cells,
               batch.prices)
        hook("run_buckets")
        _cells(conn, schema.node_buckets, ("instance", "component", "zone", "hour"), batch.node_cells,
               batch.prices)
        hook("node_buckets")
        _cells(conn, schema.run_days, ("run_id", "zone", "day"), _days(batch.run_cells, (0, 3)), batch.prices)
        _cells(conn, schema.node_days, ("instance", "zone", "day"), _days(batch.node_cells, (0, 2)), batch.prices)
        hook("days")
        _series(conn, batch.series)
        hook("series")
        if batch.resets:
            conn.execute(schema.resets.insert(), batch.resets)
        _runs(conn, batch)
        hook("runs")
        _segments(conn, batch)
        hook("segments")
        hook("cursor")


def _move_cursor(conn: Connection, previous: float | None, until: float, now: float) -> None:
    """First statement of a window: moving the cursor row locks it (PostgreSQL) or the database (SQLite), so
    a second writer waits, then finds the cursor moved and rolls back instead of counting the window twice."""
    t = schema.cursor
    if previous is None:
        stmt: Insert | Update = dialect_insert(conn, t).values(
            source=CURSOR, synced_until=until, updated_at=now).on_conflict_do_nothing(index_elements=["source"])
    else:
        stmt = t.update().where(t.c.source == CURSOR, t.c.synced_until == previous).values(
            synced_until=until, updated_at=now)
    if len(conn.execute(stmt.returning(t.c.source)).all()) != 1:  # rowcount is -1 for some drivers
        raise CursorMoved("another ledger moved the cursor of this database (only one `ledger serve` may write "
                          "it); this one reads its state again")


def _upsert(conn: Connection, table: Table, keys: list[str], rows: Sequence[Mapping[str, object]],
            add: Iterable[str] = ()) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE (the columns in `add` are added to), one executemany. The SQL
    is the same on SQLite and PostgreSQL; it goes to the driver directly (SQLAlchemy's per-row parameter
    processing would be most of a large window's time)."""
    if rows:
        cols = list(rows[0])
        _upsert_tuples(conn, table, keys, cols, [tuple(r[c] for c in cols) for r in rows], add)


def _upsert_tuples(conn: Connection, table: Table, keys: list[str], cols: list[str],
                   rows: list[tuple[object, ...]], add: Iterable[str] = ()) -> None:
    """`_upsert` of rows given as tuples in the order of `cols` (a large window's rows are never dicts)."""
    if not rows:
        return
    add = set(add)
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sets = [f'"{c}" = "{table.name}"."{c}" + excluded."{c}"' if c in add else f'"{c}" = excluded."{c}"'
            for c in cols if c not in keys]  # fmt: skip
    names = ", ".join('"' + c + '"' for c in cols)
    conflict = ", ".join('"' + k + '"' for k in keys)
    action = "DO UPDATE SET " + ", ".join(sets) if sets else "DO NOTHING"
    sql = (f'INSERT INTO "{table.name}" ({names}) VALUES ({", ".join([mark] * len(cols))}) '
           f"ON CONFLICT ({conflict}) {action}")
    conn.exec_driver_sql(sql, rows)


def _zones_prices(conn: Connection, batch: Batch) -> None:
    _upsert(conn, schema.zones, ["instance"], [{"instance": i, "zone": z} for i, z in batch.zones.items()])
    _upsert(conn, schema.prices, ["zone"], [{"zone": z, "currency": c, "price_per_kwh": p}
                                            for z, (c, p) in batch.prices.items()])


def _cells(conn: Connection, table: Table, keys: tuple[str, ...], cells: dict[_Key, Cell],
           prices: dict[str, tuple[str, float]]) -> None:
    zone_at = keys.index("zone")
    values: list[str] = ["energy_joules", "emissions_grams", "estimated_joules", "estimated_grams", "cost"]
    rows: list[tuple[object, ...]] = []
    for key, cell in cells.items():
        price = prices.get(str(key[zone_at]), ("", 0.0))[1]
        rows.append(tuple(key) + (cell[0], cell[1], cell[2], cell[3], cell[0] / JOULES_PER_KWH * price))
    _upsert_tuples(conn, table, list(keys), list(keys) + values, rows, add=values)


def _days(cells: dict[_Hourly, Cell], keep: tuple[int, int]) -> dict[DayKey, Cell]:
    """`cells` summed per (key[keep[0]], key[keep[1]], UTC day of the hour)."""
    out: dict[DayKey, Cell] = {}
    for key, cell in cells.items():
        hour = key[-1]
        day = (str(key[keep[0]]), str(key[keep[1]]), hour - hour % 86400)
        held = out.get(day)
        if held is None:
            out[day] = list(cell)
        else:
            held[0] += cell[0]
            held[1] += cell[1]
            held[2] += cell[2]
            held[3] += cell[3]
    return out


def rebuild_days(engine: Engine) -> None:
    """Make the day rollups again from the hour buckets (after a correction of the buckets)."""
    cols = ("energy_joules", "emissions_grams", "estimated_joules", "estimated_grams", "cost")
    with engine.begin() as conn:
        for days, hours, keys in ((schema.run_days, schema.run_buckets, ("run_id", "zone")),
                                  (schema.node_days, schema.node_buckets, ("instance", "zone"))):
            conn.execute(days.delete())
            day = (hours.c.hour - hours.c.hour % 86400).label("day")
            q = select(*(hours.c[k] for k in keys), day, *(func.sum(hours.c[c]).label(c) for c in cols))
            conn.execute(days.insert().from_select([*keys, "day", *cols], q.group_by(*(hours.c[k] for k in keys),
                                                                                      day)))


def _series(conn: Connection, rows: dict[str, SeriesRow]) -> None:
    _upsert_tuples(conn, schema.series, ["key"],
                   ["key", "metric", "run_id", "instance", "component", "last_value", "last_time", "first_time"],
                   [(k, r.kind, r.run_id, r.instance, r.component, r.state.last_value, r.state.last_time,
                     r.state.first_time) for k, r in rows.items()])


def _existing_runs(conn: Connection, ids: list[str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    t = schema.runs
    for i in range(0, len(ids), CHUNK_PARAMS):
        for r in conn.execute(select(t).where(t.c.run_id.in_(ids[i:i + CHUNK_PARAMS]))):
            out[r.run_id] = dict(r._mapping)
    return out


def _runs(conn: Connection, batch: Batch) -> None:
    ids = sorted(set(batch.runs) | {r for r, _ in batch.seen})
    if not ids:
        return
    old = _existing_runs(conn, ids)
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for (run_id, _), (t0, t1, _prev) in batch.seen.items():
        first[run_id] = min(first.get(run_id, t0), t0)
        last[run_id] = max(last.get(run_id, t1), t1)
    rows = []
    for run_id in ids:
        row = old.get(run_id) or {"run_id": run_id, **{f: None for f in RUN_FIELDS}}
        row = merge_run(row, batch.runs.get(run_id, {}))
        seen0, seen1 = first.get(run_id), last.get(run_id)
        held0, held1 = _time(row.get("first_seen")), _time(row.get("last_seen"))
        first_seen = min(x for x in (held0, seen0, seen1) if x is not None) \
            if (held0, seen0) != (None, None) else batch.until
        row["first_seen"] = first_seen
        row["last_seen"] = max(x for x in (held1, seen1, first_seen) if x is not None)
        for f in ("user", "project", "model", "team", "status", "label_origin", "currency"):
            row[f] = row.get(f) or ""
        rows.append(row)
    _upsert(conn, schema.runs, ["run_id"], rows)


def _time(value: object) -> float | None:
    """A first/last-seen column as read back (a number, or None for a new run)."""
    return float(value) if isinstance(value, (int, float)) else None


def merge_run(row: Mapping[str, object], new: Mapping[str, object]) -> dict[str, object]:
    """The run's row with what the window saw: the client's labels win over an exporter's; an empty label
    never overwrites a known one; pushed numbers replace older ones."""
    row = dict(row)
    client = new.get("label_origin") == "client"
    held_client = row.get("label_origin") == "client"
    for f in ("user", "project", "model", "team"):
        v = new.get(f) or ""
        if v and (client or not held_client or not row.get(f)):
            row[f] = v
    if new.get("label_origin") and (client or not held_client):
        row["label_origin"] = new["label_origin"]
    for f in ("status", "start", "end", "budget_grams", "samples", "epochs", "currency"):
        if new.get(f) not in (None, ""):
            row[f] = new[f]
    return row


def _segments(conn: Connection, batch: Batch) -> None:
    """Extend each (run, node) stretch the window continues; start a new one after a break."""
    t = schema.segments
    if not batch.seen:
        return
    latest = {(r.run_id, r.instance): r.start for r in conn.execute(
        select(t.c.run_id, t.c.instance, func.max(t.c.start).label("start")).group_by(t.c.run_id, t.c.instance))}
    extend, new = [], []
    for (run_id, instance), (t0, t1, prev) in sorted(batch.seen.items()):
        start = latest.get((run_id, instance))
        if start is not None and prev is not None:
            extend.append({"r": run_id, "i": instance, "s": start, "e": t1})
        else:
            new.append({"run_id": run_id, "instance": instance, "start": t0, "end": t1})
    if extend:
        conn.execute(t.update().where((t.c.run_id == bindparam("r")) & (t.c.instance == bindparam("i"))
                                      & (t.c.start == bindparam("s"))).values(end=bindparam("e")), extend)
    _upsert(conn, t, ["run_id", "instance", "start"], new)
