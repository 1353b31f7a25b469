"""Cost of the recording rules and alerts for a large simulated fleet.

One HTTP endpoint serves what N exporters publish (each with its own `instance` label, scraped with
honor_labels): node counters, intensity and info, and for R concurrent runs (each on one node) the durable
run energy and emissions counters, power and run info per component; plus the run client's Pushgateway
series (run info and budget) for every run. A real Prometheus evaluates our rule files (prometheus/rules/,
alerting/alerts.yml, alerting/budgets.rules.yml, unchanged) and scrapes itself; we read
`prometheus_rule_group_last_duration_seconds` and `..._interval_seconds` per group once the 15-minute
look-backs are full. "Per 15 s" is the evaluation time all groups need per 15 s of wall time: each group's
last duration times 15 s / its interval.

    .venv/bin/python -m bench.rules_cost [--fleet 1000x10000] [--fleet 100x1000] [--minutes 19] [--ledger]
                                         [--baseline 2ef7e2a --baseline-minutes 12]

`--ledger` also serves what a `carbonwatch ledger` publishes for that fleet (per run its energy, emissions and
budget with labels; per user, project, model and zone the four periods), so the rules' ledger branches are
measured too.

`--baseline REV` measures, side by side on the same machine, the rule files as they were at git revision REV
(2ef7e2a: the self-accumulating design, whose look-backs fill after 10 minutes).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from carbonwatch.stack.config import render_prometheus_config

ROOT = Path(__file__).resolve().parents[1]
ZONES = ["DE", "FR", "PL", "US", "SE", "GB", "IN", "NL"]
COMPONENTS = (("gpu", 0.8), ("cpu", 0.15), ("memory", 0.05))
RULE_FILES = [*sorted((ROOT / "prometheus" / "rules").glob("*.yml")), ROOT / "alerting" / "alerts.yml",
              ROOT / "alerting" / "budgets.rules.yml"]


class Fleet:
    """The exposition of `nodes` exporters and `runs` runs, as functions of time: counters grow at a fixed
    power per run and node. Series text is built once; each scrape only formats the numbers."""

    def __init__(self, nodes: int, runs: int, seed: int = 1, ledger: bool = False) -> None:
        rng = random.Random(seed)
        self.t0 = time.time()
        names = [f"node{i:04d}:9860" for i in range(nodes)]
        static: list[str] = []
        self.counters: list[tuple[str, float]] = []  # (series text, rate per second)
        self.gauges: list[tuple[str, float]] = []
        for i, n in enumerate(names):
            lab = f'instance="{n}",job="carbonwatch"'
            zone = ZONES[i % len(ZONES)]
            static += [
                f'carbonwatch_node_info{{{lab},zone="{zone}",hostname="{n[:8]}",cpu_model="Intel Xeon",gpus="8",'
                'cpu_source="rapl",memory_source="rapl"} 1',
                f'carbonwatch_grid_carbon_intensity_grams_per_kwh{{{lab},zone="{zone}",source="table:owid-2023"}} 300',
                f'carbonwatch_node_intensity_grams_per_kwh{{{lab},zone="{zone}",source="table:owid-2023"}} 300',
                f'carbonwatch_collector_success{{{lab},collector="gpu"}} 1',
                f'carbonwatch_collector_info{{{lab},collector="gpu",status="ok",reason=""}} 1',
                f'carbonwatch_state_restore_status{{{lab},status="restored"}} 1',
                f'carbonwatch_state_write_failures_total{{{lab}}} 0',
                f'carbonwatch_gpu_power_watts{{{lab},gpu="0",uuid="GPU-{i}"}} 2400',
                f'carbonwatch_cpu_power_watts{{{lab},package="0",source="rapl"}} 300',
                f'carbonwatch_memory_power_watts{{{lab},source="rapl"}} 60',
            ]
            for comp, watts in (("gpu", 2400.0), ("cpu", 300.0), ("memory", 60.0)):
                self.counters.append((f'carbonwatch_energy_joules_total{{{lab},component="{comp}"}}', watts))
                self.counters.append((f'carbonwatch_emissions_grams_total{{{lab},component="{comp}"}}',
                                      watts / 3.6e6 * 300))
            self.counters.append((f'carbonwatch_gpu_energy_joules_total{{{lab},gpu="0",uuid="GPU-{i}",'
                                  'source="nvml_counter"}', 2400.0))
        users = [f"user{u:03d}" for u in range(200)]
        projects = [f"proj{p:02d}" for p in range(40)]
        for j in range(runs):
            run_id, node, watts = f"run{j:05d}", names[j % nodes], rng.uniform(100, 700)
            lab = f'instance="{node}",job="carbonwatch",run_id="{run_id}"'
            who = f'user="{users[j % 200]}",project="{projects[j % 40]}",model="m{j % 25}",team="t{j % 10}"'
            static.append(f'carbonwatch_run_info{{{lab},origin="env",{who}}} 1')
            gw = f'job="carbonwatch_run",instance="",run_id="{run_id}"'
            static.append(f'carbonwatch_run_info{{{gw},{who},host="h",status="running"}} 1')
            static.append(f"carbonwatch_run_budget_grams{{{gw}}} 100000")
            for comp, share in COMPONENTS:
                w = watts * share
                self.counters.append((f'carbonwatch_run_energy_joules_total{{{lab},component="{comp}"}}', w))
                self.counters.append((f'carbonwatch_run_emissions_grams_total{{{lab},component="{comp}"}}',
                                      w / 3.6e6 * 300))
                self.gauges.append((f'carbonwatch_run_power_watts{{{lab},component="{comp}"}}', w))
        if ledger:
            self.counters += ledger_series(runs, users, projects)
        self.static = "\n".join(static) + "\n" + "".join(f"{s} {v:.3f}\n" for s, v in self.gauges)

    def text(self) -> bytes:
        dt = time.time() - self.t0
        return (self.static + "".join([f"{s} {r * dt:.6f}\n" for s, r in self.counters])).encode()


def ledger_series(runs: int, users: list[str], projects: list[str]) -> list[tuple[str, float]]:
    """What a ledger serves for the fleet (job carbonwatch-ledger, honor_labels as in prometheus.yml), as series
    growing at the runs' mean rate: per run energy, emissions and budget; per scope and period the figures."""
    lab = 'instance="ledger:9863",job="carbonwatch-ledger"'
    out: list[tuple[str, float]] = []
    for j in range(runs):
        who = f'run_id="run{j:05d}",user="{users[j % 200]}",project="{projects[j % 40]}",model="m{j % 25}",' \
              f'team="t{j % 10}",status="running"'
        out.append((f"carbonwatch_ledger_run_energy_joules{{{lab},{who}}}", 400.0))
        out.append((f"carbonwatch_ledger_run_emissions_grams{{{lab},{who}}}", 400.0 / 3.6e6 * 300))
        out.append((f'carbonwatch_ledger_run_budget_grams{{{lab},run_id="run{j:05d}"}}', 0.0))
    scopes = {"user": users, "project": projects, "model": [f"m{m}" for m in range(25)], "zone": ZONES}
    for scope, values in scopes.items():
        for v in values:
            for period in ("day", "month", "1d", "30d"):
                for kind in ("energy_joules", "emissions_grams"):
                    out.append((f'carbonwatch_ledger_{scope}_{kind}{{{lab},{scope}="{v}",period="{period}"}}', 1.0))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(base: str, expr: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{base}/api/v1/query?query={urllib.parse.quote(expr)}", timeout=30) as r:
        return list(json.load(r)["data"]["result"])


def run(nodes: int, runs: int, minutes: float, rule_files: list[Path] = RULE_FILES,
        ledger: bool = False) -> dict[str, Any]:
    fleet = Fleet(nodes, runs, ledger=ledger)
    cache = {"at": 0.0, "body": b""}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            with lock:
                if time.time() - float(cache["at"]) > 5:  # type: ignore[arg-type]
                    cache["body"], cache["at"] = fleet.text(), time.time()
                body = cache["body"]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)  # type: ignore[arg-type]

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    samples: list[dict[str, Any]] = []
    slowest: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        cfg = render_prometheus_config(ROOT, {"fleet": [f"127.0.0.1:{server.server_address[1]}"],
                                              "prometheus": [f"127.0.0.1:{port}"]}, [], "15s", "15s", tmp / "rules")
        cfg = cfg.replace("- job_name: fleet\n", "- job_name: fleet\n  honor_labels: true\n  scrape_timeout: 10s\n")
        # the committed rule files, unchanged
        cfg = cfg.replace(f"- {(tmp / 'rules').resolve()}/*.yml", "\n".join(f"- {f}" for f in rule_files))
        (tmp / "prometheus.yml").write_text(cfg)
        log = (tmp / "prometheus.log").open("wb")
        proc = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            start = time.time()
            while time.time() - start < minutes * 60:
                time.sleep(30)
                try:
                    durations = query(base, "prometheus_rule_group_last_duration_seconds")
                    intervals = query(base, "prometheus_rule_group_interval_seconds")
                    series = query(base, "prometheus_tsdb_head_series")
                except OSError:
                    continue
                every = {g["metric"]["rule_group"]: float(g["value"][1]) for g in intervals}
                row: dict[str, Any] = {"elapsed_s": round(time.time() - start),
                                       "head_series": int(float(series[0]["value"][1])) if series else 0,
                                       "groups": {}}
                for g in durations:
                    key = g["metric"]["rule_group"]
                    row["groups"][key.split(";")[-1]] = {"last_s": float(g["value"][1]),
                                                         "interval_s": every.get(key, 15.0)}
                row["per_15s"] = sum(v["last_s"] * 15 / v["interval_s"] for v in row["groups"].values())
                row["sum_of_last"] = sum(v["last_s"] for v in row["groups"].values())
                samples.append(row)
                print(f"  t={row['elapsed_s']:5d}s  series {row['head_series']:7d}  per 15 s {row['per_15s']:.3f} s"
                      f"  (sum of last durations {row['sum_of_last']:.3f} s)  "
                      + "  ".join(f"{k.removeprefix('carbonwatch-')} {v['last_s']:.3f}"
                                  for k, v in sorted(row["groups"].items())), flush=True)
            with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=30) as r:
                rules = [(g["name"], rule.get("name"), rule.get("evaluationTime", 0.0))
                         for g in json.load(r)["data"]["groups"] for rule in g["rules"]]
            slowest = sorted(rules, key=lambda x: -x[2])[:10]
            print("  slowest rules:")
            for group, name, secs in slowest:
                print(f"    {secs:.3f} s  {group}  {name}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            server.shutdown()
            server.server_close()
            log.close()
    steady = [s for s in samples if s["elapsed_s"] >= min(16 * 60, minutes * 60 - 180)] or samples[len(samples) // 2:]
    groups = sorted({g for s in steady for g in s["groups"]})
    summary = {
        "per_15s_median_s": statistics.median(s["per_15s"] for s in steady),
        "per_15s_max_s": max(s["per_15s"] for s in steady),
        "groups_median_last_s": {g: statistics.median(s["groups"][g]["last_s"] for s in steady if g in s["groups"])
                                 for g in groups},
        "head_series": steady[-1]["head_series"],
    }
    print(f"  steady (last minutes): {summary['per_15s_median_s']:.3f} s per 15 s (median), "
          f"max {summary['per_15s_max_s']:.3f} s")
    return {"nodes": nodes, "runs": runs, "summary": summary, "samples": samples,
            "slowest_rules": [{"group": g, "rule": n, "seconds": t} for g, n, t in slowest]}


def baseline_files(rev: str, dest: Path) -> list[Path]:
    """The rule files as committed at `rev`, written into `dest`."""
    out = []
    for rel in ("prometheus/rules/carbonwatch.rules.yml", "alerting/alerts.yml", "alerting/budgets.rules.yml"):
        text = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout
        path = dest / rel.replace("/", "_")
        path.write_text(text)
        out.append(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fleet", action="append", default=[], metavar="NODESxRUNS",
                    help="fleet size, repeatable (default 100x1000 and 1000x10000)")
    ap.add_argument("--minutes", type=float, default=19.0, help="per fleet; the look-backs fill after 15")
    ap.add_argument("--baseline", metavar="REV", help="also measure the rule files of this git revision")
    ap.add_argument("--ledger", action="store_true", help="the fleet also has a ledger (its /metrics families)")
    ap.add_argument("--baseline-minutes", type=float, default=12.0)
    args, _ = ap.parse_known_args()
    fleets = [tuple(int(x) for x in f.split("x")) for f in args.fleet] or [(100, 1000), (1000, 10000)]
    out = ROOT / "bench" / "results" / "rules_cost.json"
    try:  # keep the other fleets' figures when one fleet is re-measured
        previous = [f for f in json.loads(out.read_text()).get("fleets", []) if "summary" in f]
    except (OSError, ValueError):
        previous = []
    results = {(f["nodes"], f["runs"], f.get("rules", "current")): f for f in previous}
    for nodes, runs in fleets:
        print(f"rule cost: {nodes} nodes, {runs} concurrent runs", flush=True)
        name = "current+ledger" if args.ledger else "current"
        results[(nodes, runs, name)] = {**run(nodes, runs, args.minutes, ledger=args.ledger), "rules": name}
        if args.baseline:
            print(f"rule cost, rules of {args.baseline}: {nodes} nodes, {runs} concurrent runs", flush=True)
            with tempfile.TemporaryDirectory() as d:
                files = baseline_files(args.baseline, Path(d))
                results[(nodes, runs, args.baseline)] = {
                    **run(nodes, runs, args.baseline_minutes, files), "rules": args.baseline}
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": "2 shared vCPUs, load generator on the same machine",
                               "prometheus": "2.42.0 (Debian)",
                               "fleets": [results[k] for k in sorted(results)]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
