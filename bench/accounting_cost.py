"""What the exporter's own accounting adds: pricing every sample's energy at the zone's intensity (emissions
counters per run, container and node) and writing the durable state file, side by side in one run.

Three samplers read the same live /proc (plus 1,000 extra sleeping processes, a tenth of them in 100 runs, and
8 fake GPUs) at 1 Hz in turns, so they see the same machine:
  A. energy only (no intensity, no state file) — what the exporter did before;
  B. A + emissions (intensity in use, every run and node component priced per sample);
  C. B + the state file written every `storage.interval` (2 s default; here also every 1 s, the worst case).
The figures are CPU seconds of the sampling thread per wall second (= share of one core at 1 Hz); the goal is an
added cost under 0.1 % of a core. Run: `.venv/bin/python -m bench.accounting_cost [--seconds 30]`.
Results go to bench/results/accounting_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "exporter"))

from carbonwatch.intensity.providers import IntensityInUse  # noqa: E402
from carbonwatch.node.config import ExporterConfig  # noqa: E402
from carbonwatch.node.model import GpuProcessUse, GpuReading  # noqa: E402
from carbonwatch.node.sampler import Sampler, build_sources  # noqa: E402
from carbonwatch.node.state import StateStore  # noqa: E402


class Gpus:
    """8 GPUs with counters, each used by one of the run processes."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0 = time.monotonic()
        self.last_errors: list[str] = []

    def read(self) -> list[GpuReading]:
        e = (time.monotonic() - self.t0) * 300.0
        return [GpuReading(i, f"GPU-{i}", "bench", 300.0, e, 0.9,
                           (GpuProcessUse(self.pids[i % len(self.pids)], sm_util=90.0),)) for i in range(8)]


def sampler(cfg: ExporterConfig, pids: list[int], emissions: bool) -> Sampler:
    src = build_sources(cfg)
    src.nvml = Gpus(pids)
    grid = IntensityInUse("DE", 380.9, "table:owid-2023")
    return Sampler(cfg, src, intensity=(lambda: grid) if emissions else None)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--procs", type=int, default=1000)
    args = ap.parse_args()
    procs = []
    for i in range(args.procs):
        env = dict(os.environ, CARBONWATCH_RUN_ID=f"bench-run-{i // 10}") if i % 10 == 0 else None
        procs.append(subprocess.Popen(["sleep", "3600"], env=env))
    try:
        cfg = ExporterConfig()
        cfg.collectors["intensity"] = False
        run_pids = [p.pid for i, p in enumerate(procs) if i % 10 == 0]
        a, b, c1, c2 = (sampler(cfg, run_pids, e) for e in (False, True, True, True))
        tmp = Path(tempfile.mkdtemp(prefix="cw-bench-state-"))
        stores = {id(c1): (StateStore(tmp / "c1"), 1.0), id(c2): (StateStore(tmp / "c2"), 2.0)}
        cpu = {"A": 0.0, "B": 0.0, "C_1s": 0.0, "C_2s": 0.0}
        state_cpu = {"C_1s": 0.0, "C_2s": 0.0}
        names = {id(a): "A", id(b): "B", id(c1): "C_1s", id(c2): "C_2s"}
        last_write = {id(c1): 0.0, id(c2): 0.0}
        for s in (a, b, c1, c2):
            s.sample_once()
        n = 0
        t_end = time.monotonic() + args.seconds
        while time.monotonic() < t_end:
            t_next = time.monotonic() + 1.0
            order = [a, b, c1, c2]
            order = order[n % 4:] + order[: n % 4]  # rotate, so no sampler always reads a cold /proc first
            for s in order:  # in turns, so each sees the same second of the machine
                t0 = time.thread_time()
                s.sample_once()
                if id(s) in stores:
                    store, every = stores[id(s)]
                    w0 = time.thread_time()
                    if time.monotonic() - last_write[id(s)] >= every:
                        store.write(s.export_state())
                        last_write[id(s)] = time.monotonic()
                    state_cpu[names[id(s)]] += time.thread_time() - w0
                cpu[names[id(s)]] += time.thread_time() - t0
            n += 1
            time.sleep(max(0.0, t_next - time.monotonic()))
        per_s = {k: v / n for k, v in cpu.items()}
        state_size = (tmp / "c2" / "state.json").stat().st_size
        report = {
            "processes": len(procs), "runs": len(run_pids), "gpus": 8, "samples": n,
            "cpu_share_of_one_core_at_1hz": per_s,
            "added_by_emissions": per_s["B"] - per_s["A"],
            "added_by_emissions_and_state_2s": per_s["C_2s"] - per_s["A"],
            "added_by_emissions_and_state_1s": per_s["C_1s"] - per_s["A"],
            "state_write_cpu_per_second": {k: v / n for k, v in state_cpu.items()},
            "state_file_bytes": state_size,
            "goal_added_share": 0.001,
        }
        out = REPO / "bench" / "results" / "accounting_cost.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return 0
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
