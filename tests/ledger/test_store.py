"""Writing windows transactionally: a crash between any two statements of a commit leaves the database as
it was, and building the window again from what the database holds counts every sample exactly once; on
SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from carbonwatch.ledger import db, queries, schema, store
from carbonwatch.ledger.source import Latest, RawSeries
from carbonwatch.ledger.sync import build_batch

H = 3600
T0 = 1_790_000_000 // H * H
POINTS = ("begin", "zones", "run_buckets", "node_buckets", "series", "runs", "segments", "cursor")


class Crash(Exception):
    pass


def window(start: float, end: float) -> tuple[list[RawSeries], dict[str, list[Latest]]]:
    """Two nodes' counters at 15 s: run `sweep/lr=3e-4&bs=64#2` at 2 J/s on each node, node counters 5 J/s
    (one node's run counter restarts from 0 at T0 + 1800)."""
    raw = []
    for inst in ("a:9860", "b:9860"):
        ts = [t for t in range(T0, T0 + 4 * H + 1, 15) if start < t <= end]
        run = [(float(t), 2.0 * (t - T0 - (1800 if inst == "b:9860" and t >= T0 + 1800 else 0))) for t in ts]
        raw.append(RawSeries(f"run_energy|{inst}", "run_energy", "sweep/lr=3e-4&bs=64#2", inst, "gpu", run))
        raw.append(RawSeries(f"run_emissions|{inst}", "run_emissions", "sweep/lr=3e-4&bs=64#2", inst, "gpu",
                             [(t, v / 10) for t, v in run]))
        raw.append(RawSeries(f"node_energy|{inst}", "node_energy", "", inst, "gpu",
                             [(float(t), 1e6 + 5.0 * (t - T0)) for t in ts]))
    latest = {"node_info": [Latest({"instance": "a:9860", "zone": "DE"}, 1),
                            Latest({"instance": "b:9860", "zone": "FR"}, 1)],
              "price": [Latest({"zone": "DE", "currency": "EUR"}, 0.3)],
              "run_info": [Latest({"run_id": "sweep/lr=3e-4&bs=64#2", "origin": "env", "user": "x"}, 1),
                           Latest({"run_id": "sweep/lr=3e-4&bs=64#2", "user": "ann", "project": "p",
                                   "status": "running"}, 1)],
              "budget": [Latest({"run_id": "sweep/lr=3e-4&bs=64#2"}, 50.0)]}
    return raw, latest


def sync_window(engine, start: float, end: float, hook=None) -> None:
    raw, latest = window(start, end)
    batch = build_batch(start, end, raw, latest, store.load_states(engine), store.load_zones(engine),
                        store.load_prices(engine))
    store.commit(engine, batch, end, hook or (lambda _: None), previous=store.load_cursor(engine))


def state(engine) -> tuple:
    with engine.connect() as conn:
        buckets = (conn.execute(select(func.sum(schema.run_buckets.c.energy_joules))).scalar(),
                   conn.execute(select(func.sum(schema.node_buckets.c.energy_joules))).scalar(),
                   conn.execute(select(func.count()).select_from(schema.runs)).scalar(),
                   conn.execute(select(func.count()).select_from(schema.segments)).scalar(),
                   conn.execute(select(func.count()).select_from(schema.resets)).scalar())
        series = sorted(conn.execute(select(schema.series.c.key, schema.series.c.last_time)).all())
        return tuple(buckets), series, store.load_cursor(engine)


@pytest.mark.parametrize("point", POINTS)
def test_a_crash_between_statements_loses_and_doubles_nothing(database_url, point):
    engine = db.connect(database_url)
    sync_window(engine, T0 - 1, T0 + H)
    before = state(engine)

    def crash(at: str) -> None:
        if at == point:
            raise Crash(at)

    with pytest.raises(Crash):
        sync_window(engine, T0 + H, T0 + 2 * H, crash)
    assert state(engine) == before  # nothing of the failed window was written
    sync_window(engine, T0 + H, T0 + 2 * H)  # the retry reads the same window again
    sync_window(engine, T0 + 2 * H, T0 + 4 * H)
    with engine.connect() as conn:
        run = queries.one_run(conn, "sweep/lr=3e-4&bs=64#2", T0 + 4 * H)
    assert run is not None
    # a: 0 -> 28800 J; b: 3570 J held before its counter started again from 0 at T0+1800, then 25200 J
    assert run["energy_joules"] == pytest.approx(2.0 * 4 * H + 2.0 * 1785 + 2.0 * (4 * H - 1800))
    assert run["emissions_grams"] == pytest.approx(run["energy_joules"] / 10)
    assert len(run["quality"]["counter_resets"]) == 1
    engine.dispose()


def test_windows_of_any_size_give_the_same_buckets(database_url, tmp_path):
    one = db.connect(database_url)
    sync_window(one, T0 - 1, T0 + 4 * H)
    other = db.connect(f"sqlite:///{tmp_path / 'other.db'}")
    edges = [T0 - 1, T0 + 7, T0 + 900, T0 + 1799, T0 + 1800, T0 + 5000, T0 + 4 * H]
    for a, b in zip(edges, edges[1:], strict=False):
        sync_window(other, a, b)
    rows = []
    for engine in (one, other):
        with engine.connect() as conn:
            t = schema.run_buckets
            rows.append(sorted(conn.execute(select(t.c.instance, t.c.hour, t.c.zone, t.c.energy_joules,
                                                   t.c.cost)).all()))
    assert [r[:3] for r in rows[0]] == [r[:3] for r in rows[1]]
    assert [r[3] for r in rows[0]] == pytest.approx([r[3] for r in rows[1]])
    assert sum(r[4] for r in rows[0]) == pytest.approx(2.0 * 4 * H / 3.6e6 * 0.3)  # only DE has a price


def test_run_metadata_client_labels_win_and_segments_per_node(database_url):
    engine = db.connect(database_url)
    sync_window(engine, T0 - 1, T0 + 2 * H)
    with engine.connect() as conn:
        run = queries.one_run(conn, "sweep/lr=3e-4&bs=64#2", T0 + 2 * H)
    assert run is not None
    assert (run["user"], run["project"], run["status"], run["budget_grams"]) == ("ann", "p", "running", 50.0)
    assert run["currency"] == "EUR"
    assert {(s["instance"], s["start"]) for s in run["segments"]} == {("a:9860", T0), ("b:9860", T0)}
    assert {n["zone"] for n in run["nodes"]} == {"DE", "FR"}
    engine.dispose()


def test_day_rollups_equal_the_buckets_they_are_rebuilt_from(database_url):
    """The day tables kept in each window's transaction are exactly what rebuilding them from the hour
    buckets gives, and usage over whole days (rollups) equals usage over the same hours (buckets)."""
    engine = db.connect(database_url)
    for a, b in ((T0 - 1, T0 + 700), (T0 + 700, T0 + 3 * H), (T0 + 3 * H, T0 + 4 * H)):
        sync_window(engine, a, b)

    def days():
        with engine.connect() as conn:
            return [sorted(tuple(r) for r in conn.execute(select(t))) for t in (schema.run_days, schema.node_days)]

    kept = days()
    store.rebuild_days(engine)
    rebuilt = days()
    for k, r in zip(kept, rebuilt, strict=True):
        assert [x[:3] for x in k] == [x[:3] for x in r]
        assert [x[3:] for x in k] == [pytest.approx(x[3:]) for x in r]
    day = T0 // 86400 * 86400
    assert T0 - day >= H  # the data does not start on the day: whole-day and from-1-s ranges hold the same
    with engine.connect() as conn:
        for group in ("user", "zone", "run"):
            whole = queries.usage(conn, group, "day", day, day + 86400)  # whole day: the rollups
            hours = queries.usage(conn, group, "day", day + 1, day + 86400)  # not whole: the buckets
            assert queries.usage(conn, group, "day", T0 + 1, day + 86400) == hours  # the hour holding `from`
            assert [r["energy_joules"] for r in whole] == pytest.approx([r["energy_joules"] for r in hours])
            assert [r["runs"] for r in whole] == [r["runs"] for r in hours]
    engine.dispose()


def test_a_second_writer_rolls_back_instead_of_counting_twice(database_url):
    """Two ledgers on one database: the one whose cursor is stale finds it moved, and its window is rolled
    back (the other's already counted those samples)."""
    engine = db.connect(database_url)
    sync_window(engine, T0 - 1, T0 + H)
    raw, latest = window(T0 + H, T0 + 2 * H)
    stale = build_batch(T0 + H, T0 + 2 * H, raw, latest, store.load_states(engine), {}, {})
    sync_window(engine, T0 + H, T0 + 2 * H)  # the other ledger got there first
    before = state(engine)
    with pytest.raises(store.CursorMoved, match="only one `ledger serve` may write"):
        store.commit(engine, stale, T0 + 2 * H, previous=T0 + H)
    with pytest.raises(store.CursorMoved):
        store.commit(engine, stale, T0 + 2 * H, previous=None)  # a first start against a used database
    assert state(engine) == before
    engine.dispose()
