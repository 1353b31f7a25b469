"""`carbonwatch report RUN_ID`: a run's duration, energy, emissions, cost, budget and efficiency, from the ledger
when one is used (exact long after the TSDB forgot the run), else from Prometheus (carbonwatch.stack.reportdata:
the exporters' own counters, so the per-component lines add up to the total). A resumed run is shown as one
run with its segments; estimated parts are said.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from carbonwatch.durations import format_duration, parse_duration
from carbonwatch.equivalents import FACTORS, SOURCE
from carbonwatch.promql import DEFAULT_URL, Prometheus
from carbonwatch.stack import ledgerclient
from carbonwatch.stack.figures import fmt_cost, fmt_duration, fmt_energy, fmt_grams, fmt_time, significant
from carbonwatch.stack.reportdata import TERMINAL, ComponentReport, Report, UnknownRunError, collect

__all__ = ["TERMINAL", "ComponentReport", "Report", "UnknownRunError", "collect", "render_table"]

DEFAULT_PROMETHEUS = DEFAULT_URL
PROMETHEUS_ENV = "CARBONWATCH_PROMETHEUS"


def _num(v: float | None, unit: str, digits: int = 3) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{significant(v, digits)} {unit}".rstrip()


def _rows(r: Report) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [
        ("run", r.run_id),
        ("status", r.status),
        ("user / project / model", " / ".join(x or "-" for x in (r.user, r.project, r.model))),
    ]
    if r.team:
        rows.append(("team", r.team))
    ended = fmt_time(r.end_time_seconds) if r.end_time_seconds else (
        "- (still running)" if r.status == "running" else "-")
    rows += [("zone", ", ".join(r.zones) or "-"), ("started", fmt_time(r.start_time_seconds)), ("ended", ended),
             ("duration", fmt_duration(r.duration_seconds))]
    for seg in r.segments:
        end = fmt_time(seg.end) if seg.end is not None else "running"
        on = f" on {seg.instance}" if seg.instance else ""
        rows.append((f"  segment {seg.number}",
                     f"{fmt_time(seg.start)} to {end} ({fmt_duration(seg.duration)}){on}"))
    rows.append(("energy", fmt_energy(r.energy_joules)))
    for c, cr in r.components.items():
        sources = f" [{', '.join(cr.sources)}]" if cr.sources else ""
        rows.append((f"  {c}", f"{fmt_energy(cr.energy_joules)}, {fmt_grams(cr.emissions_grams)}{sources}"))
    rows += [
        ("emissions", fmt_grams(r.emissions_grams)),
        ("mean grid intensity", _num(r.mean_intensity_grams_per_kwh, "g/kWh", 4)),
        ("cost", fmt_cost(r.cost) or "-"),
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
    return rows


def render_table(r: Report) -> str:
    rows = _rows(r)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if r.quality:
        lines += ["", "Data quality:"] + [f"  - {note}" for note in r.quality]
    where = "the ledger" if r.source == "ledger" else "Prometheus"
    lines.append("")
    lines.append(f"Sources: figures read from {where} at {r.prometheus}; equivalents: {SOURCE}")
    lines.append("(factors and citations in carbonwatch.equivalents).")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """--prometheus, --ledger, --lookback and --timeout, shared with `carbonwatch job`."""
    p.add_argument("--prometheus", default=None, metavar="URL",
                   help=f"Prometheus base URL (default: env {PROMETHEUS_ENV}, else the stack settings of "
                        f"`carbonwatch stack up`, else {DEFAULT_PROMETHEUS})")
    p.add_argument("--ledger", default=None, metavar="URL",
                   help=f"read the run ledger instead of Prometheus: exact long after Prometheus forgot the run "
                        f"(default: env {ledgerclient.LEDGER_ENV}, else the stack settings; none: Prometheus)")
    p.add_argument("--lookback", default="30d", metavar="DURATION",
                   help="how far back Prometheus is searched (default 30d)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per-query timeout (default 10)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", metavar="RUN_ID", help="the run's id (as `carbonwatch run` printed it)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    add_source_arguments(p)


def main(args: argparse.Namespace) -> int:
    ledger = ledgerclient.ledger_url(args.ledger)
    if ledger:
        rep = ledgerclient.collect(ledger, args.run_id, args.timeout)
    else:
        url = ledgerclient.prometheus_url(args.prometheus) or DEFAULT_PROMETHEUS
        lookback = format_duration(parse_duration(args.lookback, "--lookback"))
        rep = collect(Prometheus(url, timeout=args.timeout), args.run_id, lookback)
    if args.format == "json":
        json.dump(rep.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render_table(rep))
    return 0
