"""A run's figures at its end, as read by the run client: Prometheus' recorded totals, and in node mode the
node exporter's own counters for this node, exact at the run's end.

The exporter that measures this node is found through Prometheus (`carbonwatch_node_info{hostname=...}` names
its scrape instance); its /metrics is then read directly, once it holds a sample taken after the run ended
(the counters of a run stay after its end until a scrape served them). Nodes other than this one are only in
Prometheus: their share of a multi-node run is final after their exporters' next scrape.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families

from carbonwatch.client.labels import validate_run_id
from carbonwatch.client.settings import hostname
from carbonwatch.promql import Prometheus

log = logging.getLogger("carbonwatch.client")


def query_prometheus_emissions(prometheus: str, run_id: str, timeout: float = 2.0) -> float | None:
    """The run's recorded emissions (run_id:carbonwatch_emissions_grams:total), or None if absent."""
    q = f'sum(run_id:carbonwatch_emissions_grams:total{{run_id="{validate_run_id(run_id)}"}})'
    return Prometheus(prometheus, timeout=timeout, what="prometheus").scalar(q)


def query_prometheus_energy(prometheus: str, run_id: str, timeout: float = 2.0) -> dict[str, float]:
    """The run's recorded energy per component (run_id_component:carbonwatch_energy_joules:total), J."""
    q = f'sum by (component) (run_id_component:carbonwatch_energy_joules:total{{run_id="{validate_run_id(run_id)}"}})'
    out: dict[str, float] = {}
    for r in Prometheus(prometheus, timeout=timeout, what="prometheus").query(q):
        value = float(r["value"][1])
        if math.isfinite(value):
            out[str(r["metric"].get("component", "other"))] = value
    return out


@dataclass
class NodeFigures:
    """This node's exporter counters for one run, read from its /metrics."""

    instance: str
    sample_time: float  # the exporter's last sample (carbonwatch_sample_timestamp_seconds)
    energy_joules: dict[str, float] = field(default_factory=dict)
    emissions_grams: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    other_nodes: list[str] = field(default_factory=list)  # other scrape instances that measured the run

    @property
    def emissions_total(self) -> float:
        return float(sum(self.emissions_grams.values()))


def parse_run_counters(text: str, run_id: str, instance: str) -> NodeFigures:
    """The run's counters and the sample time in one exposition text."""
    out = NodeFigures(instance, 0.0)
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            lab = smp.labels
            if smp.name == "carbonwatch_sample_timestamp_seconds":
                out.sample_time = float(smp.value)
            elif lab.get("run_id") != run_id:
                continue
            elif smp.name == "carbonwatch_run_energy_joules_total":
                out.energy_joules[lab.get("component", "other")] = float(smp.value)
            elif smp.name == "carbonwatch_run_emissions_grams_total":
                out.emissions_grams[lab.get("component", "other")] = float(smp.value)
            elif smp.name == "carbonwatch_run_source_info":
                out.sources[lab.get("component", "other")] = f"node exporter: {lab.get('source', '?')}"
    for comp in out.energy_joules:
        out.sources.setdefault(comp, "node exporter")
    return out


def node_instances(prom: Prometheus, run_id: str) -> tuple[str | None, list[str]]:
    """(this node's exporter instance, the other instances that measured the run) as Prometheus knows them."""
    host = hostname()
    mine = [r["metric"].get("instance", "") for r in prom.query(f'carbonwatch_node_info{{hostname="{host}"}}')]
    measured = prom.by_label(f'max by (instance) (carbonwatch_run_energy_joules_total{{run_id="{run_id}"}})',
                             "instance")
    local = mine[0] if len(mine) == 1 else next((i for i in mine if i in measured), None)
    return local, sorted(i for i in measured if i != local)


def scrape_after(url: str, run_id: str, instance: str, end_time: float, wait_s: float, timeout: float,
                 clock: Callable[[], float] = time.time) -> NodeFigures | None:
    """The exporter's counters once it sampled after `end_time` (at most `wait_s` s later); None if not."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            r = requests.get(url, timeout=timeout)
            r.raise_for_status()
            figures = parse_run_counters(r.text, run_id, instance)
            if figures.sample_time >= end_time:
                return figures
        except (requests.RequestException, ValueError) as exc:
            log.debug("carbonwatch: reading %s: %s", url, exc)
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.25)


def node_figures(prometheus: str, run_id: str, end_time: float, timeout: float = 2.0,
                 wait_s: float = 6.0) -> NodeFigures | None:
    """This node's exporter counters for the run at its end, or None (no exporter instance known to
    Prometheus, exporter unreachable, or no sample after the end within `wait_s`)."""
    prom = Prometheus(prometheus, timeout=timeout, what="prometheus")
    instance, others = node_instances(prom, validate_run_id(run_id))
    if instance is None:
        return None
    url = instance if "://" in instance else f"http://{instance}"
    figures = scrape_after(f"{url}/metrics", run_id, instance, end_time, wait_s, timeout)
    if figures is not None:
        figures.other_nodes = others
    return figures
