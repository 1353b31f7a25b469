"""The on-hardware GPU check of docs/accuracy.md, in one run of a few minutes on an NVIDIA GPU node.

What it does, on GPU `--gpu` (default 0):

1. Starts a real `carbonwatch exporter` (1 Hz, its own state directory) and scrapes it every 15 s, as
   Prometheus would.
2. Runs a bursty load (`--seconds`, default 150: bf16 matrix products in bursts of 0.3-2.5 s with idle gaps of
   0.2-1.5 s) as a training run (CARBONWATCH_RUN_ID), which says when its CUDA context is up and when it is
   about to exit. The reference is the GPU's own energy counter read by this script at those two moments; the
   run's `carbonwatch_run_energy_joules_total{component="gpu"}` is compared with it (goal: within 0.5 %).
3. Meanwhile, at 1 Hz: reads the energy counter, the 1 s averaged power and the instant power in one
   field-values call, integrates each power (trapezoid, as the sampler does) and compares it per 36 s window
   with the counter; times one call of each NVML function the exporter uses, and `NvmlSource.read()`.
4. Before the load and during it: the energy field against `nvmlDeviceGetTotalEnergyConsumption`, read back
   to back, and each call timed in a tight loop.
5. Reports MIG mode, the driver, and whether this /proc is in the host's PID namespace.

Without a GPU it runs over the fake NVML (`--fake`: tests.fakes.fake_nvml, constant 300 W) to check the
script itself; those figures mean nothing.

    PYTHONPATH=exporter:. python3 -m bench.gpu_check [--seconds 150] [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pynvml
import requests
from prometheus_client.parser import text_string_to_metric_families

from carbonwatch.node.sources import pidns
from carbonwatch.node.sources.nvml import NvmlSource, field_number
from tests.fakes import exporter as fake_exporter
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]
RUN_ID = "gpu-check-1"
FI_ENERGY = pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION
FI_AVG, FI_INSTANT = pynvml.NVML_FI_DEV_POWER_AVERAGE, pynvml.NVML_FI_DEV_POWER_INSTANT
WINDOW = 36
SCRAPE_EVERY = 15.0  # seconds, as Prometheus would

LOAD = r"""
import os, random, sys, time
seconds, seed, fake = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
if fake:
    end = time.time() + seconds
    print("READY", flush=True)
    while time.time() < end:
        sum(i * i for i in range(20000))
    print("DONE", flush=True)
    sys.exit(0)
import torch
dev = torch.device("cuda")
a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
torch.cuda.synchronize()
rng = random.Random(seed)
print("READY", flush=True)
end = time.time() + seconds
while time.time() < end:
    burst = time.time() + rng.uniform(0.3, 2.5)
    while time.time() < burst:
        for _ in range(20):
            c = a @ b
        torch.cuda.synchronize()
    time.sleep(rng.uniform(0.2, 1.5))
torch.cuda.synchronize()
print("DONE", flush=True)
"""


def ms(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"n": len(v), "median_ms": round(statistics.median(v) * 1e3, 4),
            "p90_ms": round(v[int(0.9 * (len(v) - 1))] * 1e3, 4), "max_ms": round(v[-1] * 1e3, 4)}


def metric(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of `name` whose labels include `labels`."""
    found = [x.value for f in text_string_to_metric_families(text) for x in f.samples
             if x.name == name and all(x.labels.get(k) == v for k, v in labels.items())]
    return sum(found) if found else None


class Gpu:
    """This script's own NVML session on one GPU."""

    def __init__(self, nvml: Any, index: int) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)

    def fields(self) -> tuple[float, float | None, float | None]:
        """(counter J, averaged W, instant W) from one call."""
        vals = self.nvml.nvmlDeviceGetFieldValues(self.handle, [FI_ENERGY, FI_AVG, FI_INSTANT])
        out = [field_number(v) / 1000.0 if int(v.nvmlReturn) == 0 else None for v in vals]
        if out[0] is None:
            raise RuntimeError("the energy field is not served on this GPU")
        return out[0], out[1], out[2]

    def counter(self) -> float:
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)) / 1000.0

    def calls(self) -> dict[str, Any]:
        n, h = self.nvml, self.handle
        since = int((time.time() - 1.0) * 1e6)
        return {
            "nvmlDeviceGetFieldValues(energy, average, instant)":
                lambda: n.nvmlDeviceGetFieldValues(h, [FI_ENERGY, FI_AVG, FI_INSTANT]),
            "nvmlDeviceGetTotalEnergyConsumption": lambda: n.nvmlDeviceGetTotalEnergyConsumption(h),
            "nvmlDeviceGetPowerUsage": lambda: n.nvmlDeviceGetPowerUsage(h),
            "nvmlDeviceGetUtilizationRates": lambda: n.nvmlDeviceGetUtilizationRates(h),
            "nvmlDeviceGetProcessUtilization": lambda: n.nvmlDeviceGetProcessUtilization(h, since),
            "nvmlDeviceGetComputeRunningProcesses": lambda: n.nvmlDeviceGetComputeRunningProcesses(h),
            "nvmlDeviceGetGraphicsRunningProcesses": lambda: n.nvmlDeviceGetGraphicsRunningProcesses(h),
            "nvmlDeviceGetMPSComputeRunningProcesses": lambda: n.nvmlDeviceGetMPSComputeRunningProcesses(h),
        }

    def time_calls(self, repeat: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, call in self.calls().items():
            times: list[float] = []
            err = None
            for _ in range(repeat):
                t0 = time.perf_counter()
                try:
                    call()
                except self.nvml.NVMLError as exc:
                    err = str(exc)
                times.append(time.perf_counter() - t0)
            out[name] = {**ms(times), **({"error": err} if err else {})}
        return out

    def field_vs_call(self, pairs: int) -> dict[str, Any]:
        diffs = []
        for i in range(pairs):
            if i % 2:
                f = self.fields()[0]
                c = self.counter()
            else:
                c = self.counter()
                f = self.fields()[0]
            diffs.append(f - c)
            time.sleep(0.02)
        return {"pairs": pairs, "field_minus_call_J": {"min": round(min(diffs), 3), "max": round(max(diffs), 3),
                                                       "median": round(statistics.median(diffs), 3)}}


class Sampler(threading.Thread):
    """1 Hz: the three fields, one timed call of each function, and a timed NvmlSource.read()."""

    def __init__(self, gpu: Gpu, sources: dict[str, Any], load_pid: list[int]) -> None:
        super().__init__(daemon=True)
        self.gpu, self.sources, self.load_pid = gpu, sources, load_pid
        self.rows: list[tuple[float, float, float | None, float | None]] = []
        self.call_times: dict[str, list[float]] = {}
        self.read_times: dict[str, list[float]] = {name: [] for name in sources}
        self.read_errors: set[str] = set()
        self.samples_per_tick: list[int] = []
        self.load_sm: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        nxt = time.monotonic()
        while not self.stop.is_set():
            t = time.monotonic()
            e, avg, inst = self.gpu.fields()
            self.rows.append((t, e, avg, inst))
            for name, call in self.gpu.calls().items():
                t0 = time.perf_counter()
                try:
                    got = call()
                except self.gpu.nvml.NVMLError:
                    got = None
                self.call_times.setdefault(name, []).append(time.perf_counter() - t0)
                if name == "nvmlDeviceGetProcessUtilization" and got is not None:
                    self.samples_per_tick.append(len(got))
                    self.load_sm += [int(s.smUtil) for s in got if self.load_pid and int(s.pid) == self.load_pid[0]]
            for name, source in self.sources.items():
                t0 = time.thread_time()
                source.read()
                self.read_times[name].append(time.thread_time() - t0)
                self.read_errors.update(source.last_errors)
            nxt += 1.0
            self.stop.wait(max(0.0, nxt - time.monotonic()))


def windows(rows: list[tuple[float, float, float | None, float | None]]) -> dict[str, Any]:
    """Per 36 s window: trapezoid of the averaged and the instant power against the counter's difference."""
    out: dict[str, list[float]] = {"average": [], "instant": []}
    refs = []
    for start in range(0, len(rows) - WINDOW, WINDOW):
        w = rows[start:start + WINDOW + 1]
        ref = w[-1][1] - w[0][1]
        refs.append(ref)
        for key, col in (("average", 2), ("instant", 3)):
            watts = [r[col] for r in w]
            if any(x is None for x in watts):
                continue
            p = [float(x or 0.0) for x in watts]
            est = sum((w[i][0] - w[i - 1][0]) * (p[i] + p[i - 1]) / 2.0 for i in range(1, len(w)))
            out[key].append(est / ref - 1.0)
    return {
        "windows": len(refs),
        "window_energy_J": [round(r, 1) for r in refs],
        **{f"{k}_error_pct": {"min": round(100 * min(v), 2), "max": round(100 * max(v), 2),
                              "each": [round(100 * x, 2) for x in v]} for k, v in out.items() if v},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=150.0)
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fake", action="store_true", help="run over tests.fakes.fake_nvml (checks the script only)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'exporter'}:{ROOT}", "PYTHONUNBUFFERED": "1"}
    procs_file = tmp / "gpu_procs.json"
    config: dict[str, Any] = {"collectors": {"intensity": False}, "process": {"spool_dir": str(tmp / "spool")}}
    if a.fake:
        procs_file.write_text("[]")
        fake = {"gpus": 1, "watts": 300, "processes_file": str(procs_file)}
        env["CARBONWATCH_FAKE_NVML"] = os.environ["CARBONWATCH_FAKE_NVML"] = json.dumps(fake)
        nvml = importlib.import_module("tests.fakes.fake_nvml")
    else:
        nvml = importlib.import_module("pynvml")

    result: dict[str, Any] = {"seconds": a.seconds, "fake": a.fake}
    gpu = Gpu(nvml, a.gpu)
    result["gpu"] = {"name": str(nvml.nvmlDeviceGetName(gpu.handle)),
                     "driver": str(nvml.nvmlSystemGetDriverVersion()),
                     "pynvml": getattr(nvml, "__version__", None) or _dist_version("nvidia-ml-py")}
    try:
        result["gpu"]["mig_mode"] = list(nvml.nvmlDeviceGetMigMode(gpu.handle))
    except nvml.NVMLError as exc:
        result["gpu"]["mig_mode"] = str(exc)
    view = pidns.detect("/proc")
    result["pid_namespace"] = {"host_pids": view.host_pids, "reason": view.reason}
    result["field_vs_call_idle"] = gpu.field_vs_call(40)
    result["call_cost_idle_tight_loop"] = gpu.time_calls(100)

    cfg = tmp / "exporter.yml"
    import yaml
    cfg.write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(out_dir / "gpu_check_exporter.log", "w")
    # the fake NVML reaches the exporter through its constructors (tests/fakes/exporter.py); a real GPU, pynvml
    start = fake_exporter.command() if a.fake else [sys.executable, "-m", "carbonwatch", "exporter"]
    exporter = subprocess.Popen(
        [*start, "--config.file", str(cfg), "--web.listen-address",
         f"127.0.0.1:{port}", "--storage.path", str(tmp / "state"), "--sample-interval", "1s"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/metrics"
    scrapes: list[tuple[float, str]] = []
    try:
        deadline = time.time() + 60
        while True:
            try:
                scrapes.append((time.time(), requests.get(url, timeout=5).text))
                break
            except requests.ConnectionError:
                if exporter.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the exporter did not start; see gpu_check_exporter.log") from None
                time.sleep(0.2)

        sources = {"defaults (counter and per-process samples every 5 s)": NvmlSource(nvml),
                   "every second": NvmlSource(nvml, counter_seconds=0.0, process_seconds=0.0)}
        result["nvml_source_host_pids"] = sources["every second"].host_pids()
        load_pid: list[int] = []
        sampler = Sampler(gpu, sources, load_pid)
        sampler.start()
        load = subprocess.Popen([sys.executable, "-c", LOAD, str(a.seconds), str(a.seed), "1" if a.fake else "0"],
                                env={**env, "CARBONWATCH_RUN_ID": RUN_ID}, stdout=subprocess.PIPE, text=True)
        load_pid.append(load.pid)
        assert load.stdout is not None
        if load.stdout.readline().strip() != "READY":
            raise RuntimeError("the load did not start")
        e_ready, t_ready = gpu.counter(), time.time()
        if a.fake:
            procs_file.write_text(json.dumps([{"gpu": 0, "pid": load.pid, "sm_util": 90, "used_memory": 1 << 30}]))
        time.sleep(5)
        result["call_cost_loaded_tight_loop"] = gpu.time_calls(50)
        result["field_vs_call_loaded"] = gpu.field_vs_call(40)
        next_scrape = time.time() + SCRAPE_EVERY
        line = ""
        while True:
            # scrape every 15 s while the load runs; the load's DONE line ends the loop
            if time.time() >= next_scrape:
                scrapes.append((time.time(), requests.get(url, timeout=5).text))
                next_scrape += SCRAPE_EVERY
            ready = _readable(load.stdout, min(1.0, max(0.0, next_scrape - time.time())))
            if ready:
                line = load.stdout.readline().strip()
                break
        e_done, t_done = gpu.counter(), time.time()
        if line != "DONE":
            raise RuntimeError(f"the load ended without DONE (rc {load.wait()})")
        load.wait(60)
        if a.fake:
            procs_file.write_text("[]")
        time.sleep(4)  # the exporter's samples after the exit
        sampler.stop.set()
        sampler.join()
        final = requests.get(url, timeout=5).text
        scrapes.append((time.time(), final))
        (out_dir / "gpu_check_scrape.txt").write_text(final)

        reference = e_done - e_ready
        run_gpu = metric(final, "carbonwatch_run_energy_joules_total", run_id=RUN_ID, component="gpu") or 0.0
        result["run"] = {
            "load_seconds": round(t_done - t_ready, 1),
            "reference_counter_J": round(reference, 1),
            "run_gpu_J": round(run_gpu, 1),
            "error_pct": round(100 * (run_gpu / reference - 1.0), 3) if reference else None,
            "run_cpu_J": metric(final, "carbonwatch_run_energy_joules_total", run_id=RUN_ID, component="cpu"),
            "gpu_energy_total_J": metric(final, "carbonwatch_gpu_energy_joules_total"),
            "unattributed_gpu_J": metric(final, "carbonwatch_unattributed_energy_joules_total", component="gpu"),
            "gpu_energy_source": re.findall(r'carbonwatch_gpu_energy_joules_total\{[^}]*source="(\w+)"', final),
            "scrapes": len(scrapes),
        }
        result["run"]["run_plus_unattributed_minus_total_J"] = round(
            run_gpu + (result["run"]["unattributed_gpu_J"] or 0.0) - (result["run"]["gpu_energy_total_J"] or 0.0), 6)
        result["power_integration_1hz"] = windows(sampler.rows)
        result["call_cost_1hz_one_call_each"] = {k: ms(v) for k, v in sampler.call_times.items()}
        result["nvml_source_read_1hz_per_gpu_cpu"] = {k: ms(v) for k, v in sampler.read_times.items()}
        result["nvml_source_errors"] = sorted(sampler.read_errors)
        result["process_utilization"] = {
            "samples_per_call": {"min": min(sampler.samples_per_tick, default=0),
                                 "max": max(sampler.samples_per_tick, default=0),
                                 "mean": round(statistics.fmean(sampler.samples_per_tick or [0]), 2)},
            "load_sm_util": {"n": len(sampler.load_sm), "median": statistics.median(sampler.load_sm or [0])},
        }
        for source in sources.values():
            source.close()
    finally:
        exporter.terminate()
        try:
            exporter.wait(20)
        except subprocess.TimeoutExpired:
            exporter.kill()
        log.close()
    logged = (out_dir / "gpu_check_exporter.log").read_text()
    result["exporter_rc"] = exporter.returncode
    result["exporter_warnings"] = [x for x in logged.splitlines() if "WARNING" in x or "ERROR" in x][:20]
    (out_dir / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _readable(stream: Any, timeout: float) -> bool:
    import select
    return bool(select.select([stream], [], [], timeout)[0])


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
