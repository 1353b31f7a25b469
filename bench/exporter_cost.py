"""Exporter cost: CPU per sample and scrape latency with 1,000 live processes and 8 fake GPUs,
side by side in one run with Debian's prometheus-process-exporter scanning the same processes
(and CodeCarbon's tracker at 1 s as a reference, when it is installed).

Goals (issue 2): under 1 % of one core at 1 Hz; no more CPU than process-exporter for the same scan;
scrape p99 under 10 ms. Run: `.venv/bin/python -m bench.exporter_cost [--seconds 30] [--procs 1000]`.
Results go to bench/results/exporter_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.exporter_proc import start_exporter  # noqa: E402
from tests.support import free_port  # noqa: E402


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def spawn_sleepers(n: int) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ, CARBONWATCH_RUN_ID="bench-run")
    procs = []
    for i in range(n):
        # a tenth of them belong to a run, like DataLoader workers
        procs.append(subprocess.Popen(["sleep", "3600"], env=env if i % 10 == 0 else None))
    return procs


def measure(seconds: float, pids: dict[str, int], scrape: dict[str, str],
            every: dict[str, float]) -> dict[str, dict[str, float]]:
    """CPU seconds of each process over the window while each `scrape` URL is fetched every `every[name]`
    seconds (1 s unless given)."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    latencies: dict[str, list[float]] = {k: [] for k in scrape}
    t_end = time.monotonic() + seconds
    next_t = time.monotonic()
    due = dict.fromkeys(scrape, next_t)
    while time.monotonic() < t_end:
        for name, url in scrape.items():
            if time.monotonic() < due[name]:
                continue
            due[name] += every.get(name, 1.0)
            t0 = time.perf_counter()
            requests.get(url, timeout=10).raise_for_status()
            latencies[name].append(time.perf_counter() - t0)
        next_t += 1.0
        time.sleep(max(0.0, next_t - time.monotonic()))
    window = seconds
    out: dict[str, dict[str, float]] = {}
    for k, p in pids.items():
        used = cpu_seconds(p) - before[k]
        out[k] = {"cpu_seconds": used, "core_percent": 100.0 * used / window}
    for k, lat in latencies.items():
        lat.sort()
        out.setdefault(k, {})
        out[k]["scrape_p50_ms"] = 1000 * statistics.median(lat)
        out[k]["scrape_p99_ms"] = 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return out


def scrape_burst(url: str, n: int = 300) -> dict[str, float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        requests.get(url, timeout=10).raise_for_status()
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return {"p50_ms": 1000 * lat[n // 2], "p99_ms": 1000 * lat[int(0.99 * n) - 1], "n": n}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--scrape-interval", type=float, default=15.0,
                    help="how often carbonwatch is scraped (Prometheus' default 15 s); it samples at 1 Hz regardless. "
                         "process-exporter scans on each scrape, so it is scraped at 1 Hz: the same scan rate")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "exporter_cost.json"))
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    sleepers = spawn_sleepers(a.procs)
    children: list[subprocess.Popen[bytes]] = []
    exp = None
    try:
        fake = {"gpus": 8, "watts": [300, 250, 200, 150, 100, 80, 60, 50],
                "processes": [{"gpu": i, "pid": sleepers[i * 10].pid, "sm_util": 50} for i in range(8)]}
        exp = start_exporter(tmp, {"sample_interval": "1s", "collectors": {"intensity": False}},
                             env={"CARBONWATCH_FAKE_NVML": json.dumps(fake)}, nvml="tests.fakes.fake_nvml")
        pids = {"carbonwatch": exp.proc.pid}
        scrape = {"carbonwatch": exp.url}
        pe_bin = shutil.which("prometheus-process-exporter") or shutil.which("process-exporter")
        if pe_bin:
            cfg = tmp / "pe.yml"
            cfg.write_text("process_names:\n  - name: '{{.Comm}}'\n    cmdline:\n    - '.+'\n")
            port = free_port()
            pe = subprocess.Popen([pe_bin, "-config.path", str(cfg), "-web.listen-address", f"127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            children.append(pe)
            pids["process-exporter"] = pe.pid
            scrape["process-exporter"] = f"http://127.0.0.1:{port}/metrics"
        try:
            import codecarbon  # noqa: F401

            cc = subprocess.Popen([sys.executable, "-c", (
                "from codecarbon import OfflineEmissionsTracker\nimport time\n"
                "t=OfflineEmissionsTracker(country_iso_code='DEU', measure_power_secs=1, save_to_file=False,"
                " log_level='error')\nt.start()\ntime.sleep(3600)")], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            children.append(cc)
            pids["codecarbon"] = cc.pid
        except ImportError:
            pass
        deadline = time.monotonic() + 15
        for url in scrape.values():
            while True:
                try:
                    requests.get(url, timeout=2).raise_for_status()
                    break
                except requests.RequestException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        time.sleep(3)  # let everyone reach steady state (process-exporter's first scan, codecarbon's start)
        res = measure(a.seconds, pids, scrape, {"carbonwatch": a.scrape_interval})
        burst = scrape_burst(exp.url)
        live = len(psutil.pids())
        n_series = sum(1 for line in exp.scrape().splitlines() if line and not line.startswith("#"))
    finally:
        if exp is not None:
            exp.stop()
        for c in children:
            c.terminate()
            c.wait()
        for s in sleepers:
            s.kill()
        for s in sleepers:
            s.wait()
    cw = res["carbonwatch"]
    report = {
        "machine": {"cpus": os.cpu_count(), "processes_during_run": live},
        "setup": {"live_processes": a.procs, "fake_gpus": 8, "window_seconds": a.seconds, "sample_hz": 1,
                  "carbonwatch_scrape_interval_s": a.scrape_interval, "process_exporter_scrape_interval_s": 1.0},
        "results": res,
        "carbonwatch_scrape_burst": burst,
        "carbonwatch_series": n_series,
        "ratios": {},
    }
    if "process-exporter" in res:
        pe_cpu = res["process-exporter"]["cpu_seconds"]
        report["ratios"]["carbonwatch_cpu_over_process_exporter"] = cw["cpu_seconds"] / pe_cpu if pe_cpu else None
    if "codecarbon" in res:
        report["ratios"]["carbonwatch_cpu_over_codecarbon"] = (
            cw["cpu_seconds"] / res["codecarbon"]["cpu_seconds"] if res["codecarbon"]["cpu_seconds"] else None)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'process':<18} {'% of one core':>14} {'scrape p50 ms':>14} {'scrape p99 ms':>14}")
    for k, v in res.items():
        print(f"{k:<18} {v['core_percent']:>14.2f} {v.get('scrape_p50_ms', float('nan')):>14.2f} "
              f"{v.get('scrape_p99_ms', float('nan')):>14.2f}")
    print(f"carbonwatch scrape burst ({burst['n']} back to back): p50 {burst['p50_ms']:.2f} ms, "
          f"p99 {burst['p99_ms']:.2f} ms; {n_series} series")
    for k, v in report["ratios"].items():
        print(f"{k}: {v:.2f}" if v is not None else f"{k}: n/a")
    return 0


if __name__ == "__main__":
    sys.exit(main())
