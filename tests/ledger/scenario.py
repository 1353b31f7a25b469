"""A fleet's history written as TSDB blocks (promtool) for the ledger's tests: a run requeued from node a
(40 min) to node b (60 min), its counters exact functions of time, every series also as an HA replica
copy with some samples missing, node counters per zone, and the run client's pushed metadata."""

from __future__ import annotations

from pathlib import Path

from tests.support import Prometheus

RUN = "sweep/lr=3e-4&bs=64#2"
OTHER = "other run"
G_PER_J = 1e-4  # 360 g/kWh
GPU_W, CPU_W, NODE_W = 2.0, 0.5, 10.0


def _lv(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


class History:
    def __init__(self, start: int) -> None:
        self.start = start  # the first sample; the data ends at start + 7200
        self.series: dict[str, list[tuple[str, float, int]]] = {}

    def add(self, name: str, labels: dict[str, str], points: list[tuple[int, float]]) -> None:
        """`points` as replica a, and every sample but each fifth as replica b (an HA pair)."""
        for replica in ("a", "b"):
            lv = _lv({**labels, "replica": replica})
            rows = self.series.setdefault(name, [])
            rows += [(lv, v, t) for i, (t, v) in enumerate(points) if replica == "a" or i % 5]

    def build(self) -> History:
        s = self.start
        a, b = {"instance": "a:9860", "job": "carbonwatch"}, {"instance": "b:9860", "job": "carbonwatch"}
        on_a = [t for t in range(s, s + 2400 + 1, 15)]
        on_b = [t for t in range(s + 3600, s + 7200 + 1, 15)]
        for node, times, w, comp in ((a, on_a, GPU_W, "gpu"), (a, on_a, CPU_W, "cpu"), (b, on_b, GPU_W, "gpu")):
            labels = {**node, "run_id": RUN, "component": comp}
            pts = [(t, w * (t - times[0])) for t in times]
            self.add("carbonwatch_run_energy_joules_total", labels, pts)
            self.add("carbonwatch_run_emissions_grams_total", labels, [(t, v * G_PER_J) for t, v in pts])
        other = [t for t in range(s + 600, s + 1200 + 1, 15)]
        self.add("carbonwatch_run_energy_joules_total", {**a, "run_id": OTHER, "component": "gpu"},
                 [(t, 1.0 * (t - other[0])) for t in other])
        every = list(range(s, s + 7200 + 1, 15))
        for node, zone in ((a, "DE"), (b, "FR")):
            pts = [(t, 1e6 + NODE_W * (t - s)) for t in every]
            self.add("carbonwatch_energy_joules_total", {**node, "component": "gpu"}, pts)
            self.add("carbonwatch_emissions_grams_total", {**node, "component": "gpu"},
                     [(t, v * G_PER_J) for t, v in pts])
            self.add("carbonwatch_node_info", {**node, "zone": zone}, [(t, 1.0) for t in every])
        push = {"job": "carbonwatch_run", "instance": "", "run_id": RUN}
        self.add("carbonwatch_run_info", {**push, "user": "ann", "project": "vision", "model": "vit",
                                          "team": "ml", "status": "succeeded"}, [(t, 1.0) for t in every])
        self.add("carbonwatch_run_info", {**a, "run_id": RUN, "origin": "env", "user": "", "project": "",
                                          "model": "", "team": ""}, [(t, 1.0) for t in on_a])
        self.add("carbonwatch_run_info", {**a, "run_id": OTHER, "origin": "env", "user": "bob", "project": "nlp",
                                          "model": "", "team": ""}, [(t, 1.0) for t in other])
        self.add("carbonwatch_run_budget_grams", {**push}, [(t, 5.0) for t in every])
        self.add("carbonwatch_electricity_price_per_kwh", {**a, "zone": "DE", "currency": "EUR"},
                 [(t, 0.3) for t in every])
        return self

    def prometheus(self, tmp: Path) -> Prometheus:
        return Prometheus.from_series(tmp, self.series)


RUN_JOULES = GPU_W * 2400 + CPU_W * 2400 + GPU_W * 3600  # measured between first and last samples per node
OTHER_JOULES = 600.0
ZONE_JOULES = NODE_W * 7200  # per zone: the node counter from the ledger's first sample of it
