"""What the ledger reads from the Prometheus HTTP API (Prometheus, VictoriaMetrics, Thanos, Mimir): raw
counter samples in a time window through instant queries of range selectors `metric[d]`, the latest value
of the run and node metadata in the same window, and where the server's data begins.

Identity of a series = its labels minus `__name__` and the replica labels; when replicas of an HA pair both
answer, one replica's samples are kept per series and window (the one with the most samples), so the pair
counts once. `nocache=1` keeps VictoriaMetrics from answering from its rollup cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from carbonwatch.errors import NetworkError
from carbonwatch.promql import Prometheus

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
DEFAULT_REPLICA_LABELS = ("replica", "prometheus_replica")
EXTRA = {"nocache": "1"}  # VictoriaMetrics: bypass the rollup result cache (ignored elsewhere)


@dataclass
class RawSeries:
    key: str
    kind: str  # a COUNTERS key
    run_id: str
    instance: str
    component: str
    samples: list[tuple[float, float]]


@dataclass(frozen=True)
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
        for kind, (name, _) in COUNTERS.items():
            result = self.prom.raw(f"{name}[{duration_ms(end - start)}]", end, EXTRA)
            out += self._series(kind, result, start)
        return out

    def _series(self, kind: str, result: Iterable[dict[str, Any]], start: float) -> list[RawSeries]:
        chosen: dict[tuple[tuple[str, str], ...], tuple[tuple[int, str], RawSeries]] = {}
        for entry in result:
            labels = dict(entry.get("metric") or {})
            try:
                samples = [(float(t), float(v)) for t, v in entry["values"]]
            except (KeyError, TypeError, ValueError):
                raise NetworkError(f"{self.prom.what}: {self.prom.url} answered samples that are not "
                                   f"[time, value] pairs for {kind}") from None
            samples = [(t, v) for t, v in samples if t > start and math.isfinite(v)]
            ident = self.identity(labels)
            replica = ",".join(labels.get(r, "") for r in self.replica_labels)
            rank = (-len(samples), replica)
            series = RawSeries(
                key=kind + "|" + "|".join(f"{k}={v}" for k, v in ident), kind=kind,
                run_id=labels.get("run_id", ""), instance=labels.get("instance", ""),
                component=labels.get("component", ""), samples=samples)
            if ident not in chosen or rank < chosen[ident][0]:
                chosen[ident] = (rank, series)
        return [s for _, s in chosen.values() if s.samples]

    def latest(self, start: float, end: float) -> dict[str, list[Latest]]:
        """The latest value of each metadata series in (start, end]."""
        out: dict[str, list[Latest]] = {}
        rng = duration_ms(end - start)
        for what, name in LATEST.items():
            result = self.prom.query(f"last_over_time({name}[{rng}])", end, EXTRA)
            rows = []
            for entry in result:
                try:
                    value = float(entry["value"][1])
                except (KeyError, TypeError, ValueError, IndexError):
                    raise NetworkError(f"{self.prom.what}: {self.prom.url} answered a value that is not "
                                       f"[time, value] for {name}") from None
                labels = {k: v for k, v in (entry.get("metric") or {}).items() if k not in self.replica_labels}
                rows.append(Latest(labels, value))
            out[what] = rows
        return out

    def oldest(self, now: float, horizon: float = 5 * 365 * 86400.0, precision: float = 3600.0) -> float | None:
        """About when the server's data of the counters begins (never later than it does): the oldest
        30-day window back to `horizon` whose series index holds them, then a binary search inside it. Every
        question spans at most 30 days: VictoriaMetrics answers a wider one from its global index (every
        series it ever held, whatever the range), which would drag the start back to the horizon."""
        match = "{__name__=~\"carbonwatch_run_energy_joules_total|carbonwatch_energy_joules_total\"}"
        window = 30 * 86400.0
        found = None
        hi = now
        while hi > now - horizon:  # every window: a month without data may sit between older data and now
            if self.prom.series(match, hi - window, hi):
                found = hi
            hi -= window
        if found is None:
            return None
        lo, hi = found - window, found
        while hi - lo > precision:  # invariant: data exists in [lo, hi]; find the earliest hi
            mid = (lo + hi) / 2
            if self.prom.series(match, lo, mid):
                hi = mid
            else:
                lo = mid
        return lo
