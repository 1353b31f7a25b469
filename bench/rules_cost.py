"""Cost of the recording rules and alerts for a large simulated fleet.

One HTTP endpoint serves the exporter series of N nodes (each with its own `instance` label, scraped with
honor_labels) and the Pushgateway series of R concurrent runs (each run on one node, GPU + CPU + memory
counters and power). A real Prometheus evaluates our rule files, rendered for the chosen interval, and we
read `prometheus_rule_group_last_duration_seconds` per group as the look-back windows fill.

    .venv/bin/python -m bench.rules_cost [--nodes 1000] [--runs 10000] [--interval 15s] [--minutes 4]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from carbonwatch.durations import parse_duration
from carbonwatch.stackconfig import render_prometheus_config, render_rules

ROOT = Path(__file__).resolve().parents[1]
ZONES = ["DE", "FR", "PL", "US", "SE", "GB", "IN", "NL"]


class Fleet:
    def __init__(self, nodes: int, runs: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.t0 = time.time()
        self.nodes = [f"node{i:04d}:9860" for i in range(nodes)]
        self.zone = {n: ZONES[i % len(ZONES)] for i, n in enumerate(self.nodes)}
        self.runs = [(f"run{j:05d}", self.nodes[j % nodes], rng.uniform(100, 700)) for j in range(runs)]
        self.users = [f"user{u:03d}" for u in range(200)]
        self.projects = [f"proj{p:02d}" for p in range(40)]
        static = []
        for n in self.nodes:
            lab = f'instance="{n}",job="carbonwatch"'
            static.append(f'carbonwatch_node_info{{{lab},zone="{self.zone[n]}",hostname="{n[:8]}",'
                          'cpu_model="Intel Xeon",gpus="8",cpu_source="rapl",memory_source="rapl"} 1')
            static.append(f'carbonwatch_grid_carbon_intensity_grams_per_kwh{{{lab},zone="{self.zone[n]}",'
                          'source="table:owid-2023"} 300')
            static.append(f'carbonwatch_collector_success{{{lab},collector="nvml"}} 1')
        for j, (run_id, _node, _w) in enumerate(self.runs):
            lab = f'job="carbonwatch_run",instance="",run_id="{run_id}"'
            static.append(f'carbonwatch_run_info{{{lab},user="{self.users[j % 200]}",project="{self.projects[j % 40]}",'
                          f'model="m{j % 25}",team="t{j % 10}",host="h",status="running"}} 1')
            static.append(f"carbonwatch_run_budget_grams{{{lab}}} 100000")
        self.static = "\n".join(static) + "\n"

    def text(self) -> str:
        dt = time.time() - self.t0
        out = [self.static]
        for run_id, node, watts in self.runs:
            lab = f'instance="{node}",job="carbonwatch",run_id="{run_id}"'
            for comp, share in (("gpu", 0.8), ("cpu", 0.15), ("memory", 0.05)):
                joules = watts * share * dt
                out.append(f'carbonwatch_run_energy_joules_total{{{lab},component="{comp}"}} {joules:.3f}\n')
                out.append(f'carbonwatch_run_power_watts{{{lab},component="{comp}"}} {watts * share:.3f}\n')
        return "".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(base: str, expr: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{base}/api/v1/query?query={urllib.parse.quote(expr)}", timeout=30) as r:
        return list(json.load(r)["data"]["result"])


def run(nodes: int, runs: int, interval: str, minutes: float) -> dict[str, Any]:
    fleet = Fleet(nodes, runs)
    cache = {"at": 0.0, "body": b""}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            with lock:
                if time.time() - cache["at"] > 1:  # type: ignore[operator]
                    cache["body"], cache["at"] = fleet.text().encode(), time.time()
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
        render_rules(ROOT, tmp / "rules", interval)
        port = free_port()
        cfg = render_prometheus_config(ROOT, {"fleet": [f"127.0.0.1:{server.server_address[1]}"],
                                              "prometheus": [f"127.0.0.1:{port}"]}, [], interval, interval,
                                       tmp / "rules")
        cfg = cfg.replace("- job_name: fleet\n", "- job_name: fleet\n  honor_labels: true\n  scrape_timeout: 10s\n")
        (tmp / "prometheus.yml").write_text(cfg)
        log = (tmp / "prometheus.log").open("wb")
        proc = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            start = time.time()
            while time.time() - start < minutes * 60:
                time.sleep(max(parse_duration(interval), 5))
                try:
                    groups = metric(base, "prometheus_rule_group_last_duration_seconds")
                    series = metric(base, "prometheus_tsdb_head_series")
                except OSError:
                    continue
                row = {"elapsed_s": round(time.time() - start, 1),
                       "head_series": int(float(series[0]["value"][1])) if series else 0}
                for g in groups:
                    row[g["metric"]["rule_group"].split(";")[-1]] = float(g["value"][1])
                samples.append(row)
                total = sum(v for k, v in row.items() if k.startswith("carbonwatch-"))
                print(f"  t={row['elapsed_s']:6.0f}s  series {row['head_series']:7d}  all groups {total:.3f} s  "
                      + "  ".join(f"{k.removeprefix('carbonwatch-')} {v:.3f}" for k, v in sorted(row.items())
                                  if k.startswith("carbonwatch-")), flush=True)
            with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=30) as r:
                rules = [(g["name"], rule.get("name"), rule.get("evaluationTime", 0.0))
                         for g in json.load(r)["data"]["groups"] for rule in g["rules"]]
            slowest = sorted(rules, key=lambda x: -x[2])[:8]
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
    return {"nodes": nodes, "runs": runs, "interval": interval, "samples": samples,
            "slowest_rules": [{"group": g, "rule": n, "seconds": t} for g, n, t in slowest]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=10000)
    ap.add_argument("--interval", default="15s")
    ap.add_argument("--minutes", type=float, default=4.0)
    args, _ = ap.parse_known_args()
    print(f"rule cost: {args.nodes} nodes, {args.runs} concurrent runs, interval {args.interval}")
    result = run(args.nodes, args.runs, args.interval, args.minutes)
    out = ROOT / "bench" / "results" / "rules_cost.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
