"""`carbonwatch job JOBID[,JOBID...]`: a SLURM job's energy, emissions and cost, the way `sacct` prints
accounting.

A job is the run `slurm-<cluster>-<jobid>` (the exporter names it from the job's cgroup or SLURM_JOB_ID; see
docs/slurm.md). Each job's figures are those `carbonwatch report` shows for its run (one reader,
carbonwatch.stack.reportdata, and one formatting, carbonwatch.stack.figures): from the ledger when one is used
(--ledger or CARBONWATCH_LEDGER), else from the exporters' own counters in Prometheus. Start and End are the
run's own (pushed by the run client), else its counters' first sample and the last sample where its energy
grew. An unknown job exits 2, as an unknown run does for `carbonwatch report`.

    $ carbonwatch job 4242
    JobID Cluster User  Account JobName   Elapsed  Energy   CO2e     Cost
    ----- ------- ----- ------- --------- -------- -------- -------- --------
    4242  hpc1    alice physics train-gpt 00:30:00 1.00 kWh 400 g    0.25 EUR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from carbonwatch.contracts import JOULES_PER_KWH
from carbonwatch.durations import format_duration, parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.node.config import SLURM_CLUSTER_RE
from carbonwatch.promql import Prometheus
from carbonwatch.stack import ledgerclient
from carbonwatch.stack.figures import fmt_cost, fmt_elapsed, fmt_energy, fmt_grams, fmt_sacct_time, significant
from carbonwatch.stack.report import DEFAULT_PROMETHEUS, add_source_arguments
from carbonwatch.stack.reportdata import Report, UnknownRunError, collect

JOB_RE = re.compile(r"^\d{1,20}$")
FIELDS = ("JobID", "Cluster", "User", "Account", "JobName", "Team", "Start", "End", "Elapsed", "Energy", "CO2e",
          "EnergyKWh", "CO2eGrams", "Cost", "RunID", "Origin", "State")
DEFAULT_FIELDS = ("JobID", "Cluster", "User", "Account", "JobName", "Elapsed", "Energy", "CO2e", "Cost")


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
    status: str = ""
    quality: list[str] = field(default_factory=list)

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


def _row(job: str, rep: Report, origin: str = "") -> JobRow:
    return JobRow(job, _clusters_of(rep.run_id, job), rep.run_id, user=rep.user, account=rep.project,
                  job_name=rep.model, team=rep.team, origin=origin, start=rep.start_time_seconds,
                  end=rep.end_time_seconds, energy_joules=rep.energy_joules, emissions_grams=rep.emissions_grams,
                  cost=dict(rep.cost), status=rep.status, quality=list(rep.quality))


def collect_jobs(prom: Prometheus, jobs: Sequence[str], cluster: str | None, lookback: str,
                 at: float | None = None) -> list[JobRow]:
    """One row per (cluster, job) Prometheus knows, in the order asked."""
    rows: list[JobRow] = []
    for job in jobs:
        sel = _sel(job, cluster)
        found = " or ".join(f"count by (run_id) (last_over_time({name}{{{sel}}}[{lookback}]))" for name in (
            "carbonwatch_run_energy_joules_total", "run_id:carbonwatch_energy_joules:total",
            "run_id:carbonwatch_run_info:last", "carbonwatch_run_info"))
        for rid in sorted(prom.by_label(found, "run_id", at)):
            origins = prom.by_label(f"count by (origin) (last_over_time(carbonwatch_run_info{{run_id=\"{rid}\"}}"
                                    f"[{lookback}]))", "origin", at)
            rows.append(_row(job, collect(prom, rid, lookback, at), next((o for o in sorted(origins) if o), "")))
    return rows


def collect_jobs_from_ledger(url: str, jobs: Sequence[str], cluster: str | None,
                             timeout: float = 10.0) -> list[JobRow]:
    """One row per job the ledger knows, on `cluster` (default: SLURM_CLUSTER_NAME, else `default`, as the
    exporter names runs)."""
    name = cluster or os.environ.get("SLURM_CLUSTER_NAME") or "default"
    rows = []
    for job in jobs:
        data = ledgerclient.fetch_run(url, f"slurm-{name}-{job}", timeout)
        if data is not None:
            rows.append(_row(job, ledgerclient.report_from_ledger(url, data), "ledger"))
    return rows


def cell(row: JobRow, name: str) -> str:
    """One field: Energy and CO2e readable with their unit (J/Wh/kWh, mg/g/kg), EnergyKWh and CO2eGrams as
    plain numbers in that unit, all with three significant figures (a 14 s job is never `0.000`)."""
    if name == "EnergyKWh":
        return "" if row.energy_joules is None else significant(row.energy_joules / JOULES_PER_KWH)
    if name == "CO2eGrams":
        return "" if row.emissions_grams is None else significant(row.emissions_grams)
    if name == "Energy":
        return "" if row.energy_joules is None else fmt_energy(row.energy_joules)
    if name == "CO2e":
        return "" if row.emissions_grams is None else fmt_grams(row.emissions_grams, unit="")
    values = {
        "JobID": row.job_id, "Cluster": row.cluster, "User": row.user, "Account": row.account,
        "JobName": row.job_name, "Team": row.team, "Start": fmt_sacct_time(row.start),
        "End": fmt_sacct_time(row.end), "Elapsed": fmt_elapsed(row.elapsed), "RunID": row.run_id,
        "Origin": row.origin, "State": row.status, "Cost": fmt_cost(row.cost),
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
    add_source_arguments(p)


def main(args: argparse.Namespace) -> int:
    jobs = parse_job_ids(args.jobs)
    if args.cluster is not None and not SLURM_CLUSTER_RE.match(args.cluster):
        raise ConfigError(f"--cluster: {args.cluster!r} is not a cluster name (letters, digits, '_', '.', '-')")
    fields = parse_fields(args.fields)
    ledger = ledgerclient.ledger_url(args.ledger)
    if ledger:
        where = f"the ledger at {ledger}"
        rows = collect_jobs_from_ledger(ledger, jobs, args.cluster, args.timeout)
    else:
        url = ledgerclient.prometheus_url(args.prometheus) or DEFAULT_PROMETHEUS
        lookback = format_duration(parse_duration(args.lookback, "--lookback"))
        where = f"Prometheus at {url} in the last {lookback}"
        rows = collect_jobs(Prometheus(url, timeout=args.timeout), jobs, args.cluster, lookback)
    found = {r.job_id for r in rows}
    if args.json:
        out = [dict(asdict(r), elapsed_seconds=r.elapsed) for r in rows]
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif rows:
        print(render(rows, fields, parsable=args.parsable2, header=not args.noheader))
        for r in rows:
            for note in r.quality:
                print(f"carbonwatch job: {r.job_id}: {note}", file=sys.stderr)
    missing = [job for job in jobs if job not in found]
    if missing:
        on = f" on cluster {args.cluster}" if args.cluster else ""
        raise UnknownRunError(f"job {', '.join(missing)}{on} is unknown to {where} "
                              "(is the exporter on its nodes, with slurm enabled?)")
    return 0
