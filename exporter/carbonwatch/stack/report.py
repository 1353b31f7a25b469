"""`carbonwatch report RUN_ID`: a run's duration, energy, emissions, cost, budget and efficiency, read from the
recorded series in Prometheus (prometheus/rules/). Totals are read with max_over_time(...[lookback]), the
rest with last_over_time(...[lookback]), so a run that ended (its Pushgateway group deleted, its exporter
series gone) still reports its totals.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from carbonwatch.contracts import COMPONENTS, JOULES_PER_KWH
from carbonwatch.durations import format_duration, parse_duration
from carbonwatch.equivalents import FACTORS, SOURCE, equivalents
from carbonwatch.errors import ConfigError
from carbonwatch.promql import DEFAULT_URL, Prometheus

DEFAULT_PROMETHEUS = DEFAULT_URL
TERMINAL = ("failed", "stopped", "succeeded")  # a run that has one of these ended with it


@dataclass
class ComponentReport:
    energy_joules: float | None
    emissions_grams: float | None
    sources: list[str]


@dataclass
class Report:
    run_id: str
    prometheus: str
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

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["equivalent_sources"] = {f.name: {"unit": f.unit, "citation": f.citation} for f in FACTORS}
        return out


def collect(prom: Prometheus, run_id: str, lookback: str = "30d", at: float | None = None) -> Report:
    """Everything known about `run_id`. Raises ConfigError when Prometheus does not know the run."""
    if '"' in run_id or "\\" in run_id or not run_id:
        raise ConfigError(f"RUN_ID: {run_id!r} is not a run id")
    sel = f'run_id="{run_id}"'

    def last(name: str, extra: str = "") -> str:
        # a total's largest value in the window: when a multi-node run ends its nodes' counters leave the
        # rules' bridge one by one, so its last recorded value can be partial (docs/rules.md)
        fn = "max_over_time" if name.endswith(":total") else "last_over_time"
        return f"{fn}({name}{{{sel}{extra}}}[{lookback}])"

    now = time.time() if at is None else at
    info = prom.query(last("run_id:carbonwatch_run_info:last"), at)
    pushed = prom.query(last("carbonwatch_run_info"), at)
    energy = prom.scalar(f"max({last('run_id:carbonwatch_energy_joules:total')})", at)
    if not info and not pushed and energy is None:
        raise ConfigError(
            f"run {run_id!r} is unknown to Prometheus at {prom.url} (no run info or energy in the last {lookback}); "
            "check the id (`carbonwatch runs`) and that Prometheus scrapes the Pushgateway and the exporter"
        )
    labels: dict[str, str] = {}
    for r in info + pushed:
        for k in ("user", "model", "project", "team"):
            labels.setdefault(k, r["metric"].get(k, ""))
    statuses = {r["metric"].get("status", "") for r in pushed}
    now_statuses = {r["metric"].get("status", "") for r in prom.query(f"carbonwatch_run_info{{{sel}}}", at)}
    status = next((s for s in TERMINAL if s in statuses), None) or (
        "running" if "running" in now_statuses else ("ended" if "running" in statuses else "unknown")
    )

    rep = Report(run_id=run_id, prometheus=prom.url, generated_at=now, status=status)
    rep.user, rep.model = labels.get("user", ""), labels.get("model", "")
    rep.project, rep.team = labels.get("project", ""), labels.get("team", "")
    rep.start_time_seconds = prom.scalar(f"max({last('carbonwatch_run_start_time_seconds')})", at)
    rep.end_time_seconds = prom.scalar(f"max({last('carbonwatch_run_end_time_seconds')})", at)
    if rep.start_time_seconds is not None:
        end = rep.end_time_seconds if rep.end_time_seconds is not None else now
        rep.duration_seconds = max(0.0, end - rep.start_time_seconds)

    rep.energy_joules = energy
    rep.emissions_grams = prom.scalar(f"max({last('run_id:carbonwatch_emissions_grams:total')})", at)
    comp_energy = prom.by_label(last("run_id_component:carbonwatch_energy_joules:total"), "component", at)
    comp_grams = prom.by_label(last("run_id_component:carbonwatch_emissions_grams:total"), "component", at)
    # The source of each component's figure: the source label of the device counters on the nodes the run
    # used (the run counters themselves carry none).
    nodes = f"count by (instance) ({last('carbonwatch_run_energy_joules_total')})"
    for c in COMPONENTS:
        if c not in comp_energy and c not in comp_grams:
            continue
        srcs = prom.by_label(
            f"count by (source) (last_over_time(carbonwatch_{c}_energy_joules_total[{lookback}]) "
            f"* on(instance) group_left() {nodes})",
            "source",
            at,
        )
        rep.components[c] = ComponentReport(comp_energy.get(c), comp_grams.get(c), sorted(srcs))
    rep.zones = sorted(
        prom.by_label(
            f"count by (zone) (last_over_time(carbonwatch_node_info[{lookback}]) * on(instance) group_left() {nodes})",
            "zone",
            at,
        )
    )
    if rep.energy_joules and rep.emissions_grams is not None and rep.energy_joules > 0:
        rep.mean_intensity_grams_per_kwh = rep.emissions_grams / (rep.energy_joules / JOULES_PER_KWH)
    rep.cost = prom.by_label(last("run_id:carbonwatch_cost:total"), "currency", at)

    rep.budget_grams = prom.scalar(f"max({last('carbonwatch_run_budget_grams')})", at)
    if rep.budget_grams and rep.emissions_grams is not None:
        rep.budget_used_ratio = rep.emissions_grams / rep.budget_grams
    if status == "running":
        rep.forecast_grams = prom.scalar(f"max(run_id:carbonwatch_emissions_grams:forecast{{{sel}}})", at)
        rep.power_watts = prom.scalar(f"max(run_id:carbonwatch_power_watts:sum{{{sel}}})", at)
    else:
        rep.forecast_grams = rep.emissions_grams  # it ended: the forecast is what it emitted

    rep.epochs = prom.scalar(f"max({last('carbonwatch_run_epoch')})", at)
    rep.samples = prom.scalar(f"max({last('carbonwatch_run_samples_total')})", at)
    if rep.energy_joules is not None and rep.samples:
        rep.joules_per_sample = rep.energy_joules / rep.samples
    if rep.emissions_grams is not None and rep.epochs:
        rep.grams_per_epoch = rep.emissions_grams / rep.epochs  # as run_id:carbonwatch_grams_per_epoch:ratio
    if rep.emissions_grams is not None:
        rep.equivalents = equivalents(rep.emissions_grams)
    return rep


# ------------------------------------------------------------------------------------------- formatting


def fmt_energy(joules: float | None) -> str:
    if joules is None:
        return "-"
    kwh = joules / JOULES_PER_KWH
    if kwh >= 1:
        return f"{kwh:.3f} kWh ({joules:,.0f} J)"
    if joules >= 3600:
        return f"{joules / 3600:.2f} Wh ({joules:,.0f} J)"
    return f"{joules:.1f} J"


def fmt_grams(grams: float | None) -> str:
    if grams is None:
        return "-"
    if grams >= 1000:
        return f"{grams / 1000:.3f} kg CO2e"
    if grams >= 1:
        return f"{grams:.2f} g CO2e"
    return f"{grams * 1000:.2f} mg CO2e"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


def fmt_time(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _num(v: float | None, unit: str, digits: int = 3) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v:.{digits}g} {unit}".rstrip()


def render_table(r: Report) -> str:
    rows: list[tuple[str, str]] = [
        ("run", r.run_id),
        ("status", r.status),
        ("user / project / model", " / ".join(x or "-" for x in (r.user, r.project, r.model))),
    ]
    if r.team:
        rows.append(("team", r.team))
    rows += [
        ("zone", ", ".join(r.zones) or "-"),
        ("started", fmt_time(r.start_time_seconds)),
        (
            "ended",
            fmt_time(r.end_time_seconds)
            if r.end_time_seconds
            else "- (still running)"
            if r.status == "running"
            else "-",
        ),
        ("duration", fmt_duration(r.duration_seconds)),
        ("energy", fmt_energy(r.energy_joules)),
    ]
    for c, cr in r.components.items():
        rows.append(
            (
                f"  {c}",
                f"{fmt_energy(cr.energy_joules)}, {fmt_grams(cr.emissions_grams)} [{', '.join(cr.sources) or '?'}]",
            )
        )
    rows += [
        ("emissions", fmt_grams(r.emissions_grams)),
        ("mean grid intensity", _num(r.mean_intensity_grams_per_kwh, "g/kWh", 4)),
        ("cost", ", ".join(f"{v:.4f} {cur}" for cur, v in sorted(r.cost.items())) or "-"),
        ("budget", fmt_grams(r.budget_grams)),
        ("budget used", "-" if r.budget_used_ratio is None else f"{r.budget_used_ratio * 100:.1f} %"),
        ("forecast at end", fmt_grams(r.forecast_grams)),
    ]
    if r.power_watts is not None:
        rows.append(("power now", _num(r.power_watts, "W")))
    rows += [
        ("epochs / samples", f"{_num(r.epochs, '', 6)} / {_num(r.samples, '', 6)}"
         + (" (epoch in progress counted)" if r.status == "running" and r.epochs else "")),
        ("energy per sample", _num(r.joules_per_sample, "J")),
        ("CO2e per epoch", fmt_grams(r.grams_per_epoch)),
    ]
    by_name = {f.name: f for f in FACTORS}
    for name, amount in r.equivalents.items():
        rows.append((f"= {name.replace('_', ' ')}", f"{amount:.3g} ({by_name[name].unit})"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append("")
    lines.append(f"Sources: figures read from Prometheus at {r.prometheus}; equivalents: {SOURCE}")
    lines.append("(factors and citations in carbonwatch.equivalents).")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", metavar="RUN_ID", help="the run's id (as `carbonwatch run` printed it)")
    p.add_argument(
        "--prometheus",
        default=None,
        metavar="URL",
        help=f"Prometheus base URL (default {DEFAULT_PROMETHEUS}; env CARBONWATCH_PROMETHEUS_URL)",
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    p.add_argument("--lookback", default="30d", metavar="DURATION", help="how far back to look for the run (30d)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per-query timeout (10)")


def main(args: argparse.Namespace) -> int:
    import os

    url = args.prometheus or os.environ.get("CARBONWATCH_PROMETHEUS_URL") or DEFAULT_PROMETHEUS
    lookback = format_duration(parse_duration(args.lookback, "--lookback"))
    rep = collect(Prometheus(url, timeout=args.timeout), args.run_id, lookback)
    if args.format == "json":
        json.dump(rep.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_table(rep))
    return 0
