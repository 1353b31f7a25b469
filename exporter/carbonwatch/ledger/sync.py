"""One sync: read the raw samples since the cursor up to now - delay, in time chunks, accumulate them and
commit each chunk with its cursor. A failed chunk (server down, garbage answer, database error) changes
nothing; it is read again at the next sync.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from sqlalchemy import Engine

from carbonwatch.errors import CarbonwatchError, ConfigError
from carbonwatch.ledger import store
from carbonwatch.ledger.accumulate import MIN_GAP, accumulate
from carbonwatch.ledger.source import COUNTERS, Latest, RawSeries, Source
from carbonwatch.ledger.states import SeriesStates
from carbonwatch.ledger.store import Batch, Hook, SeriesRow

log = logging.getLogger("carbonwatch.ledger")

SEGMENT_GAP = 600.0  # seconds without a sample of a run on a node that end one of its segments
MAX_SAMPLES = 400_000  # raw samples per chunk the ledger aims at (memory of one answer)
MIN_CHUNK = 15.0
SPACINGS = 2000  # series whose sample spacing tells the fleet's scrape interval, per window
MAX_FLOOR = 600.0  # the gap limit learnt from the fleet never exceeds this


@dataclass
class Health:
    cursor: float | None = None
    last_sync: float | None = None  # wall time of the last successful sync
    duration: float = 0.0
    errors: int = 0
    last_error: str = ""
    ready: bool = False


def build_batch(start: float, end: float, raw: Iterable[RawSeries], latest: dict[str, list[Latest]],
                states: Mapping[str, SeriesRow], zones: dict[str, str],
                prices: dict[str, tuple[str, float]], floor: float = MIN_GAP) -> Batch:
    """What the window (start, end] adds, from its raw counter samples and latest metadata (pure). `raw` may
    be a generator: each counter's answer is dropped once accumulated."""
    batch = Batch(until=end, floor=floor)
    for row in latest.get("node_info", []):
        if row.labels.get("instance") and "zone" in row.labels:
            batch.zones[row.labels["instance"]] = row.labels["zone"]
    for row in latest.get("price", []):
        if row.labels.get("zone"):
            batch.prices[row.labels["zone"]] = (row.labels.get("currency", ""), row.value)
    zone_of = {**zones, **batch.zones}
    price_of = {**prices, **batch.prices}
    batch.prices = price_of  # the cells are priced with every price known
    _runs_metadata(batch, latest)
    del latest  # a caller that passed its answer on frees it before the counters are read
    for series in raw:
        _add_series(batch, series, states.get(series.key), zone_of.get(series.instance, ""))
    for (run_id, instance), _ in batch.seen.items():
        currency = price_of.get(zone_of.get(instance, ""), ("", 0.0))[0]
        if currency:
            batch.runs.setdefault(run_id, {})["currency"] = currency
    return batch


def _add_series(batch: Batch, series: RawSeries, held: SeriesRow | None, zone: str) -> None:
    acc = accumulate(held.state if held else None, series.samples, COUNTERS[series.kind][1], floor=batch.floor)
    if acc.state is None or acc.new_samples == 0:
        return
    if held and len(batch.spacings) < SPACINGS:
        batch.spacings.append((acc.state.last_time - held.state.last_time) / acc.new_samples)
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
        after = held.state.last_time if held else float("-inf")
        first = min([t for t, _ in series.samples if t > after])
        prev = held.state.last_time if held and first - held.state.last_time <= SEGMENT_GAP \
            and not acc.resets else None
        t0, t1, p = batch.seen.get((series.run_id, series.instance), (first, acc.state.last_time, prev))
        batch.seen[(series.run_id, series.instance)] = (
            min(t0, first), max(t1, acc.state.last_time), p if p is not None else prev)


def _runs_metadata(batch: Batch, latest: dict[str, list[Latest]]) -> None:
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


class Syncer:
    """Keeps the database up to date with the server: `sync()` catches up to now - delay."""

    def __init__(self, engine: Engine, source: Source, delay: float = 15.0, chunk: float = 3600.0,
                 start: float | None = None, clock: Callable[[], float] = time.time,
                 hook: Hook | None = None, progress: Callable[[], None] | None = None,
                 progress_every: float = 30.0) -> None:
        self.engine, self.source = engine, source
        self.delay, self.chunk, self.start = delay, chunk, start
        self.clock = clock
        self.hook = hook
        self.progress, self.progress_every = progress, progress_every  # called now and then in a long catch-up
        self._progressed = time.monotonic()
        self.stored = store.load_cursor(engine)  # the cursor as the database holds it
        self.health = Health(cursor=self.stored, ready=True)
        self.states = SeriesStates(store.load_states(engine))
        self.zones = store.load_zones(engine)
        self.prices = store.load_prices(engine)
        self.rate = 0.0  # raw samples per second of data seen in the last chunk
        self.cap = chunk  # the longest chunk the server has not refused as too large
        self.floor = MIN_GAP  # the gap limit below which no series' gap is an estimate
        self.lock = threading.Lock()

    def initial_cursor(self, until: float) -> float:
        if self.start is not None:
            return self.start
        oldest = self.source.oldest(until)
        return until if oldest is None else min(oldest - 1.0, until)

    def chunk_length(self) -> float:
        if self.rate <= 0:
            return self.cap
        return max(MIN_CHUNK, min(self.cap, MAX_SAMPLES / self.rate))

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
            self.states = SeriesStates(store.load_states(self.engine))
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
                self.cap = max(MIN_CHUNK, (end - cursor) / 2)  # the answer would have been too big
                log.info("the server refused %gs of samples as too many; chunks of %gs from now on",
                         end - cursor, self.cap)
                continue
            cursor = end
            if self.progress is not None and cursor < until and \
                    time.monotonic() - self._progressed >= self.progress_every:
                self.progress()  # e.g. /metrics shows how far a catch-up got
                self._progressed = time.monotonic()

    def window(self, start: float, end: float) -> None:
        count = [0]
        batch = build_batch(start, end, self._raw(start, end, count), self.source.latest(start, end), self.states,
                            self.zones, self.prices, self.floor)
        try:
            store.commit(self.engine, batch, self.clock(), self.hook or (lambda _: None), previous=self.stored)
        except BaseException:
            self.states = SeriesStates(store.load_states(self.engine))
            self.stored = store.load_cursor(self.engine)
            if self.stored is not None:
                self.health.cursor = self.stored
            raise
        self.stored = end
        self.states.update(batch.series)
        self.zones.update(batch.zones)
        self.prices.update(batch.prices)
        self.health.cursor = end
        self.rate = count[0] / max(end - start, 1e-3)
        if batch.spacings:  # 2 x the fleet's median spacing: what a window too short for one series' own says
            self.floor = min(MAX_FLOOR, max(MIN_GAP, 2 * statistics.median(batch.spacings)))

    def _raw(self, start: float, end: float, count: list[int]) -> Iterator[RawSeries]:
        for kind in COUNTERS:
            for series in self.source.counter(kind, start, end):
                count[0] += len(series.samples)
                yield series
