"""What `carbonwatch report` knows about a run, read from Prometheus.

Energy and emissions, per component and in total, come from the exporters' run counters themselves
(carbonwatch.stack.runseries: every raw sample, accumulated exactly), so the component lines add up to the
total right after a run; the recorded series of prometheus/rules/ stand in only where no counter is left.
Labels, budget, epochs and samples are the last values within the lookback; a run that ended (its
Pushgateway group deleted, its exporter series gone) still reports. A resumed run is one run with its
segments. The ledger (carbonwatch.stack.ledgerclient) fills the same Report where one is used.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from carbonwatch.contracts import COMPONENTS, JOULES_PER_KWH
from carbonwatch.equivalents import FACTORS, equivalents
from carbonwatch.errors import ConfigError
from carbonwatch.promql import Prometheus
from carbonwatch.stack import runseries
from carbonwatch.stack.runseries import Segment

TERMINAL = ("failed", "stopped", "succeeded")  # a run that has one of these ended with it


class UnknownRunError(ConfigError):
    """The run (or job) is known to neither Prometheus nor the ledger: `report` and `job` exit 2."""


@dataclass
class ComponentReport:
    energy_joules: float | None
    emissions_grams: float | None
    sources: list[str]


@dataclass
class Report:
    run_id: str
    prometheus: str  # where the figures were read: a Prometheus URL, or the ledger's
    generated_at: float
    status: str
    user: str = ""
    model: str = ""
    project: str = ""
    team: str = ""
    zones: list[str] = field(default_factory=list)
    start_time_seconds: float | None = None
    end_time_seconds: float | None = None
    duration_seconds: float | None = None
    energy_joules: float | None = None
    emissions_grams: float | None = None
    mean_intensity_grams_per_kwh: float | None = None
    components: dict[str, ComponentReport] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)  # currency -> amount
    budget_grams: float | None = None
    budget_used_ratio: float | None = None
    forecast_grams: float | None = None
    power_watts: float | None = None
    # Epochs as the user counts them: the run client pushes carbonwatch_run_epoch as the epochs started,
    # counted from 1, whether the script numbers them from 0 or 1 (an 8-epoch run ends at 8).
    epochs: float | None = None
    samples: float | None = None
    joules_per_sample: float | None = None
    grams_per_epoch: float | None = None
    equivalents: dict[str, float] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)  # a resumed run's stretches ([]: never resumed)
    quality: list[str] = field(default_factory=list)  # what is estimated or was repaired, in words
    source: str = "prometheus"  # prometheus | ledger

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["equivalent_sources"] = {f.name: {"unit": f.unit, "citation": f.citation} for f in FACTORS}
        return out


def derive(rep: Report) -> None:
    """The figures computed from the others: duration, intensity, budget use, per sample and epoch,
    equivalents."""
    if rep.start_time_seconds is not None:
        end = rep.end_time_seconds if rep.end_time_seconds is not None else rep.generated_at
        rep.duration_seconds = max(0.0, end - rep.start_time_seconds)
    if rep.energy_joules and rep.emissions_grams is not None and rep.energy_joules > 0:
        rep.mean_intensity_grams_per_kwh = rep.emissions_grams / (rep.energy_joules / JOULES_PER_KWH)
    if rep.budget_grams and rep.emissions_grams is not None:
        rep.budget_used_ratio = rep.emissions_grams / rep.budget_grams
    if rep.status != "running" and rep.forecast_grams is None:
        rep.forecast_grams = rep.emissions_grams  # it ended: the forecast is what it emitted
    if rep.energy_joules is not None and rep.samples:
        rep.joules_per_sample = rep.energy_joules / rep.samples
    if rep.emissions_grams is not None and rep.epochs:
        rep.grams_per_epoch = rep.emissions_grams / rep.epochs  # as run_id:carbonwatch_grams_per_epoch:ratio
    if rep.emissions_grams is not None:
        rep.equivalents = equivalents(rep.emissions_grams)


@dataclass(frozen=True)
class _Query:
    """The queries of one run: its selector, the lookback window and the evaluation time."""

    prom: Prometheus
    sel: str
    lookback: str
    at: float | None

    def last(self, name: str) -> str:
        # a total's largest value in the window: when a multi-node run ends its nodes' counters leave the
        # rules' bridge one by one, so its last recorded value can be partial (docs/rules.md)
        fn = "max_over_time" if name.endswith(":total") else "last_over_time"
        return f"{fn}({name}{{{self.sel}}}[{self.lookback}])"

    def scalar(self, expr: str) -> float | None:
        return self.prom.scalar(expr, self.at)

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        return self.prom.by_label(expr, label, self.at)


def selector(run_id: str) -> str:
    if '"' in run_id or "\\" in run_id or not run_id:
        raise ConfigError(f"RUN_ID: {run_id!r} is not a run id")
    return f'run_id="{run_id}"'


def collect(prom: Prometheus, run_id: str, lookback: str = "30d", at: float | None = None) -> Report:
    """Everything Prometheus knows about `run_id`. UnknownRunError (exit 2) when it knows nothing."""
    q = _Query(prom, selector(run_id), lookback, at)
    info = prom.query(q.last("run_id:carbonwatch_run_info:last"), at)
    pushed = prom.query(q.last("carbonwatch_run_info"), at)
    energy = runseries.run_counters(prom, runseries.ENERGY, q.sel, lookback, at).get(run_id)
    recorded = q.scalar(f"max({q.last('run_id:carbonwatch_energy_joules:total')})")
    if not info and not pushed and energy is None and recorded is None:
        raise UnknownRunError(
            f"run {run_id!r} is unknown to Prometheus at {prom.url} (no run info or energy in the last {lookback}); "
            "check the id (`carbonwatch runs`) and that Prometheus scrapes the Pushgateway and the exporter"
        )
    rep = Report(run_id=run_id, prometheus=prom.url, generated_at=time.time() if at is None else at,
                 status="unknown")
    for r in info + pushed:
        for k in ("user", "model", "project", "team"):
            if not getattr(rep, k):
                setattr(rep, k, r["metric"].get(k, ""))
    _status_and_times(rep, q, energy)
    _figures(rep, q, energy, recorded)
    rep.budget_grams = q.scalar(f"max({q.last('carbonwatch_run_budget_grams')})")
    if rep.status == "running":
        rep.forecast_grams = q.scalar(f"max(run_id:carbonwatch_emissions_grams:forecast{{{q.sel}}})")
        rep.power_watts = q.scalar(f"max(run_id:carbonwatch_power_watts:sum{{{q.sel}}})")
    rep.epochs = q.scalar(f"max({q.last('carbonwatch_run_epoch')})")
    rep.samples = q.scalar(f"max({q.last('carbonwatch_run_samples_total')})")
    derive(rep)
    return rep


def _status_and_times(rep: Report, q: _Query, energy: runseries.RunCounters | None) -> None:
    """Status from the run info sampled last; start and end from the run's own times (a resumed run from
    its first segment's start to its last segment's end), else from its counters' first sample and last
    growth."""
    latest = runseries.latest_status(q.prom, q.sel, q.lookback, q.at)
    now_running = any(r["metric"].get("status") == "running"
                      for r in q.prom.query(f"carbonwatch_run_info{{{q.sel}}}", q.at))
    if latest in TERMINAL:
        rep.status = latest
    elif latest == "running":
        rep.status = "running" if now_running else "ended"
    elif energy is not None:
        rep.status = "ended" if energy.last_t is not None and energy.last_t < rep.generated_at - 300 else "running"
    rep.segments = runseries.segments(q.prom, q.sel, q.lookback, q.at)
    rep.start_time_seconds = q.scalar(f"min({q.last('carbonwatch_run_start_time_seconds')})")
    rep.end_time_seconds = q.scalar(f"max({q.last('carbonwatch_run_end_time_seconds')})")
    if rep.status == "running" or (rep.segments and rep.segments[-1].end is None):
        rep.end_time_seconds = None  # it (its last segment) runs, or ended without saying when
    if rep.start_time_seconds is None and energy is not None:
        rep.start_time_seconds = energy.first_t
    if rep.end_time_seconds is None and rep.status != "running" and energy is not None:
        rep.end_time_seconds = energy.grew_t  # the last sample where its energy grew


def _figures(rep: Report, q: _Query, energy: runseries.RunCounters | None, recorded: float | None) -> None:
    """Energy and emissions per component from the exporters' counters (their sum is the total, fresh at the
    last scrape); the recorded series only where no counter is left."""
    grams = runseries.run_counters(q.prom, runseries.EMISSIONS, q.sel, q.lookback, q.at).get(rep.run_id)
    if energy is not None:
        comp_energy, rep.energy_joules = dict(energy.by_component), energy.total
    else:
        comp_energy = q.by_label(q.last("run_id_component:carbonwatch_energy_joules:total"), "component")
        rep.energy_joules = recorded
    if grams is not None:
        comp_grams, rep.emissions_grams = dict(grams.by_component), grams.total
    else:
        comp_grams = q.by_label(q.last("run_id_component:carbonwatch_emissions_grams:total"), "component")
        rep.emissions_grams = q.scalar(f"max({q.last('run_id:carbonwatch_emissions_grams:total')})")
    # The source of each component's figure: the source label of the device counters on the nodes the run
    # used (the run counters themselves carry none).
    nodes = f"count by (instance) ({q.last('carbonwatch_run_energy_joules_total')})"
    for c in COMPONENTS:
        if c not in comp_energy and c not in comp_grams:
            continue
        srcs = q.by_label(f"count by (source) (last_over_time(carbonwatch_{c}_energy_joules_total[{q.lookback}]) "
                          f"* on(instance) group_left() {nodes})", "source")
        rep.components[c] = ComponentReport(comp_energy.get(c), comp_grams.get(c), sorted(srcs))
    rep.zones = sorted(q.by_label(f"count by (zone) (last_over_time(carbonwatch_node_info[{q.lookback}]) "
                                  f"* on(instance) group_left() {nodes})", "zone"))
    rep.cost = _cost(q, energy) or q.by_label(q.last("run_id:carbonwatch_cost:total"), "currency")
    resets = sum(c.resets for c in (energy, grams) if c is not None)
    if resets:
        rep.quality.append(f"{resets} run counter(s) started again from 0 (a resumed run or an exporter that lost "
                           "its state); what they held before is counted")


def _cost(q: _Query, energy: runseries.RunCounters | None) -> dict[str, float]:
    """The run's energy on each node at that node's electricity price, per currency (as the rules'
    run_id:carbonwatch_cost:total, but from the fresh counters); {} when no node of the run has a price."""
    if energy is None:
        return {}
    nodes = f"count by (instance) (last_over_time(carbonwatch_run_energy_joules_total{{{q.sel}}}[{q.lookback}]))"
    prices = q.prom.query(f"last_over_time(instance:carbonwatch_electricity_price_per_kwh:current[{q.lookback}]) "
                          f"and on(instance) {nodes}", q.at)
    cost: dict[str, float] = {}
    for r in prices:
        joules = energy.by_instance.get(r["metric"].get("instance", ""), 0.0)
        currency = r["metric"].get("currency", "")
        cost[currency] = cost.get(currency, 0.0) + joules / JOULES_PER_KWH * float(r["value"][1])
    return cost
