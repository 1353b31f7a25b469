"""Overhead of the run client on a training step (goal: under 0.5 % of step time at 1 push per second).

    .venv/bin/python bench/client_overhead.py [--steps 3000] [--repeats 5] [--pushgateway URL]

Times a real PyTorch CPU step (a 2-layer MLP; a pure-Python step without torch) alone and with
`run.progress(samples=..., loss=...)` after every step while the client pushes once per second. Without
--pushgateway it starts a real `prometheus-pushgateway` on a free local port when one is installed.
Also reports the cost of one progress() call. Baseline and tracked rounds are interleaved and the medians
compared, so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from carbonwatch.client.api import Run


def make_step() -> tuple[str, Callable[[], Any]]:
    try:
        import torch
    except ImportError:
        import random

        rng = random.Random(0)

        def py_step() -> float:
            return sum(rng.random() * rng.random() for _ in range(20000))

        return "python", py_step
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    w = torch.randn(64, 1)

    def torch_step() -> Any:
        x = torch.randn(64, 64)
        loss = torch.nn.functional.mse_loss(model(x), x @ w)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        return loss

    return "torch", torch_step


def start_gateway() -> tuple[str | None, subprocess.Popen[bytes] | None]:
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file="],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/-/ready", timeout=0.5)
            return url, proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None, None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pushgateway")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    a = p.parse_args(argv)
    backend, step = make_step()
    gw, proc = (a.pushgateway, None) if a.pushgateway else start_gateway()
    try:
        for _ in range(200):
            step()  # warm-up
        run = Run(run_id="bench-overhead", user="bench", model="mlp", pushgateway=gw, summary=False,
                  local_meter=False, push_interval=1.0, retention=0.0, runs_file="/dev/null")
        base: list[float] = []
        tracked: list[float] = []
        with run:
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    step()
                base.append((time.perf_counter() - t0) / a.steps)
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    loss = step()
                    run.progress(samples=64, loss=loss)
                tracked.append((time.perf_counter() - t0) / a.steps)
            n = 100000
            t0 = time.perf_counter()
            for _ in range(n):
                run.progress(samples=64, loss=0.5)
            call = (time.perf_counter() - t0) / n
            sample_loss = step()
            t0 = time.perf_counter()
            for _ in range(n // 10):
                run.progress(samples=64, loss=sample_loss)
            tensor_call = (time.perf_counter() - t0) / (n // 10)
            pushes = run.pusher.pushes if run.pusher else 0
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    b, t = statistics.median(base), statistics.median(tracked)
    result = {
        "backend": backend,
        "pushgateway": "real" if gw else "none",
        "pushes": pushes,
        "step_seconds": b,
        "tracked_step_seconds": t,
        "overhead_ratio": (t - b) / b,
        "progress_call_seconds": call,
        "progress_call_ratio": call / b,
        "progress_call_with_loss_tensor_seconds": tensor_call,
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(f"backend {backend}, pushgateway {result['pushgateway']}, {pushes} pushes")
        print(f"step {b * 1e6:.1f} us, tracked step {t * 1e6:.1f} us: overhead {result['overhead_ratio']:+.3%} "
              "(median of interleaved rounds; noise included)")
        print(f"one progress() call {call * 1e6:.2f} us = {call / b:.3%} of a step (goal < 0.5 %); "
              f"with the loss tensor {tensor_call * 1e6:.2f} us = {tensor_call / b:.3%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
