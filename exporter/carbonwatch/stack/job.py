"""`carbonwatch job JOBID[,JOBID...]`: a SLURM job's energy, emissions and cost from Prometheus, the way
`sacct` prints accounting.

A job is the run `slurm-<cluster>-<jobid>` (the exporter names it from the job's cgroup or SLURM_JOB_ID; see
docs/slurm.md). Every figure is the last value within --lookback of the recorded series of
prometheus/rules/ (`run_id:carbonwatch_energy_joules:total`, `..._emissions_grams:total`, `..._cost:total`,
`run_id:carbonwatch_run_info:last`), else of the exporters' own run counters summed over nodes (a stack
without the rules). Start and End are the first sample of the job's counters and the last one with power
drawn, to within a minute.

    $ carbonwatch job 4242
    JobID Cluster User  Account JobName   Elapsed  EnergyKWh CO2eGrams Cost
    ----- ------- ----- ------- --------- -------- --------- --------- ----------
    4242  hpc1    alice physics train-gpt 00:30:00 1.000     400.0     0.2500 EUR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from carbonwatch.contracts import JOULES_PER_KWH
from carbonwatch.durations import format_duration, parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.node.config import SLURM_CLUSTER_RE
from carbonwatch.promql import Prometheus
from carbonwatch.stack.report import DEFAULT_PROMETHEUS

JOB_RE = re.compile(r"^\d{1,20}$")
FIELDS = ("JobID", "Cluster", "User", "Account", "JobName", "Team", "Start", "End", "Elapsed", "EnergyKWh",
          "CO2eGrams", "Cost", "RunID", "Origin")
DEFAULT_FIELDS = ("JobID", "Cluster", "User", "Account", "JobName", "Elapsed", "EnergyKWh", "CO2eGrams", "Cost")


@dataclass
class JobRow:
    job_id: str
    cluster: str
    run_id: str
    user: str = ""
    account: str = ""
    job_name: str = ""
    team: str = ""
    origin: str = ""
    start: float | None = None
    end: float | None = None
    energy_joules: float | None = None
    emissions_grams: float | None = None
    cost: dict[str, float] = field(default_factory=dict)

    @property
    def elapsed(self) -> float | None:
        return None if self.start is None or self.end is None else max(0.0, self.end - self.start)


def parse_job_ids(values: Sequence[str]) -> list[str]:
    """`123`, `123,124` or several arguments, in order, without repeats. ConfigError names a bad one."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if not JOB_RE.match(part):
                hint = ""
                if re.match(r"^\d+[_+]\d+$", part):
                    hint = " (an array task or het-job component: give its own job id, `sacct -j ... -o JobIDRaw`)"
                raise ConfigError(f"JOBID: {part!r} is not a SLURM job id{hint}")
            if part not in out:
                out.append(part)
    if not out:
        raise ConfigError("JOBID: give at least one job id")
    return out


def _sel(job: str, cluster: str | None) -> str:
    if cluster:
        return f'run_id="slurm-{cluster}-{job}"'
    return f'run_id=~"slurm-.+-{job}"'


def _clusters_of(run_id: str, job: str) -> str:
    return run_id[len("slurm-") : -(len(job) + 1)]


def collect_jobs(prom: Prometheus, jobs: Sequence[str], cluster: str | None, lookback: str,
                 at: float | None = None) -> list[JobRow]:
    """One row per (cluster, job) Prometheus knows, in the order asked."""
    rows: list[JobRow] = []
    for job in jobs:
        sel = _sel(job, cluster)

        def last(name: str, sel: str = sel) -> str:
            fn = "max_over_time" if name.endswith(":total") else "last_over_time"  # totals: see docs/rules.md
            return f"{fn}({name}{{{sel}}}[{lookback}])"

        energy = prom.by_label(f"max by (run_id) ({last('run_id:carbonwatch_energy_joules:total')})", "run_id", at)
        if not energy:  # no recording rules: the exporters' run counters, summed over nodes and components
            energy = prom.by_label(
                "sum by (run_id) (max by (run_id, instance, component) "
                f"({last('carbonwatch_run_energy_joules_total')}))", "run_id", at)
        grams = prom.by_label(f"max by (run_id) ({last('run_id:carbonwatch_emissions_grams:total')})", "run_id", at)
        if not grams:
            grams = prom.by_label(
                "sum by (run_id) (max by (run_id, instance, component) "
                f"({last('carbonwatch_run_emissions_grams_total')}))", "run_id", at)
        info = prom.query(last("run_id:carbonwatch_run_info:last"), at) + prom.query(last("carbonwatch_run_info"), at)
        run_ids = sorted(set(energy) | set(grams) | {r["metric"].get("run_id", "") for r in info} - {""})
        for rid in run_ids:
            row = JobRow(job, _clusters_of(rid, job), rid, energy_joules=energy.get(rid),
                         emissions_grams=grams.get(rid))
            for r in info:
                m = r["metric"]
                if m.get("run_id") != rid:
                    continue
                row.user = row.user or m.get("user", "")
                row.account = row.account or m.get("project", "")
                row.job_name = row.job_name or m.get("model", "")
                row.team = row.team or m.get("team", "")
                row.origin = row.origin or m.get("origin", "")
            one = f'run_id="{rid}"'
            for r in prom.query(f"max_over_time(run_id:carbonwatch_cost:total{{{one}}}[{lookback}])", at):
                cur = r["metric"].get("currency", "")
                row.cost[cur] = max(row.cost.get(cur, 0.0), float(r["value"][1]))
            row.start = prom.scalar(
                f"min(min_over_time(timestamp(carbonwatch_run_energy_joules_total{{{one}}})[{lookback}:1m]))", at)
            row.end = prom.scalar(
                f"max(max_over_time(timestamp(sum by (run_id) (carbonwatch_run_power_watts{{{one}}}) > 0)"
                f"[{lookback}:1m]))", at)
            rows.append(row)
    return rows


def fmt_elapsed(seconds: float | None) -> str:
    """sacct's [DD-]HH:MM:SS."""
    if seconds is None:
        return ""
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def _time(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts))


def cell(row: JobRow, name: str) -> str:
    if name == "EnergyKWh":
        return "" if row.energy_joules is None else f"{row.energy_joules / JOULES_PER_KWH:.3f}"
    if name == "CO2eGrams":
        return "" if row.emissions_grams is None else f"{row.emissions_grams:.1f}"
    if name == "Cost":
        return "+".join(f"{v:.4f} {cur}".strip() for cur, v in sorted(row.cost.items()))
    values = {
        "JobID": row.job_id, "Cluster": row.cluster, "User": row.user, "Account": row.account,
        "JobName": row.job_name, "Team": row.team, "Start": _time(row.start), "End": _time(row.end),
        "Elapsed": fmt_elapsed(row.elapsed), "RunID": row.run_id, "Origin": row.origin,
    }
    return values[name]


def parse_fields(value: str | None) -> tuple[str, ...]:
    if not value:
        return DEFAULT_FIELDS
    by_lower = {f.lower(): f for f in FIELDS}
    out: list[str] = []
    for part in value.split(","):
        name = by_lower.get(part.strip().lower())
        if name is None:
            raise ConfigError(f"--format: {part.strip()!r} is not a field (fields: {', '.join(FIELDS)})")
        out.append(name)
    return tuple(out)


def render(rows: Sequence[JobRow], fields: Sequence[str], parsable: bool = False, header: bool = True) -> str:
    table = [[cell(r, f) for f in fields] for r in rows]
    if parsable:  # sacct --parsable2: '|' between fields, none at the end
        lines = (["|".join(fields)] if header else []) + ["|".join(t) for t in table]
        return "\n".join(lines)
    widths = [max([len(f)] + [len(t[i]) for t in table]) for i, f in enumerate(fields)]
    lines = []
    if header:
        lines.append(" ".join(f.ljust(w) for f, w in zip(fields, widths, strict=True)).rstrip())
        lines.append(" ".join("-" * w for w in widths))
    lines += [" ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)).rstrip() for t in table]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("jobs", nargs="+", metavar="JOBID", help="SLURM job id(s): 123, or 123,124, or several")
    p.add_argument("-M", "--cluster", metavar="NAME",
                   help="the cluster name in the run id (the exporters' slurm.cluster; default: any cluster)")
    p.add_argument("-o", "--format", dest="fields", metavar="FIELDS",
                   help=f"comma-separated fields (default {','.join(DEFAULT_FIELDS)}; all: {','.join(FIELDS)})")
    p.add_argument("-P", "--parsable2", action="store_true", help="'|' between fields, as sacct -P")
    p.add_argument("-n", "--noheader", action="store_true", help="no header lines")
    p.add_argument("--json", action="store_true", help="JSON: one object per job")
    p.add_argument("--prometheus", metavar="URL",
                   help=f"Prometheus base URL (default {DEFAULT_PROMETHEUS}; env CARBONWATCH_PROMETHEUS_URL)")
    p.add_argument("--lookback", default="30d", metavar="DURATION", help="how far back to look (default 30d)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="per-query timeout (10)")


def main(args: argparse.Namespace) -> int:
    jobs = parse_job_ids(args.jobs)
    if args.cluster is not None and not SLURM_CLUSTER_RE.match(args.cluster):
        raise ConfigError(f"--cluster: {args.cluster!r} is not a cluster name (letters, digits, '_', '.', '-')")
    fields = parse_fields(args.fields)
    url = args.prometheus or os.environ.get("CARBONWATCH_PROMETHEUS_URL") or DEFAULT_PROMETHEUS
    lookback = format_duration(parse_duration(args.lookback, "--lookback"))
    rows = collect_jobs(Prometheus(url, timeout=args.timeout), jobs, args.cluster, lookback)
    found = {r.job_id for r in rows}
    for job in jobs:
        if job not in found:
            where = f" on cluster {args.cluster}" if args.cluster else ""
            print(f"carbonwatch job: job {job}{where} is unknown to Prometheus at {url} in the last {lookback} "
                  "(is the exporter on its nodes, with slurm enabled?)", file=sys.stderr)
    if args.json:
        out = [dict(asdict(r), elapsed_seconds=r.elapsed) for r in rows]
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif rows:
        print(render(rows, fields, parsable=args.parsable2, header=not args.noheader))
    return 0 if len(found) == len(jobs) else 1
