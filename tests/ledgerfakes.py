"""Fleets of exporters as Prometheus would have scraped them, with exact known figures and the faults the
ledger must survive: a run requeued to another node, a node unreachable for a while, a run ending during a
scrape gap, an exporter that lost its state file, a Prometheus outage, an HA pair of replicas.

A `Fleet` is a plain description (nodes, runs, their stays on nodes at constant power, faults); `samples()`
turns it into the raw samples one Prometheus would hold, `truth()` gives the exact energy and emissions of any
run, user, project or zone over any time span, computed from the description (power x time), never from the
samples. `backfill()` writes the samples as TSDB blocks with promtool, `vm_import()` into VictoriaMetrics.
"""

from __future__ import annotations

import math
import subprocess
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

RUN_J, RUN_G = "carbonwatch_run_energy_joules_total", "carbonwatch_run_emissions_grams_total"
NODE_J, NODE_G = "carbonwatch_energy_joules_total", "carbonwatch_emissions_grams_total"
NODE_OFFSET_J = 7.5e9  # what every node counter held before the data begins (its durable state)
CLIENT = 'job="carbonwatch_run",instance=""'  # the Pushgateway group of a run, scraped with honor_labels


@dataclass(frozen=True)
class Node:
    instance: str
    zone: str
    intensity: float  # g/kWh, constant
    idle: dict[str, float]  # component -> watts drawn outside runs


@dataclass(frozen=True)
class Run:
    run_id: str
    user: str
    project: str
    model: str = "m"
    team: str = "t"
    budget_grams: float = 1000.0


@dataclass(frozen=True)
class Stay:
    """A run on one node from `start` to `end` (Unix seconds) at constant power per component."""

    run_id: str
    instance: str
    start: float
    end: float
    watts: dict[str, float]

    def joules(self, component: str, a: float, b: float) -> float:
        return self.watts.get(component, 0.0) * max(0.0, min(b, self.end) - max(a, self.start))


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    t: float


@dataclass
class Fleet:
    start: float  # first scrape
    end: float  # last scrape
    scrape: float = 15.0
    components: tuple[str, ...] = ("gpu", "cpu")
    nodes: list[Node] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    stays: list[Stay] = field(default_factory=list)
    unreachable: list[tuple[str, float, float]] = field(default_factory=list)  # instance not scraped in (a, b)
    outages: list[tuple[float, float]] = field(default_factory=list)  # nothing scraped in (a, b)
    resets: list[tuple[str, float]] = field(default_factory=list)  # right after its scrape at t, counters from 0
    replicas: tuple[str, ...] = ()  # HA pair: every series once per replica (label `replica`)
    replica_offset: float = 7.0  # the second replica scrapes this much later
    replica_misses: list[tuple[str, float, float]] = field(default_factory=list)  # (replica, a, b): it missed these

    # -- the description ----------------------------------------------------------------------------------------
    def node(self, instance: str) -> Node:
        return next(n for n in self.nodes if n.instance == instance)

    def run(self, run_id: str) -> Run:
        return next(r for r in self.runs if r.run_id == run_id)

    def node_joules(self, instance: str, component: str, a: float, b: float) -> float:
        """Energy the node drew in [a, b] (idle plus its runs), counted from the first scrape."""
        a, b = max(a, self.start), min(b, self.end)
        if b <= a:
            return 0.0
        idle = self.node(instance).idle.get(component, 0.0) * (b - a)
        return idle + sum(s.joules(component, a, b) for s in self.stays if s.instance == instance)

    def run_joules(self, run_id: str, a: float, b: float) -> dict[str, float]:
        """Per instance: the run's energy in [a, b]."""
        out: dict[str, float] = defaultdict(float)
        for s in self.stays:
            if s.run_id == run_id:
                out[s.instance] += sum(s.joules(c, a, b) for c in self.components)
        return dict(out)

    # -- the exact figures -------------------------------------------------------------------------------------
    def truth(self, a: float = -math.inf, b: float = math.inf) -> dict[tuple[str, str], tuple[float, float]]:
        """Exact (joules, grams) over [a, b] per ("run", id), ("user", u), ("project", p), ("team", t),
        ("model", m) (run energy) and ("zone", z) (all energy of the zone's nodes)."""
        acc: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        for r in self.runs:
            for inst, j in self.run_joules(r.run_id, a, b).items():
                g = j * self.node(inst).intensity / 3.6e6
                for key in (("run", r.run_id), ("user", r.user), ("project", r.project), ("team", r.team),
                            ("model", r.model)):
                    acc[key][0] += j
                    acc[key][1] += g
        for n in self.nodes:
            j = sum(self.node_joules(n.instance, c, a, b) for c in self.components)
            acc[("zone", n.zone)][0] += j
            acc[("zone", n.zone)][1] += j * n.intensity / 3.6e6
        return {k: (v[0], v[1]) for k, v in acc.items()}

    # -- what Prometheus holds ---------------------------------------------------------------------------------
    def scraped(self, instance: str, t: float, replica: str = "") -> bool:
        if any(a < t < b for a, b in self.outages):
            return False
        if any(r == replica and a < t < b for r, a, b in self.replica_misses):
            return False
        return not any(i == instance and a < t < b for i, a, b in self.unreachable)

    def times(self, offset: float = 0.0) -> Iterator[float]:
        k = 0
        while self.start + k * self.scrape + offset <= self.end:
            yield self.start + k * self.scrape + offset
            k += 1

    def samples(self) -> Iterator[Sample]:
        for replica in self.replicas or ("",):
            offset = self.replica_offset if replica and replica == self.replicas[-1] else 0.0
            extra = (("replica", replica),) if replica else ()
            for n in self.nodes:
                yield from self._node_samples(n, offset, extra, replica)
            for r in self.runs:
                yield from self._client_samples(r, offset, extra, replica)

    def _reset_before(self, instance: str, t: float) -> float | None:
        """The latest state loss on `instance` before time t (counters count from it), if any."""
        past = [tr for i, tr in self.resets if i == instance and tr < t]
        return max(past) if past else None

    def _node_samples(self, n: Node, offset: float, extra: tuple[tuple[str, str], ...],
                      replica: str) -> Iterator[Sample]:
        base = (("instance", n.instance), ("job", "carbonwatch"))
        stays = [s for s in self.stays if s.instance == n.instance]
        seen_after_end: set[int] = set()
        for t in self.times(offset):
            if not self.scraped(n.instance, t, replica):
                continue
            t0 = self._reset_before(n.instance, t)
            yield Sample("carbonwatch_node_info", base + (("zone", n.zone),) + extra, 1.0, t)
            for c in self.components:
                j = self.node_joules(n.instance, c, self.start, t)
                j = j - self.node_joules(n.instance, c, self.start, t0) if t0 is not None else j + NODE_OFFSET_J
                yield Sample(NODE_J, base + (("component", c),) + extra, j, t)
                yield Sample(NODE_G, base + (("component", c),) + extra, j * n.intensity / 3.6e6, t)
            for k, s in enumerate(stays):
                if t <= s.start or k in seen_after_end:
                    continue
                if t > s.end:  # kept until scraped once after the run's end, then gone
                    seen_after_end.add(k)
                r = self.run(s.run_id)
                rl = base + (("run_id", r.run_id),)
                who = (("origin", "env"), ("user", r.user), ("project", r.project), ("model", r.model),
                       ("team", r.team))
                yield Sample("carbonwatch_run_info", rl + who + extra, 1.0, t)
                for c in self.components:
                    j = s.joules(c, s.start, t) - (s.joules(c, s.start, t0) if t0 is not None else 0.0)
                    yield Sample(RUN_J, rl + (("component", c),) + extra, j, t)
                    yield Sample(RUN_G, rl + (("component", c),) + extra, j * n.intensity / 3.6e6, t)

    def _client_samples(self, r: Run, offset: float, extra: tuple[tuple[str, str], ...],
                        replica: str) -> Iterator[Sample]:
        """The run client's Pushgateway group: running while any stay lasts, then succeeded for 10 minutes."""
        mine = [s for s in self.stays if s.run_id == r.run_id]
        start, end = min(s.start for s in mine), max(s.end for s in mine)
        base = (("job", "carbonwatch_run"), ("instance", ""), ("run_id", r.run_id))
        for t in self.times(offset):
            if t < start or t > end + 600 or not self.scraped("", t, replica):
                continue
            status = "running" if t <= end else "succeeded"
            who = (("user", r.user), ("model", r.model), ("project", r.project), ("team", r.team),
                   ("host", "h"), ("status", status))
            yield Sample("carbonwatch_run_info", base + who + extra, 1.0, t)
            yield Sample("carbonwatch_run_budget_grams", base + extra, r.budget_grams, t)
            yield Sample("carbonwatch_run_start_time_seconds", base + extra, start, t)
            if t > end:
                yield Sample("carbonwatch_run_end_time_seconds", base + extra, end, t)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels)


def openmetrics(samples: Iterable[Sample]) -> str:
    """OpenMetrics text (timestamps in seconds), families contiguous, each series' samples in time order."""
    by_name: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_name[s.name].append(s)
    lines = []
    for name, group in by_name.items():
        lines.append(f"# TYPE {name} gauge")
        group.sort(key=lambda s: (s.labels, s.t))
        lines += [f"{name}{{{_labels(s.labels)}}} {s.value!r} {s.t:.3f}" for s in group]
    return "\n".join(lines + ["# EOF"]) + "\n"


def backfill(samples: Iterable[Sample], tmp: Path) -> Path:
    """TSDB blocks of `samples` made by promtool under tmp/data (returned)."""
    (tmp / "series.om").write_text(openmetrics(samples))
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(tmp / "series.om"),
                    str(tmp / "data")], check=True, capture_output=True, timeout=300)
    (tmp / "series.om").unlink()
    return tmp / "data"


def vm_import(samples: Iterable[Sample], url: str) -> None:
    """Import into VictoriaMetrics through its Prometheus text import (timestamps in milliseconds)."""
    lines = [f"{s.name}{{{_labels(s.labels)}}} {s.value!r} {round(s.t * 1000)}" for s in samples]
    for i in range(0, len(lines), 50000):
        r = requests.post(f"{url}/api/v1/import/prometheus", data="\n".join(lines[i:i + 50000]) + "\n", timeout=120)
        r.raise_for_status()
    requests.get(f"{url}/internal/force_flush", timeout=60).raise_for_status()


DAY, HOUR, MIN = 86400.0, 3600.0, 60.0
REQUEUED = "sweep/lr=3e-4&bs=64#2"  # a run id that needs URL encoding


def faults_fleet(now: float, scrape: float = 15.0) -> Fleet:
    """One day of five nodes around midnight D0 (the last midnight at least 13 h ago), every fault at once,
    each on its own run, user or node so that each one's figures are checked apart:

    - REQUEUED (alice/vision): 40 min on a1, ends; 60 min on b1 5 minutes later, same run id;
    - "gapend" (bob/speech): ends 5 minutes into a 14-minute scrape gap of e1 (its final value is scraped
      once after the gap, then the exporter forgets the run);
    - "unreach" (carol/vision): runs on c1 across midnight while c1 is unreachable 90 minutes (D0 +- 45 min);
    - "stateloss" (dave/speech): on b1 and d1; d1's exporter loses its state file at D0 + 3 h;
    - "outage" (erin/nlp) and "plain" (alice/nlp): running through a 30-minute Prometheus outage."""
    d0 = (now - 13 * HOUR) // DAY * DAY
    fleet = Fleet(start=d0 - 12 * HOUR, end=d0 + 12 * HOUR, scrape=scrape)
    fleet.nodes = [Node("a1:9860", "DE", 300.0, {"gpu": 90.0, "cpu": 40.0}),
                   Node("b1:9860", "FR", 60.0, {"gpu": 70.0, "cpu": 35.0}),
                   Node("c1:9860", "PL", 700.0, {"gpu": 80.0, "cpu": 30.0}),
                   Node("d1:9860", "DE", 300.0, {"gpu": 60.0, "cpu": 45.0}),
                   Node("e1:9860", "SE", 40.0, {"gpu": 75.0, "cpu": 25.0})]
    fleet.runs = [Run(REQUEUED, "alice", "vision", "resnet", "cv", 200.0), Run("gapend", "bob", "speech", "w2v", "asr"),
                  Run("unreach", "carol", "vision", "vit", "cv"), Run("stateloss", "dave", "speech", "w2v", "asr"),
                  Run("outage", "erin", "nlp", "gpt", "lm"), Run("plain", "alice", "nlp", "gpt", "lm")]
    t = d0 - 6 * HOUR
    fleet.stays = [Stay(REQUEUED, "a1:9860", t, t + 40 * MIN, {"gpu": 1800.0, "cpu": 150.0}),
                   Stay(REQUEUED, "b1:9860", t + 45 * MIN, t + 105 * MIN, {"gpu": 1500.0, "cpu": 120.0}),
                   Stay("gapend", "e1:9860", d0 - 3 * HOUR + 7, d0 - 3 * HOUR + 100 * MIN, {"gpu": 700.0, "cpu": 90.0}),
                   Stay("unreach", "c1:9860", d0 - 2 * HOUR + 3, d0 + 2 * HOUR + 11, {"gpu": 1200.0, "cpu": 100.0}),
                   Stay("stateloss", "b1:9860", d0 + HOUR + 2, d0 + 5 * HOUR, {"gpu": 600.0, "cpu": 80.0}),
                   Stay("stateloss", "d1:9860", d0 + HOUR + 2, d0 + 5 * HOUR, {"gpu": 650.0, "cpu": 85.0}),
                   Stay("outage", "a1:9860", d0 + 6 * HOUR + 5, d0 + 9 * HOUR, {"gpu": 900.0, "cpu": 60.0}),
                   Stay("plain", "e1:9860", d0 + 4 * HOUR + 1, d0 + 10 * HOUR + 1, {"gpu": 400.0, "cpu": 50.0})]
    gap = d0 - 3 * HOUR + 95 * MIN  # a scrape time: the run ends 5 minutes after it, the gap lasts 14 minutes
    fleet.unreachable = [("e1:9860", gap, gap + 14 * MIN), ("c1:9860", d0 - 45 * MIN, d0 + 45 * MIN)]
    fleet.resets = [("d1:9860", d0 + 3 * HOUR)]
    fleet.outages = [(d0 + 7 * HOUR + 50 * MIN, d0 + 8 * HOUR + 20 * MIN)]
    return fleet


def month_fleet(now: float, scrape: float = 300.0) -> Fleet:
    """29 days of two nodes (GPU only) and three runs, ending 2 hours ago: for 30-day figures over a TSDB
    that keeps 15 days."""
    start = (now - 29 * DAY) // DAY * DAY
    fleet = Fleet(start=start, end=(now - 2 * HOUR) // HOUR * HOUR, scrape=scrape, components=("gpu",))
    fleet.nodes = [Node("m1:9860", "DE", 300.0, {"gpu": 100.0}), Node("m2:9860", "FR", 60.0, {"gpu": 80.0})]
    fleet.runs = [Run("long-1", "ulla", "pretrain"), Run("long-2", "vera", "finetune"),
                  Run("late", "ulla", "finetune")]
    fleet.stays = [Stay("long-1", "m1:9860", start + HOUR + 40, start + 20 * DAY, {"gpu": 2000.0}),
                   Stay("long-2", "m2:9860", start + 3 * DAY + 17, fleet.end - 3 * HOUR, {"gpu": 1500.0}),
                   Stay("late", "m1:9860", start + 21 * DAY, fleet.end - HOUR, {"gpu": 900.0})]
    return fleet
