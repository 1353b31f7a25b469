"""What the ledger reads from the Prometheus HTTP API (Prometheus, VictoriaMetrics, Thanos, Mimir): raw
counter samples in a time window through instant queries of range selectors `metric[d]`, the latest value
of the run and node metadata in the same window, and where the server's data begins.

Identity of a series = its labels minus `__name__` and the replica labels; when replicas of an HA pair both
answer, one replica's samples are kept per series and window (the one with the most samples), so the pair
counts once. `nocache=1` keeps VictoriaMetrics from answering from its rollup cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from sys import intern

from carbonwatch.errors import NetworkError
from carbonwatch.promql import PromEntry, Prometheus

# ledger metric kind -> (exposed counter name, does its first value count)
COUNTERS: dict[str, tuple[str, bool]] = {
    "run_energy": ("carbonwatch_run_energy_joules_total", True),
    "run_emissions": ("carbonwatch_run_emissions_grams_total", True),
    "node_energy": ("carbonwatch_energy_joules_total", False),
    "node_emissions": ("carbonwatch_emissions_grams_total", False),
}
LATEST = {  # metadata read as its latest value in the window
    "node_info": "carbonwatch_node_info",
    "run_info": "carbonwatch_run_info",
    "budget": "carbonwatch_run_budget_grams",
    "start": "carbonwatch_run_start_time_seconds",
    "end": "carbonwatch_run_end_time_seconds",
    "epochs": "carbonwatch_run_epoch",
    "samples": "carbonwatch_run_samples_total",
    "price": "carbonwatch_electricity_price_per_kwh",
}
# each counter is asked in these parts (every series is in exactly one)
SPLIT = ('component="gpu"', 'component="cpu"', 'component="memory"', 'component!~"gpu|cpu|memory"')
DEFAULT_REPLICA_LABELS = ("replica", "prometheus_replica")
WINDOW = 30 * 86400.0  # the longest range VictoriaMetrics answers from its per-day index
# VictoriaMetrics: no rollup cache and no latency offset; Thanos: an error rather than a partial answer (a store
# that is down must not let the cursor pass the samples it holds). Other servers ignore both.
EXTRA = {"nocache": "1", "partial_response": "false"}


@dataclass(slots=True)
class RawSeries:
    key: str
    kind: str  # a COUNTERS key
    run_id: str
    instance: str
    component: str
    samples: list[tuple[float, float]]


@dataclass(frozen=True, slots=True)
class Latest:
    labels: dict[str, str]
    value: float


def duration_ms(seconds: float) -> str:
    return f"{max(1, int(math.ceil(seconds * 1000)))}ms"


class Source:
    def __init__(self, prom: Prometheus, replica_labels: Sequence[str] = DEFAULT_REPLICA_LABELS) -> None:
        self.prom = prom
        self.replica_labels = tuple(replica_labels)

    def identity(self, labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k, v) for k, v in labels.items() if k != "__name__" and k not in self.replica_labels))

    def counters(self, start: float, end: float) -> list[RawSeries]:
        """Every raw sample of the counters in (start, end] (servers that include `start` are filtered)."""
        out: list[RawSeries] = []
        for kind in COUNTERS:
            out += list(self.counter(kind, start, end))
        return out

    def counter(self, kind: str, start: float, end: float) -> Iterator[RawSeries]:
        """One counter's raw samples in (start, end], one series per identity; asked per component (and the
        rest), so a fleet's answer arrives in parts that are dropped once read."""
        for part in SPLIT:
            expr = f"{COUNTERS[kind][0]}{{{part}}}[{duration_ms(end - start)}]"
            yield from self._counter(kind, self.prom.raw(expr, end, EXTRA), start)

    def _counter(self, kind: str, result: list[PromEntry], start: float) -> list[RawSeries]:
        chosen: dict[str, tuple[tuple[int, str], RawSeries]] = {}
        drop = {"__name__", *self.replica_labels}
        for entry in result:
            labels = entry.get("metric") or {}
            try:  # one pass: the answer's pairs become floats and those in the window are kept
                samples = [(ft, fv) for t, v in entry["values"]
                           if (ft := float(t)) > start and math.isfinite(fv := float(v))]
            except (KeyError, TypeError, ValueError):
                raise NetworkError(f"{self.prom.what}: {self.prom.url} answered samples that are not "
                                   f"[time, value] pairs for {kind}") from None
            key = kind + "|" + "|".join([k + "=" + v for k, v in sorted(labels.items()) if k not in drop])
            rank = (-len(samples), ",".join(labels.get(r, "") for r in self.replica_labels))
            if key not in chosen or rank < chosen[key][0]:
                chosen[key] = (rank, RawSeries(key, kind, intern(labels.get("run_id", "")),
                                               intern(labels.get("instance", "")),
                                               intern(labels.get("component", "")), samples))
        return [s for _, s in chosen.values() if s.samples]

    def latest(self, start: float, end: float) -> dict[str, list[Latest]]:
        """The latest value of each metadata series in (start, end], one raw query per metric (each answer is
        read and dropped before the next is asked: a fleet's run info is the largest answer of a window)."""
        out: dict[str, list[Latest]] = {}
        for what, name in LATEST.items():
            out[what] = self._latest(what, f"{name}[{duration_ms(end - start)}]", start, end)
        return out

    def _latest(self, what: str, expr: str, start: float, end: float) -> list[Latest]:
        newest: dict[tuple[tuple[str, str], ...], tuple[float, Latest]] = {}
        for entry in self.prom.raw(expr, end, EXTRA):
            labels = dict(entry.get("metric") or {})
            labels.pop("__name__", None)
            try:
                t, value = max((float(t), float(v)) for t, v in entry["values"])
            except (KeyError, TypeError, ValueError):
                raise NetworkError(f"{self.prom.what}: {self.prom.url} answered samples that are not "
                                   "[time, value] pairs for the run and node metadata") from None
            if t <= start:
                continue
            key = self.identity(labels)
            if key not in newest or t > newest[key][0]:
                newest[key] = (t, Latest({k: v for k, v in labels.items() if k not in self.replica_labels}, value))
        return [row for _, row in newest.values()]

    def oldest(self, now: float, horizon: float = 5 * 365 * 86400.0, precision: float = 3600.0) -> float | None:
        """About when the server's data of the counters begins (never later than it does), from its series
        index: the oldest 30-day window holding any (VictoriaMetrics answers a longer range from its global
        index, whatever the times), then a binary search inside it. None when the server holds none."""
        match = "{__name__=~\"carbonwatch_run_energy_joules_total|carbonwatch_energy_joules_total\"}"
        oldest_window = None
        end = now
        while end > now - horizon:  # every window, so a month without data does not hide older data
            if self.prom.series(match, end - WINDOW, end):
                oldest_window = end
            end -= WINDOW
        if oldest_window is None:
            return None
        lo, hi = oldest_window - WINDOW, oldest_window
        while hi - lo > precision:  # invariant: no data in [oldest_window - WINDOW, lo), data in [lo, hi]
            mid = (lo + hi) / 2
            if self.prom.series(match, lo, mid):
                hi = mid
            else:
                lo = mid
        return lo
