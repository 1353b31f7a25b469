"""Cost of the ledger: one sync cycle for a large fleet, and the API's latency over a month of runs.

Sync: the fleet of bench.rules_cost (N exporters' node counters and R runs' counters and run info, plus the
run client's Pushgateway series, all served from one endpoint) scraped by a real Prometheus every 15 s; a
real `carbonwatch ledger serve` (SQLite) syncs every 30 s. We read its /metrics every 10 s (as a scrape
would), and from it each cycle's `carbonwatch_ledger_sync_duration_seconds`, and the ledger's resident memory
(VmRSS, and VmHWM at the end).

API: a month of R runs (1 to 47 hours each on one of N nodes, 3 components, 40 projects, 200 users) written
through the ledger's own store into a fresh SQLite database; the ledger serves it and we time sequential
requests: usage per project and month (the goal), per project and day, the export per project, and a page
of runs of one project.

    .venv/bin/python -m bench.ledger_cost [--fleet 1000x10000] [--cycles 6] [--requests 30] [--skip sync|api]

Goals (issue 16): a sync cycle under 5 s and 200 MB RSS at 1,000 nodes x 10,000 runs; API p99 under 200 ms.
Beside them, the recording rules' cost for the same fleet from bench/results/rules_cost.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.rules_cost import Fleet, free_port, query

ROOT = Path(__file__).resolve().parents[1]
HOUR = 3600
# How often the bench reads the ledger's /metrics: as a Prometheus scrape would (the ledger syncs every 30 s, so
# each cycle is still seen). A /metrics render of 10,000 runs costs ~0.7 s of CPU under the GIL; read every
# second, as before, it took about half of the interpreter from the sync it was measuring.
SCRAPE = 10.0


def serve_fleet(fleet: Fleet) -> ThreadingHTTPServer:
    cache: dict[str, Any] = {"at": 0.0, "body": b""}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            with lock:
                if time.time() - cache["at"] > 5:
                    cache["body"], cache["at"] = fleet.text(), time.time()
                body = cache["body"]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of `pid` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def ledger_metrics(url: str) -> dict[str, float]:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels}


def start_ledger(tmp: Path, prometheus: str, database: str, args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (tmp / "ledger.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "carbonwatch", "ledger", "serve", "--prometheus", prometheus,
                             "--database", database, "--web.listen-address", f"127.0.0.1:{port}", *args],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"ledger exited:\n{(tmp / 'ledger.log').read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("ledger not ready within 120 s")


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fleet_prometheus(tmp: Path, server: ThreadingHTTPServer) -> tuple[subprocess.Popen[Any], str]:
    """A real Prometheus in `tmp` scraping the fleet endpoint every 15 s, and its URL."""
    port = free_port()
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 15s, scrape_timeout: 10s}\nscrape_configs:\n- job_name: fleet\n"
        f"  honor_labels: true\n  static_configs: [{{targets: ['127.0.0.1:{server.server_address[1]}']}}]\n")
    with (tmp / "prometheus.log").open("wb") as log:  # the child keeps its own copy of the descriptor
        prom = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    return prom, f"http://127.0.0.1:{port}"


def sync_cost(nodes: int, runs: int, cycles: int) -> dict[str, Any]:
    fleet = Fleet(nodes, runs)
    server = serve_fleet(fleet)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        prom, base = fleet_prometheus(tmp, server)
        ledger = None
        try:
            want = runs * 3
            while True:  # two scrapes of the whole fleet
                time.sleep(5)
                try:
                    got = query(base, "count(count_over_time(carbonwatch_run_energy_joules_total[1m]) >= 2)")
                except OSError:
                    continue
                if got and int(float(got[0]["value"][1])) >= want:
                    break
            ledger, url = start_ledger(tmp, base, f"sqlite:///{tmp / 'ledger.db'}", ["--sync.interval", "30s"])
            rows = []
            last = 0.0
            while len(rows) < cycles + 1:
                time.sleep(SCRAPE)
                m = ledger_metrics(url)
                at = m.get("carbonwatch_ledger_last_sync_timestamp_seconds", 0.0)
                if at and at != last:
                    last = at
                    rss, hwm = rss_mb(ledger.pid)
                    rows.append({"duration_s": m["carbonwatch_ledger_sync_duration_seconds"], "rss_mb": rss,
                                 "hwm_mb": hwm, "errors": m.get("carbonwatch_ledger_sync_errors_total", 0.0)})
                    print(f"  cycle {len(rows)}: {rows[-1]['duration_s']:.2f} s, RSS {rss:.0f} MB (peak {hwm:.0f} MB)"
                          f", errors {rows[-1]['errors']:.0f}", flush=True)
            steady = rows[1:]
            return {"nodes": nodes, "runs": runs, "counter_series": len(fleet.counters), "cycles": rows,
                    "first_cycle_s": rows[0]["duration_s"],
                    "steady_median_s": statistics.median(r["duration_s"] for r in steady),
                    "steady_max_s": max(r["duration_s"] for r in steady),
                    "rss_max_mb": max(r["rss_mb"] for r in rows), "peak_rss_mb": rows[-1]["hwm_mb"]}
        finally:
            if ledger:
                stop(ledger)
            stop(prom)
            server.shutdown()
            server.server_close()


def month_database(url: str, nodes: int, runs: int, seed: int = 1) -> tuple[float, float]:
    """A month of `runs` runs written through the ledger's store; (month start, end)."""
    from carbonwatch.ledger import db, store

    rng = random.Random(seed)
    now = time.time()
    start = (now - 31 * 86400) // 86400 * 86400
    end = start + 30 * 86400
    engine = db.connect(url)
    db.migrate(engine)
    batches: dict[int, store.Batch] = {}
    for j in range(runs):
        run_id, node = f"run{j:05d}", f"node{j % nodes:04d}:9860"
        zone = ["DE", "FR", "PL", "US", "SE", "GB", "IN", "NL"][j % nodes % 8]
        t0 = start + rng.randrange(0, 29 * 24) * HOUR
        hours = rng.randint(1, 47)
        watts = rng.uniform(100, 700)
        for h in range(hours):
            hour = int(t0 + h * HOUR)
            if hour >= end:
                break
            day = int(hour // 86400)
            batch = batches.setdefault(day, store.Batch(until=float(day * 86400 + 86400)))
            for comp, share in (("gpu", 0.8), ("cpu", 0.15), ("memory", 0.05)):
                e = watts * share * HOUR
                batch.run_cells[(run_id, node, comp, zone, hour)] = [e, e * 300 / 3.6e6, 0.0, 0.0]
            batch.seen[(run_id, node)] = (t0, float(hour + HOUR), None)
            batch.runs[run_id] = {"user": f"user{j % 200:03d}", "project": f"proj{j % 40:02d}", "model": f"m{j % 25}",
                                  "team": f"t{j % 10}", "label_origin": "client", "status": "succeeded",
                                  "budget_grams": 100000.0}
    previous = None
    for day in sorted(batches):
        store.commit(engine, batches[day], now, previous=previous)
        previous = batches[day].until
    engine.dispose()
    return start, end


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def api_cost(nodes: int, runs: int, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        database = f"sqlite:///{tmp / 'ledger.db'}"
        began = time.time()
        start, end = month_database(database, nodes, runs)
        print(f"  a month of {runs} runs written in {time.time() - began:.0f} s "
              f"({(tmp / 'ledger.db').stat().st_size / 1e6:.0f} MB)", flush=True)
        # nothing listens on port 1: the ledger only serves what it holds
        ledger, url = start_ledger(tmp, "http://127.0.0.1:1", database, ["--sync.interval", "1h"])
        month = {"from": str(int(start)), "to": str(int(end))}
        cases = {"usage per project and month": ("/api/v1/usage", {"group_by": "project", "period": "month", **month}),
                 "usage per project and day": ("/api/v1/usage", {"group_by": "project", "period": "day", **month}),
                 "export per project": ("/api/v1/export", {"group_by": "project", **month}),
                 "runs of one project, 100 a page": ("/api/v1/runs", {"project": "proj07", "limit": "100", **month})}
        out: dict[str, Any] = {"runs": runs, "nodes": nodes, "requests": n, "cases": {}}
        try:
            for name, (path, params) in cases.items():
                r = requests.get(url + path, params=params, timeout=60)
                r.raise_for_status()
                rows = len(r.json().get("rows", r.json().get("runs", [])))
                times = []
                for _ in range(n):
                    t = time.perf_counter()
                    requests.get(url + path, params=params, timeout=60).raise_for_status()
                    times.append((time.perf_counter() - t) * 1000)
                out["cases"][name] = {"rows": rows, "p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99),
                                      "max_ms": max(times)}
                print(f"  {name}: {rows} rows, p50 {percentile(times, 50):.1f} ms, "
                      f"p99 {percentile(times, 99):.1f} ms", flush=True)
        finally:
            stop(ledger)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fleet", default="1000x10000", help="NODESxRUNS")
    ap.add_argument("--cycles", type=int, default=6, help="sync cycles after the first")
    ap.add_argument("--requests", type=int, default=30, help="sequential requests per case")
    ap.add_argument("--skip", choices=("sync", "api"), action="append", default=[])
    args = ap.parse_args()
    nodes, runs = (int(x) for x in args.fleet.split("x"))
    out = ROOT / "bench" / "results" / "ledger_cost.json"
    result: dict[str, Any] = json.loads(out.read_text()) if args.skip and out.exists() else {}  # keep the other part
    result.update({"machine": "2 shared vCPUs, load generator and Prometheus on the same machine",
                   "database": "SQLite"})
    if "sync" not in args.skip:
        print(f"sync cycle, {nodes} nodes x {runs} runs, 15 s scrapes, a sync every 30 s", flush=True)
        result["sync"] = sync_cost(nodes, runs, args.cycles)
    if "api" not in args.skip:
        print(f"API over a month of {runs} runs", flush=True)
        result["api"] = api_cost(nodes, runs, args.requests)
    rules = json.loads((ROOT / "bench" / "results" / "rules_cost.json").read_text())
    result["rules_for_comparison"] = {f"{f['nodes']}x{f['runs']}": f["summary"]["per_15s_median_s"]
                                      for f in rules.get("fleets", [])}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
