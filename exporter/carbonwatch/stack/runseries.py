"""A run's figures read from the raw samples Prometheus holds, for `carbonwatch report` and `carbonwatch job`.

The recorded series of prometheus/rules/ lag (per-component totals are recorded every 4 minutes), so right
after a run they disagree with each other. Here every figure comes from the samples themselves, as fresh
as the last scrape:

- the exporters' run counters per (run, node, component), accumulated exactly as the ledger does: a counter
  that went down started again from 0 (a resumed run, an exporter that lost its state) and what it held
  before stays counted, and a counter seen through both replicas of an HA pair counts once; the component
  lines therefore add up to the total by construction;
- the run's first and last sample and the last one where its energy grew (its end when nothing says so);
  a run with more than RAW_LIMIT samples is read from per-series summaries instead (the same totals when no
  counter went down, times to the minute), so a month-long run on many nodes is not fetched sample by sample;
- the segments of a resumed run: `carbonwatch_run_segment` and `carbonwatch_run_segment_start_time_seconds`
  over the run's life, each segment ending at the run end time pushed while it ran.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from carbonwatch.promql import PromEntry, Prometheus

ENERGY = "carbonwatch_run_energy_joules_total"
EMISSIONS = "carbonwatch_run_emissions_grams_total"
SEGMENT = "carbonwatch_run_segment"
SEGMENT_START = "carbonwatch_run_segment_start_time_seconds"
END = "carbonwatch_run_end_time_seconds"
REPLICA_LABELS = ("replica", "prometheus_replica")  # external labels of an HA pair, as the ledger drops them
# Raw samples fetched at most for one counter family of a run (20,000: one node's three components for a day
# at a 15 s scrape interval); beyond, per-series summaries.
RAW_LIMIT = 20_000


@dataclass
class CounterTotal:
    """One counter's exact total over its samples, and when it was sampled."""

    total: float = 0.0
    first_t: float | None = None
    last_t: float | None = None
    grew_t: float | None = None  # the last sample where it went up
    resets: int = 0

    def add(self, samples: Iterable[tuple[float, float]]) -> None:
        last: float | None = None
        for t, v in samples:
            if last is None:
                self.total += v  # a run counter starts at 0 when the run is first seen on its node
                if v > 0:
                    self.grew_t = t
            elif v < last:
                self.total += v  # it started again from 0; what it held before stays counted
                self.resets += 1
                self.grew_t = t if v > 0 else self.grew_t
            elif v > last:
                self.total += v - last
                self.grew_t = t
            last = v
            self.first_t = t if self.first_t is None else min(self.first_t, t)
            self.last_t = t if self.last_t is None else max(self.last_t, t)


@dataclass
class RunCounters:
    """A run's counter totals per component (all nodes), and the times its counters span."""

    by_component: dict[str, float] = field(default_factory=dict)
    by_instance: dict[str, float] = field(default_factory=dict)  # per node (its `instance` label)
    first_t: float | None = None
    last_t: float | None = None
    grew_t: float | None = None
    resets: int = 0

    @property
    def total(self) -> float | None:
        return sum(self.by_component.values()) if self.by_component else None


def _samples(entry: PromEntry) -> list[tuple[float, float]]:
    return [(float(t), float(v)) for t, v in entry.get("values", [])]


Series = frozenset[tuple[str, str]]  # a series' labels (no __name__, no replica label)


def _key(metric: dict[str, str]) -> Series:
    return frozenset((k, v) for k, v in metric.items() if k != "__name__" and k not in REPLICA_LABELS)


def _raw(prom: Prometheus, expr: str, at: float | None) -> list[tuple[Series, CounterTotal]]:
    """Every raw sample of each series, accumulated exactly."""
    out = []
    for entry in prom.query(expr, at):
        one = CounterTotal()
        one.add(_samples(entry))
        out.append((_key(entry.get("metric", {})), one))
    return out


def _summarised(prom: Prometheus, x: str, lookback: str, at: float | None) -> list[tuple[Series, CounterTotal]]:
    """Per-series summaries for runs too long to fetch sample by sample: the total is the last value (no
    counter went down: checked before), times to the minute."""
    def per_series(expr: str) -> dict[Series, float]:
        return {_key(r["metric"]): float(r["value"][1]) for r in prom.query(expr, at)}

    last = per_series(f"last_over_time({x}[{lookback}])")
    first = per_series(f"min_over_time(timestamp({x})[{lookback}:1m])")
    seen = per_series(f"max_over_time(timestamp({x})[{lookback}:1m])")
    grew = per_series(f"max_over_time(timestamp(changes({x}[2m]) > 0)[{lookback}:1m])")
    out = []
    for key, total in last.items():
        t_seen = seen.get(key)
        t_grew = grew.get(key)
        if t_grew is not None and t_seen is not None:
            t_grew = min(t_grew, t_seen)
        out.append((key, CounterTotal(total, first.get(key), t_seen, t_grew if total > 0 else None)))
    return out


def run_counters(prom: Prometheus, name: str, sel: str, lookback: str, at: float | None = None,
                 raw_limit: int = RAW_LIMIT) -> dict[str, RunCounters]:
    """run_id -> its counters named `name` within `lookback` of `at`, per component: from every raw sample
    (exact, times to the sample) when they are at most `raw_limit` or a counter went down, else from
    per-series summaries (exact totals, times to the minute)."""
    x = f"{name}{{{sel}}}"
    count = prom.scalar(f"sum(count_over_time({x}[{lookback}]))", at) or 0.0
    resets = prom.scalar(f"sum(resets({x}[{lookback}]))", at) or 0.0
    if count <= raw_limit or resets > 0:
        found = _raw(prom, f"{x}[{lookback}]", at)
    else:
        found = _summarised(prom, x, lookback, at)
    series: dict[Series, CounterTotal] = {}
    for key, one in found:
        # the same counter seen through each of an HA pair counts once (the replica that saw most of it)
        if key not in series or one.total > series[key].total:
            series[key] = one
    out: dict[str, RunCounters] = {}
    for key, one in series.items():
        m = dict(key)
        run = out.setdefault(m.get("run_id", ""), RunCounters())
        comp = m.get("component", "")
        run.by_component[comp] = run.by_component.get(comp, 0.0) + one.total
        node = m.get("instance", "")
        run.by_instance[node] = run.by_instance.get(node, 0.0) + one.total
        run.resets += one.resets
        for attr, pick in (("first_t", min), ("last_t", max), ("grew_t", max)):
            mine, theirs = getattr(run, attr), getattr(one, attr)
            if theirs is not None:
                setattr(run, attr, theirs if mine is None else pick(mine, theirs))
    return out


@dataclass
class Segment:
    """One stretch of a run between a start (or a resume) and its end; `end` None while it runs."""

    number: int
    start: float | None
    end: float | None = None
    instance: str = ""  # the node it ran on, where known (the ledger's segments)

    @property
    def duration(self) -> float | None:
        return None if self.start is None or self.end is None else max(0.0, self.end - self.start)


def _many(prom: Prometheus, x: str, lookback: str, at: float | None, limit: int) -> bool:
    return (prom.scalar(f"sum(count_over_time({x}[{lookback}]))", at) or 0.0) > limit


def _distinct(prom: Prometheus, x: str, lookback: str, at: float | None, many: bool) -> list[tuple[float, float]]:
    """(sample time, value) of `x` within the lookback: every raw sample, or, for a long run, one per distinct
    value (its time the last 15 s step that saw it), computed by Prometheus."""
    if not many:
        return [smp for e in prom.query(f"{x}[{lookback}]", at) for smp in _samples(e)]
    expr = f'max_over_time(timestamp(count_values("value", {x}))[{lookback}:15s])'
    return [(float(r["value"][1]), float(r["metric"]["value"])) for r in prom.query(expr, at)]


def segments(prom: Prometheus, sel: str, lookback: str, at: float | None = None,
             raw_limit: int = RAW_LIMIT) -> list[Segment]:
    """The run's segments in order ([] when its client pushes no segment number: one segment)."""
    many = _many(prom, f"{SEGMENT}{{{sel}}}", lookback, at, raw_limit)
    numbers = sorted({int(v) for _, v in _distinct(prom, f"{SEGMENT}{{{sel}}}", lookback, at, many)})
    if not numbers:
        return []
    # segment n+1 starts after segment n: the distinct starts in order are the segments' starts
    starts = sorted({v for _, v in _distinct(prom, f"{SEGMENT_START}{{{sel}}}", lookback, at, many)})
    segs = [Segment(n, starts[i] if i < len(starts) else None) for i, n in enumerate(numbers)]
    ends = sorted({v for _, v in _distinct(prom, f"{END}{{{sel}}}", lookback, at, many)})
    for end in ends:  # each end belongs to the last segment that started before it
        owner = [s for s in segs if s.start is not None and s.start <= end]
        if owner:
            owner[-1].end = max(end, owner[-1].end or end)
    return segs


def latest_status(prom: Prometheus, sel: str, lookback: str, at: float | None = None,
                  raw_limit: int = RAW_LIMIT) -> str | None:
    """The status label of the run info sampled last (a resumed run is `running` again though its first
    segment's `succeeded` is still in the window)."""
    x = f"carbonwatch_run_info{{{sel}}}"
    if _many(prom, x, lookback, at, raw_limit):  # a long run: the last time of each status, to 15 s
        last = [(r["metric"].get("status"), float(r["value"][1]))
                for r in prom.query(f"max_over_time(timestamp({x})[{lookback}:15s])", at)]
    else:
        last = [(e["metric"].get("status"), _samples(e)[-1][0]) for e in prom.query(f"{x}[{lookback}]", at)
                if e.get("values")]
    best: tuple[float, str] | None = None
    for status, t in last:
        if status is not None and (best is None or t > best[0] or (t == best[0] and status != "running")):
            best = (t, status)
    return None if best is None else best[1]
