"""A drop-in `pynvml` for a whole exporter: the real pynvml running on the C-library stub of `nvml_stub`.

A whole exporter runs over it with `python -m tests.fakes.exporter` (the repository root on `sys.path`).
Every attribute is pynvml's own (`nvmlInit`, `NVMLError`, `c_nvmlFieldValue_t`, ...); the first access
installs a default `NvmlStub` under pynvml, set with `configure(...)` or, in a child process, from the
environment variable CARBONWATCH_FAKE_NVML (JSON), e.g.
``{"gpus": 2, "watts": [300, 150], "processes": [{"gpu": 0, "pid": 4242, "sm_util": 90}],
"processes_file": "/tmp/procs.json"}``. `watts`: one constant for every GPU or a list with one per GPU;
without it every GPU follows a square wave between `bursty` [low, high] watts (default [80, 300]) with
`period` seconds (default 10). Process objects: gpu, pid, sm_util, mem_util, used_memory, kind.
`processes_file` (a JSON list of process objects) is read again whenever it changes, so a test can attach
the pid of a process it starts later. Without any of that: 2 GPUs on the default square wave, driven by
real time. Tests that want their own stub build an `NvmlStub` and pass the real `pynvml` instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import pynvml as _pynvml

from tests.fakes.nvml_stub import FakeClock, FakeGpu, FakeProcess, NvmlStub, PowerProfile, bursty

__all__ = ["ENV", "FakeClock", "FakeGpu", "FakeProcess", "NvmlStub", "bursty", "configure", "configure_from_env"]

ENV = "CARBONWATCH_FAKE_NVML"
_default: NvmlStub | None = None


def configure(
    gpus: int | Sequence[FakeGpu] = 2,
    *,
    clock: Callable[[], float] | None = None,
    watts: float | PowerProfile = 100.0,
    **options: Any,
) -> NvmlStub:
    """Install a new stub under pynvml as the default (the previous one is uninstalled) and return it."""
    global _default
    if _default is not None:
        _default.uninstall()
    gpu_list: list[FakeGpu] | int = gpus if isinstance(gpus, int) else list(gpus)
    kwargs: dict[str, Any] = dict(options)
    if clock is not None:
        kwargs["clock"] = clock
    _default = NvmlStub(gpu_list, watts=watts, **kwargs).install()
    return _default


def reset() -> None:
    """Uninstall the default stub (pynvml goes back to the real library on its next nvmlInit)."""
    global _default
    if _default is not None:
        _default.uninstall()
    _default = None


def _process_from(spec: dict[str, Any]) -> tuple[int, FakeProcess]:
    if "pid" not in spec:
        raise ValueError(f"{ENV}: every process needs a pid, got {spec!r}")
    return int(spec.get("gpu", 0)), FakeProcess(
        pid=int(spec["pid"]),
        sm_util=int(spec.get("sm_util", 50)),
        mem_util=int(spec.get("mem_util", 20)),
        used_memory=spec.get("used_memory", 1 << 30),
        kind=str(spec.get("kind", "compute")),
    )


def configure_from_env(environ: dict[str, str] | None = None) -> NvmlStub:
    """The default stub described by CARBONWATCH_FAKE_NVML (JSON; see the module docstring)."""
    env = os.environ if environ is None else environ
    try:
        spec: dict[str, Any] = json.loads(env.get(ENV) or "{}")
    except ValueError as exc:
        raise ValueError(f"{ENV}: not valid JSON: {exc}") from exc
    count = int(spec.get("gpus", 2))
    low, high = (float(w) for w in spec.get("bursty", [80.0, 300.0]))
    profile = bursty(low, high, float(spec.get("period", 10.0)))
    watts = spec.get("watts")
    per_gpu: list[float | PowerProfile]
    if watts is None:
        per_gpu = [profile] * count
    elif isinstance(watts, int | float):
        per_gpu = [float(watts)] * count
    elif isinstance(watts, list) and len(watts) == count:
        per_gpu = [float(w) for w in watts]
    else:
        raise ValueError(f"{ENV}: watts must be a number or a list of {count} numbers (one per GPU), got {watts!r}")
    stub = configure([FakeGpu(i, per_gpu[i]) for i in range(count)])
    fixed = [_process_from(p) for p in spec.get("processes", [])]
    for gpu_index, proc in fixed:
        stub.board[gpu_index].processes.append(proc)
    path = spec.get("processes_file")
    if path:
        seen: list[float] = [-1.0]

        def reload_processes() -> None:
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                return
            if mtime == seen[0]:
                return
            seen[0] = mtime
            try:
                with open(path) as fh:
                    listed = [_process_from(p) for p in json.load(fh)]
            except (OSError, ValueError, KeyError):
                return  # half-written: try again on the next call
            for gpu in stub.board:
                gpu.processes = [p for i, p in fixed if i == gpu.index]
            for gpu_index, proc in listed:
                stub.board[gpu_index].processes.append(proc)

        stub.before_call = reload_processes
    return stub


def stub() -> NvmlStub:
    """The default stub, configured from the environment on first use."""
    return _default if _default is not None else configure_from_env()


def __getattr__(name: str) -> Any:
    """pynvml's own functions, constants, errors and structures, over the default stub."""
    value = getattr(_pynvml, name)
    stub()
    return value
