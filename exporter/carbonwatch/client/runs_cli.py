"""`carbonwatch runs`: list the runs recorded in the local runs file (table, CSV or JSON lines)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from carbonwatch.client import runsfile
from carbonwatch.client.settings import resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", help="runs file (default: env CARBONWATCH_RUNS_FILE, config run.runs_file, "
                   "or ~/.local/share/carbonwatch/runs.jsonl)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--user", help="only runs of this user")
    p.add_argument("--project", help="only runs of this project")
    p.add_argument("--last", type=int, help="only the last N runs")
    p.add_argument("--config.file", dest="config_file", help="YAML config (env CARBONWATCH_CONFIG)")


def main(args: argparse.Namespace) -> int:
    if args.file:
        path = Path(args.file)
    else:
        s = resolve(config_file=args.config_file)
        path = Path(s.runs_file) if s.runs_file else runsfile_default()
    recs = runsfile.read(path)
    if args.user:
        recs = [r for r in recs if r.get("user") == args.user]
    if args.project:
        recs = [r for r in recs if r.get("project") == args.project]
    if args.last is not None:
        recs = recs[-args.last:] if args.last > 0 else []
    out = sys.stdout
    if args.format == "csv":
        out.write(runsfile.to_csv(recs))
    elif args.format == "json":
        for r in recs:
            out.write(json.dumps(r, sort_keys=True) + "\n")
    else:
        if not recs:
            print(f"no runs recorded in {path}", file=sys.stderr)
            return 0
        head = f"{'RUN ID':<28} {'START':<16} {'USER':<10} {'MODEL':<14} {'STATUS':<9} {'DURATION':>9} " \
               f"{'ENERGY Wh':>10} {'CO2e g':>9}"
        out.write(head + "\n")
        for r in recs:
            start = time.strftime("%Y-%m-%d %H:%M", time.localtime(runsfile.number(r.get("start_time"))))
            # None: measured by a node exporter and not read back here (see `carbonwatch report`)
            kwh, grams = r.get("energy_kwh"), r.get("emissions_grams")
            wh = "-" if kwh is None else f"{runsfile.number(kwh) * 1000.0:.3f}"
            g = "-" if grams is None else f"{runsfile.number(grams):.3f}"
            out.write(
                f"{str(r.get('run_id', ''))[:28]:<28} {start:<16} {str(r.get('user', ''))[:10]:<10} "
                f"{str(r.get('model', ''))[:14]:<14} {str(r.get('status', '')):<9} "
                f"{runsfile.number(r.get('duration_seconds')):>8.1f}s {wh:>10} {g:>9}\n"
            )
    return 0


def runsfile_default() -> Path:
    from carbonwatch.client.settings import default_runs_file

    return default_runs_file()
