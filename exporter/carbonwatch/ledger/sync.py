"""One sync: read the raw samples since the cursor up to now - delay, in time chunks, accumulate them and
commit each chunk with its cursor. A failed chunk (server down, garbage answer, database error) changes
nothing; it is read again at the next sync.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from carbonwatch.errors import CarbonwatchError, ConfigError
from carbonwatch.ledger import store
from carbonwatch.ledger.accumulate import accumulate
from carbonwatch.ledger.source import COUNTERS, Latest, RawSeries, Source
from carbonwatch.ledger.store import Batch, Hook, SeriesRow

log = logging.getLogger("carbonwatch.ledger")

SEGMENT_GAP = 600.0  # seconds without a sample of a run on a node that end one of its segments
MAX_SAMPLES = 400_000  # raw samples per chunk the ledger aims at (memory of one answer)
MIN_CHUNK = 15.0


@dataclass
class Health:
    cursor: float | None = None
    last_sync: float | None = None  # wall time of the last successful sync
    duration: float = 0.0
    errors: int = 0
    last_error: str = ""
    ready: bool = False


def build_batch(start: float, end: float, raw: list[RawSeries], latest: dict[str, list[Latest]],
                states: dict[str, SeriesRow], zones: dict[str, str],
                prices: dict[str, tuple[str, float]]) -> Batch:
    """What the window (start, end] adds, from its raw counter samples and latest metadata (pure)."""
    batch = Batch(until=end)
    for row in latest.get("node_info", []):
        if row.labels.get("instance") and "zone" in row.labels:
            batch.zones[row.labels["instance"]] = row.labels["zone"]
    for row in latest.get("price", []):
        if row.labels.get("zone"):
            batch.prices[row.labels["zone"]] = (row.labels.get("currency", ""), row.value)
    zone_of = {**zones, **batch.zones}
    price_of = {**prices, **batch.prices}
    batch.prices = price_of  # the cells are priced with every price known
    for series in raw:
        _add_series(batch, series, states.get(series.key), zone_of.get(series.instance, ""))
    _runs_metadata(batch, latest, zone_of, price_of)
    return batch


def _add_series(batch: Batch, series: RawSeries, held: SeriesRow | None, zone: str) -> None:
    acc = accumulate(held.state if held else None, series.samples, COUNTERS[series.kind][1])
    if acc.state is None or acc.new_samples == 0:
        return
    batch.series[series.key] = SeriesRow(series.kind, series.run_id, series.instance, series.component, acc.state)
    col = 1 if series.kind.endswith("emissions") else 0
    run = series.kind.startswith("run_")
    for hour, (delta, est) in acc.hours.items():
        cells: dict = batch.run_cells if run else batch.node_cells  # type: ignore[type-arg]
        key = (series.run_id, series.instance, series.component, zone, hour) if run else \
            (series.instance, series.component, zone, hour)
        cell = cells.setdefault(key, [0.0, 0.0, 0.0, 0.0])
        cell[col] += delta
        cell[col + 2] += est
    for r in acc.resets:
        batch.resets.append({"instance": series.instance, "run_id": series.run_id, "component": series.component,
                             "metric": series.kind, "time": r.time, "value_before": r.value_before,
                             "value_after": r.value_after})
    if run:
        first = min(t for t, _ in series.samples if not held or t > held.state.last_time)
        prev = held.state.last_time if held and first - held.state.last_time <= SEGMENT_GAP \
            and not acc.resets else None
        t0, t1, p = batch.seen.get((series.run_id, series.instance), (first, acc.state.last_time, prev))
        batch.seen[(series.run_id, series.instance)] = (
            min(t0, first), max(t1, acc.state.last_time), p if p is not None else prev)


def _runs_metadata(batch: Batch, latest: dict[str, list[Latest]], zone_of: dict[str, str],
                   price_of: dict[str, tuple[str, float]]) -> None:
    for row in latest.get("run_info", []):
        run_id = row.labels.get("run_id", "")
        if not run_id:
            continue
        origin = row.labels.get("origin", "")
        client = origin in ("", "client")
        fields = {k: row.labels.get(k, "") for k in ("user", "project", "model", "team")}
        fields["label_origin"] = "client" if client else origin
        if client:
            fields["status"] = row.labels.get("status", "")
        have = batch.runs.setdefault(run_id, {})
        have.update(store.merge_run(have, fields))
    for what, field in (("budget", "budget_grams"), ("start", "start"), ("end", "end"), ("epochs", "epochs"),
                        ("samples", "samples")):
        for row in latest.get(what, []):
            if row.labels.get("run_id"):
                batch.runs.setdefault(row.labels["run_id"], {})[field] = row.value
    for (run_id, instance), _ in batch.seen.items():
        currency = price_of.get(zone_of.get(instance, ""), ("", 0.0))[0]
        if currency:
            batch.runs.setdefault(run_id, {})["currency"] = currency


class Syncer:
    """Keeps the database up to date with the server: `sync()` catches up to now - delay."""

    def __init__(self, engine: Engine, source: Source, delay: float = 15.0, chunk: float = 3600.0,
                 start: float | None = None, clock: Callable[[], float] = time.time,
                 hook: Hook | None = None) -> None:
        self.engine, self.source = engine, source
        self.delay, self.chunk, self.start = delay, chunk, start
        self.clock = clock
        self.hook = hook
        self.health = Health(cursor=store.load_cursor(engine), ready=True)
        self.states = store.load_states(engine)
        self.zones = store.load_zones(engine)
        self.prices = store.load_prices(engine)
        self.rate = 0.0  # raw samples per second of data seen in the last chunk
        self.lock = threading.Lock()

    def initial_cursor(self, until: float) -> float:
        if self.start is not None:
            return self.start
        oldest = self.source.oldest(until)
        return until if oldest is None else min(oldest - 1.0, until)

    def chunk_length(self) -> float:
        if self.rate <= 0:
            return self.chunk
        return max(MIN_CHUNK, min(self.chunk, MAX_SAMPLES / self.rate))

    def sync(self) -> bool:
        """Catch up; True when the cursor reached now - delay. Errors are counted and logged, never raised."""
        began = time.monotonic()
        try:
            with self.lock:
                self._catch_up(self.clock() - self.delay)
        except CarbonwatchError as exc:
            self._failed(str(exc))
            return False
        except Exception as exc:  # a database error: the transaction rolled back; the states are reloaded
            self._failed(f"{type(exc).__name__}: {exc}")
            self.states = store.load_states(self.engine)
            return False
        self.health.duration = time.monotonic() - began
        self.health.last_sync = self.clock()
        return True

    def _failed(self, message: str) -> None:
        self.health.errors += 1
        self.health.last_error = message
        log.warning("sync failed (will retry; nothing is lost): %s", message)

    def _catch_up(self, until: float) -> None:
        cursor = self.health.cursor
        if cursor is None:
            cursor = self.initial_cursor(until)
            if cursor >= until:  # the server holds none of the counters yet: start from now
                self.health.cursor = until
        while cursor < until:
            end = min(until, cursor + self.chunk_length())
            try:
                self.window(cursor, end)
            except ConfigError as exc:
                if "sample" not in str(exc) or end - cursor <= MIN_CHUNK:
                    raise
                self.rate = max(self.rate * 2, 2 * MAX_SAMPLES / (end - cursor))  # the answer was too big
                continue
            cursor = end

    def window(self, start: float, end: float) -> None:
        raw = self.source.counters(start, end)
        latest = self.source.latest(start, end)
        batch = build_batch(start, end, raw, latest, self.states, self.zones, self.prices)
        try:
            store.commit(self.engine, batch, self.clock(), self.hook or (lambda _: None))
        except BaseException:
            self.states = store.load_states(self.engine)
            raise
        self.states.update(batch.series)
        self.zones.update(batch.zones)
        self.prices.update(batch.prices)
        self.health.cursor = end
        self.rate = sum(len(s.samples) for s in raw) / max(end - start, 1e-3)
