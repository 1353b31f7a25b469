"""What each NVML read costs on real hardware: wall time and this thread's CPU time, per call, spaced out.

Each variant is called `--calls` times 100 ms apart (not in a tight loop, where the driver may answer from a
cache) while a training-like load (bf16 matrix products) keeps the GPU busy, so per-process samples exist.
The field-values variants tell which field makes a read slow; `NvmlSource.read()` is the exporter's whole
read of one GPU. Needs an NVIDIA GPU and torch.

    PYTHONPATH=exporter:. python3 -m bench.nvml_calls [--calls 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pynvml

from carbonwatch.node.sources.nvml import NvmlSource

FI_ENERGY = pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION
FI_AVG, FI_INSTANT = pynvml.NVML_FI_DEV_POWER_AVERAGE, pynvml.NVML_FI_DEV_POWER_INSTANT
LOAD = r"""
import time, torch
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
print("READY", flush=True)
end = time.time() + float(__import__("sys").argv[1])
while time.time() < end:
    for _ in range(20):
        a @ a
    torch.cuda.synchronize()
"""


def cost(call: Any, n: int) -> dict[str, Any]:
    wall, cpu, err = [], [], None
    for _ in range(n):
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            call()
        except pynvml.NVMLError as exc:
            err = str(exc)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
        time.sleep(0.1)
    return {"wall_median_ms": round(statistics.median(wall) * 1e3, 4),
            "wall_p90_ms": round(sorted(wall)[int(0.9 * (n - 1))] * 1e3, 4),
            "cpu_median_ms": round(statistics.median(cpu) * 1e3, 4), **({"error": err} if err else {})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--out", default=os.environ.get("OUT") or ".")
    a = ap.parse_args()
    load = subprocess.Popen([sys.executable, "-c", LOAD, "120"], stdout=subprocess.PIPE, text=True)
    assert load.stdout is not None and load.stdout.readline().strip() == "READY"
    time.sleep(3)
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    since = [int(time.time() * 1e6)]

    def utilization() -> None:
        got = pynvml.nvmlDeviceGetProcessUtilization(h, since[0])
        since[0] = max([since[0]] + [int(s.timeStamp) for s in got])

    source = NvmlSource(pynvml)
    source.read()
    variants = {
        "fields [energy]": lambda: pynvml.nvmlDeviceGetFieldValues(h, [FI_ENERGY]),
        "fields [average]": lambda: pynvml.nvmlDeviceGetFieldValues(h, [FI_AVG]),
        "fields [instant]": lambda: pynvml.nvmlDeviceGetFieldValues(h, [FI_INSTANT]),
        "fields [average, instant]": lambda: pynvml.nvmlDeviceGetFieldValues(h, [FI_AVG, FI_INSTANT]),
        "fields [energy, average, instant]": lambda: pynvml.nvmlDeviceGetFieldValues(h, [FI_ENERGY, FI_AVG,
                                                                                            FI_INSTANT]),
        "nvmlDeviceGetTotalEnergyConsumption": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h),
        "nvmlDeviceGetPowerUsage": lambda: pynvml.nvmlDeviceGetPowerUsage(h),
        "nvmlDeviceGetProcessUtilization (since the newest sample)": utilization,
        "nvmlDeviceGetComputeRunningProcesses": lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(h),
        "NvmlSource.read() (one GPU)": source.read,
    }
    result: dict[str, Any] = {"gpu": str(pynvml.nvmlDeviceGetName(h)),
                              "driver": str(pynvml.nvmlSystemGetDriverVersion()),
                              "calls_each": a.calls, "variants": {}}
    for name, call in variants.items():
        result["variants"][name] = cost(call, a.calls)
    load.kill()
    Path(a.out, "nvml_calls.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
