"""A run's figures read from the raw samples Prometheus holds, for `carbonwatch report` and `carbonwatch job`.

The recorded series of prometheus/rules/ lag (per-component totals are recorded every 4 minutes), so right
after a run they disagree with each other. Here every figure comes from the samples themselves, as fresh
as the last scrape:

- the exporters' run counters per (run, node, component), accumulated exactly as the ledger does: a counter
  that went down started again from 0 (a resumed run, an exporter that lost its state) and what it held
  before stays counted, and a counter seen through both replicas of an HA pair counts once; the component
  lines therefore add up to the total by construction;
- the run's first and last sample and the last one where its energy grew (its end when nothing says so);
- the segments of a resumed run: `carbonwatch_run_segment` and `carbonwatch_run_segment_start_time_seconds`
  over the run's life, each segment ending at the run end time pushed while it ran.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from carbonwatch.promql import Prometheus

ENERGY = "carbonwatch_run_energy_joules_total"
EMISSIONS = "carbonwatch_run_emissions_grams_total"
SEGMENT = "carbonwatch_run_segment"
SEGMENT_START = "carbonwatch_run_segment_start_time_seconds"
END = "carbonwatch_run_end_time_seconds"
REPLICA_LABELS = ("replica", "prometheus_replica")  # external labels of an HA pair, as the ledger drops them


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
    first_t: float | None = None
    last_t: float | None = None
    grew_t: float | None = None
    resets: int = 0

    @property
    def total(self) -> float | None:
        return sum(self.by_component.values()) if self.by_component else None


def _samples(entry: dict[str, Any]) -> list[tuple[float, float]]:
    return [(float(t), float(v)) for t, v in entry.get("values", [])]


def run_counters(prom: Prometheus, name: str, sel: str, lookback: str,
                 at: float | None = None) -> dict[str, RunCounters]:
    """run_id -> its counters named `name` (every raw sample within `lookback` of `at`) per component."""
    series: dict[frozenset[tuple[str, str]], CounterTotal] = {}
    for entry in prom.query(f"{name}{{{sel}}}[{lookback}]", at):
        one = CounterTotal()
        one.add(_samples(entry))
        # the same counter seen through each of an HA pair counts once (the replica that saw most of it)
        key = frozenset((k, v) for k, v in entry.get("metric", {}).items() if k not in REPLICA_LABELS)
        if key not in series or one.total > series[key].total:
            series[key] = one
    out: dict[str, RunCounters] = {}
    for key, one in series.items():
        m = dict(key)
        run = out.setdefault(m.get("run_id", ""), RunCounters())
        comp = m.get("component", "")
        run.by_component[comp] = run.by_component.get(comp, 0.0) + one.total
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


def segments(prom: Prometheus, sel: str, lookback: str, at: float | None = None) -> list[Segment]:
    """The run's segments in order ([] when its client pushes no segment number: one segment)."""
    numbers: dict[float, int] = {}  # sample time -> segment number
    for entry in prom.query(f"{SEGMENT}{{{sel}}}[{lookback}]", at):
        numbers.update({t: int(v) for t, v in _samples(entry)})
    if not numbers:
        return []
    starts: dict[int, float] = {}
    start_samples = [s for e in prom.query(f"{SEGMENT_START}{{{sel}}}[{lookback}]", at) for s in _samples(e)]
    for t, v in sorted(start_samples):
        n = numbers.get(t)
        if n is not None:
            starts.setdefault(n, v)
    segs = [Segment(n, starts.get(n)) for n in sorted(set(numbers.values()))]
    ends = sorted({v for e in prom.query(f"{END}{{{sel}}}[{lookback}]", at) for _, v in _samples(e)})
    for end in ends:  # each end belongs to the last segment that started before it
        owner = [s for s in segs if s.start is not None and s.start <= end]
        if owner:
            owner[-1].end = max(end, owner[-1].end or end)
    return segs


def latest_status(prom: Prometheus, sel: str, lookback: str, at: float | None = None) -> str | None:
    """The status label of the run info sampled last (a resumed run is `running` again though its first
    segment's `succeeded` is still in the window)."""
    best: tuple[float, str] | None = None
    for entry in prom.query(f"carbonwatch_run_info{{{sel}}}[{lookback}]", at):
        status = entry.get("metric", {}).get("status")
        samples = _samples(entry)
        if status is None or not samples:
            continue
        t = samples[-1][0]
        if best is None or t > best[0] or (t == best[0] and status != "running"):
            best = (t, status)
    return None if best is None else best[1]
