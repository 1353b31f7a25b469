"""The figures a run ends with, and its record (the runs-file line the summary is printed from).

Local mode: the local meter's totals. Node mode: this node's exporter counters read at the run's end
(exact: the same counters `carbonwatch report` sums), else Prometheus' recorded totals; a run whose
exporter stopped mid-run adds the local meter's figures from that moment to what Prometheus recorded before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from carbonwatch.client.final_figures import node_figures, query_prometheus_emissions, query_prometheus_energy
from carbonwatch.client.settings import RunSettings
from carbonwatch.client.summary import NODE_EXPORTER
from carbonwatch.node.model import RunState

log = logging.getLogger("carbonwatch.client")


@dataclass
class Figures:
    energy_joules: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    emissions_grams: float | None = None  # None: from the energy at the zone's intensity (or unknown)
    prometheus_grams: float | None = None  # Prometheus' recorded total (all nodes)
    extra: dict[str, object] = field(default_factory=dict)  # where they came from, for the record and summary


def local_figures(totals: RunState | None) -> Figures:
    if totals is None:
        return Figures()
    grams = float(sum(totals.emissions_grams.values())) if totals.emissions_grams else None
    return Figures(dict(totals.energy_joules), dict(totals.sources), grams)


def add_local(f: Figures, local: Figures) -> None:
    """The local meter's figures (from the exporter's loss on) on top of the exporter's recorded part."""
    for comp, j in local.energy_joules.items():
        f.energy_joules[comp] = f.energy_joules.get(comp, 0.0) + j
        f.sources[comp] = ", ".join(x for x in (f.sources.get(comp), local.sources.get(comp)) if x)
    if local.emissions_grams is not None or f.emissions_grams is not None:
        f.emissions_grams = (f.emissions_grams or 0.0) + (local.emissions_grams or 0.0)


def node_mode_figures(s: RunSettings, run_id: str, end: float, totals: RunState | None,
                      fallback_time: float | None) -> Figures:
    """Node mode: the exporter's counters at the end, else Prometheus' recorded series (+ the local meter's
    part after a fallback)."""
    f = Figures()
    if not s.prometheus:
        if fallback_time is not None:
            add_local(f, local_figures(totals))
        return f
    f.prometheus_grams = query_prometheus_emissions(s.prometheus, run_id, timeout=s.push_timeout)
    exact = None if fallback_time is not None else node_figures(s.prometheus, run_id, end, s.push_timeout)
    if exact is not None:
        f.energy_joules, f.sources = exact.energy_joules, exact.sources
        f.emissions_grams = exact.emissions_total
        f.extra.update(figures="exporter", node_instance=exact.instance, other_nodes=exact.other_nodes)
        return f
    f.energy_joules = query_prometheus_energy(s.prometheus, run_id, timeout=s.push_timeout)
    f.sources = dict.fromkeys(f.energy_joules, "node exporter")
    f.emissions_grams = f.prometheus_grams
    f.extra["figures"] = "recorded"
    if fallback_time is not None:
        add_local(f, local_figures(totals))
    return f


def end_figures(s: RunSettings, run_id: str, mode: str, end: float, totals: RunState | None,
                fallback_time: float | None) -> Figures:
    """What the run measured, by whoever measured it; a failing Prometheus costs a warning, never the run."""
    if mode != NODE_EXPORTER:
        f = local_figures(totals)
        if s.prometheus:
            try:
                f.prometheus_grams = query_prometheus_emissions(s.prometheus, run_id, timeout=s.push_timeout)
            except Exception as exc:
                log.warning("carbonwatch: could not read the run's figures from Prometheus: %s", exc)
        return f
    try:
        f = node_mode_figures(s, run_id, end, totals, fallback_time)
    except Exception as exc:
        log.warning("carbonwatch: could not read the run's figures from Prometheus: %s", exc)
        f = Figures()
        if fallback_time is not None:
            add_local(f, local_figures(totals))
    if fallback_time is not None:
        f.extra["fallback_time"] = round(fallback_time, 3)
    return f
