"""A fake of the `pynvml` API subset carbonwatch uses: a small, deterministic GPU simulator.

Same function names, signatures, return shapes and errors as nvidia-ml-py's `pynvml`. The constants, the
`NVMLError` class with its generated subclasses (`NVMLError_NotSupported`, `NVMLError_NotFound`,
`NVMLError_GpuIsLost`, ...) and the ctypes structures (`c_nvmlFieldValue_t`, `c_nvmlUtilization_t`,
`c_nvmlProcessUtilizationSample_t`, process info objects) are pynvml's own, imported from it, so the code
under test sees exactly the objects it would see on a real node (importing pynvml never loads
libnvidia-ml; only `nvmlInit` does, and this fake does not call it).

The hardware model (from measurements on an H100): the energy counter and the averaged power update every
`TICK` (100 ms). Each tick the GPU draws `profile(t)` watts (t = seconds since the simulator started); the
counter (integer mJ, `nvmlDeviceGetTotalEnergyConsumption`) adds watts x 0.1 s; `NVML_FI_DEV_POWER_AVERAGE`
is the mean of the last 10 ticks (1 s); `NVML_FI_DEV_POWER_INSTANT` and `nvmlDeviceGetPowerUsage` the
latest tick. `FakeGpu.true_energy_joules` is the ground truth (unaffected by counter resets).

Two ways to use it:

1. In a test, build an isolated simulator and inject it (it has every attribute the module has)::

       from tests.fakes.fake_nvml import FakeClock, FakeProcess, make_fake_nvml
       clock = FakeClock()
       nvml = make_fake_nvml(gpus=8, clock=clock, watts=300.0)
       nvml.gpus[0].processes.append(FakeProcess(pid=1234, sm_util=80))
       source = NvmlSource(nvml)
       clock.advance(15)
       source.read()

   Options: per-GPU `FakeGpu(...)` specs (`energy_counter=False` for a Kepler-era GPU, missing power
   fields, `process_utilization=False`), `set_power()`, `reset_counter()` (driver reload, counter back to 0),
   `driver_reload()` (all counters reset and the NVML session invalidated), `lose()` (GPU is lost),
   `init_error` (nvmlInit fails), `inject_error()`, and `calls` (a Counter of calls per function).
   `cost_seconds` adds up what the calls would have cost on an H100 where that was measured.

2. As a drop-in module loaded by dotted path (`gpu.nvml_module: tests.fakes.fake_nvml`, with the repository
   root on `sys.path`): the module-level functions act on a default simulator, set with `configure(...)`
   or, in a child process, from the environment variable CARBONWATCH_FAKE_NVML (JSON), e.g.
   ``{"gpus": 2, "watts": [300, 150], "processes": [{"gpu": 0, "pid": 4242, "sm_util": 90}],
   "processes_file": "/tmp/procs.json"}``. `watts`: one constant for every GPU or a list with one per GPU;
   without it every GPU follows a square wave between `bursty` [low, high] watts (default [80, 300]) with
   `period` seconds (default 10). Process objects: gpu, pid, sm_util, mem_util, used_memory, kind.
   `processes_file` (a JSON list of process objects) is read again whenever it changes, so a test can
   attach the pid of a process it starts later. Without any of that: 2 GPUs on the default square wave,
   driven by real time.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pynvml as _pynvml
from pynvml import (
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_INVALID_ARGUMENT,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    NVML_ERROR_UNINITIALIZED,
    NVML_FI_DEV_POWER_AVERAGE,
    NVML_FI_DEV_POWER_INSTANT,
    NVML_SUCCESS,
    NVML_VALUE_TYPE_UNSIGNED_INT,
    NVMLError,
    c_nvmlFieldValue_t,
    c_nvmlProcessInfo_v3_t,
    c_nvmlProcessUtilizationSample_t,
    c_nvmlUtilization_t,
    nvmlStructToFriendlyObject,
)

__all__ = [
    "NVMLError",
    "FakeClock",
    "FakeGpu",
    "FakeNvml",
    "FakeProcess",
    "bursty",
    "configure",
    "make_fake_nvml",
]

TICK = 0.1  # seconds between hardware updates of the counter and the averaged power
AVERAGE_TICKS = 10  # NVML_FI_DEV_POWER_AVERAGE: 1 s
# Measured per-call cost on an H100 (the figures); calls not listed are counted as free.
CALL_COST_SECONDS = {"nvmlDeviceGetPowerUsage": 3.5e-3, "nvmlDeviceGetFieldValues": 0.12e-3}

PowerProfile = Callable[[float], float]  # seconds since the simulator started -> watts


class FakeClock:
    """Wall-clock seconds that only move when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.now += seconds


def bursty(low: float, high: float, period: float, duty: float = 0.5) -> PowerProfile:
    """Square wave: `high` watts for the first `duty` of every `period` seconds, `low` otherwise."""

    def profile(t: float) -> float:
        return high if (t % period) < duty * period - 1e-9 else low

    return profile


@dataclass
class FakeProcess:
    pid: int
    sm_util: int = 0  # percent
    mem_util: int = 0  # percent
    used_memory: int | None = 1 << 30  # bytes; None = not available (as pynvml reports it)
    kind: str = "compute"  # compute | graphics | both


class FakeGpu:
    """One simulated GPU. `power` is a constant (watts) or a profile t -> watts."""

    def __init__(
        self,
        index: int,
        power: float | PowerProfile = 100.0,
        *,
        name: str = "NVIDIA H100 80GB HBM3",
        uuid: str | None = None,
        energy_counter: bool = True,
        power_average_field: bool = True,
        power_instant_field: bool = True,
        field_values: bool = True,
        power_usage: bool = True,
        process_utilization: bool = True,
        utilization: int | None = None,
        processes: Sequence[FakeProcess] = (),
    ) -> None:
        self.index = index
        self.name = name
        self.uuid = uuid or f"GPU-{index:08x}-fake-4000-8000-{index:012x}"
        self.energy_counter = energy_counter
        self.power_average_field = power_average_field
        self.power_instant_field = power_instant_field
        self.field_values = field_values
        self.power_usage = power_usage
        self.process_utilization = process_utilization
        self.utilization = utilization  # percent; None = sum of the processes' SM use, capped at 100
        self.processes: list[FakeProcess] = list(processes)
        self.lost = False
        self._profile: PowerProfile | None = None
        self._constant = 0.0
        self.counter_mj = 0.0
        self._true_joules = 0.0
        self.recent: deque[float] = deque(maxlen=AVERAGE_TICKS)
        self.tick = 0  # index of the last simulated tick
        self.now_tick: Callable[[], int] = lambda: self.tick  # set by the simulator that owns this GPU
        self.set_power(power)

    def sync(self) -> None:
        """Simulate the hardware up to now."""
        self._run_to(self.now_tick())

    @property
    def true_energy_joules(self) -> float:
        """Ground truth: everything drawn since the simulator started (counter resets do not touch it)."""
        self.sync()
        return self._true_joules

    def set_power(self, power: float | PowerProfile) -> None:
        """From now on, draw `power` (watts, or a profile t -> watts)."""
        self.sync()
        if callable(power):
            self._profile = power
        else:
            self._profile = None
            self._constant = float(power)

    def reset_counter(self) -> None:
        """What a driver reload does to the energy counter."""
        self.sync()
        self.counter_mj = 0.0

    def lose(self) -> None:
        """The GPU falls off the bus: every call about it answers NVML_ERROR_GPU_IS_LOST."""
        self.sync()
        self.lost = True

    def recover(self) -> None:
        self.lost = False

    def _run_to(self, tick: int) -> None:
        if tick <= self.tick:
            return
        if self._profile is None:
            n = tick - self.tick
            self.counter_mj += self._constant * TICK * 1000.0 * n
            self._true_joules += self._constant * TICK * n
            self.recent.extend([self._constant] * min(n, AVERAGE_TICKS))
        else:
            for k in range(self.tick, tick):  # tick k+1 draws profile(k * TICK) over [k, k+1)
                watts = float(self._profile(k * TICK))
                self.counter_mj += watts * TICK * 1000.0
                self._true_joules += watts * TICK
                self.recent.append(watts)
        self.tick = tick

    @property
    def instant_watts(self) -> float:
        return self.recent[-1] if self.recent else 0.0

    @property
    def average_watts(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else 0.0


@dataclass
class _Handle:
    index: int
    generation: int


@dataclass
class _InjectedError:
    code: int
    gpu: int | None
    remaining: int | None  # None = every call


class FakeNvml:
    """The simulator, with the pynvml functions as methods. Every name pynvml exports that starts with
    NVML_, NVMLError or c_nvml is available as an attribute too, so an instance can stand in for the module."""

    def __init__(
        self,
        gpus: int | Sequence[FakeGpu] = 1,
        *,
        clock: Callable[[], float] | None = None,
        watts: float | PowerProfile = 100.0,
        init_error: int | None = None,
        driver_version: str = "550.54.15",
    ) -> None:
        self.clock: Callable[[], float] = clock or time.time
        self.start = self.clock()
        if isinstance(gpus, int):
            self.gpus = [FakeGpu(i, watts) for i in range(gpus)]
        else:
            self.gpus = list(gpus)
        for gpu in self.gpus:
            gpu.now_tick = self.now_tick
        self.init_error = init_error
        self.driver_version = driver_version
        self.refcount = 0
        self.generation = 0
        self.calls: Counter[str] = Counter()
        self.cost_seconds = 0.0
        self._errors: dict[str, list[_InjectedError]] = {}
        self.before_call: Callable[[], None] | None = None  # hook (used for processes_file)

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("NVML_", "NVMLError", "c_nvml")):
            return getattr(_pynvml, name)
        raise AttributeError(name)

    # -- simulator controls ---------------------------------------------------------------------

    def driver_reload(self) -> None:
        """Every energy counter restarts at 0 and the open NVML session (and its handles) is invalid."""
        for gpu in self.gpus:
            gpu.reset_counter()
        self.refcount = 0
        self.generation += 1

    def inject_error(self, function: str, code: int, *, gpu: int | None = None, times: int | None = 1) -> None:
        """Make `function` raise NVMLError(code) (for one GPU, or any) the next `times` calls (None: always)."""
        self._errors.setdefault(function, []).append(_InjectedError(code, gpu, times))

    def clear_errors(self) -> None:
        self._errors.clear()

    def now_tick(self) -> int:
        return int(math.floor((self.clock() - self.start) / TICK + 1e-9))

    # -- plumbing -------------------------------------------------------------------------------

    def _enter(self, function: str, handle: _Handle | None = None, *, needs_init: bool = True) -> FakeGpu | None:
        self.calls[function] += 1
        self.cost_seconds += CALL_COST_SECONDS.get(function, 0.0)
        if self.before_call is not None:
            self.before_call()
        if needs_init and self.refcount == 0:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)
        index = handle.index if handle is not None else None
        for err in self._errors.get(function, []):
            if err.gpu is None or err.gpu == index:
                if err.remaining is not None:
                    err.remaining -= 1
                    if err.remaining <= 0:
                        self._errors[function].remove(err)
                raise NVMLError(err.code)
        if handle is None:
            return None
        if not isinstance(handle, _Handle) or handle.generation != self.generation:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if not 0 <= handle.index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[handle.index]
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        gpu.sync()
        return gpu

    def _gpu(self, function: str, handle: _Handle) -> FakeGpu:
        gpu = self._enter(function, handle)
        assert gpu is not None
        return gpu

    # -- the pynvml API ---------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.nvmlInitWithFlags(0)

    def nvmlInitWithFlags(self, flags: int) -> None:
        self._enter("nvmlInitWithFlags", needs_init=False)
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        handle = _Handle(index, self.generation)
        self._enter("nvmlDeviceGetHandleByIndex", handle)
        return handle

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return self._gpu("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle)
        if not gpu.energy_counter:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(gpu.counter_mj)

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        gpu = self._gpu("nvmlDeviceGetPowerUsage", handle)
        if not gpu.power_usage:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return int(gpu.instant_watts * 1000)

    def nvmlDeviceGetFieldValues(self, handle: _Handle, fieldIds: Sequence[int]) -> Any:
        gpu = self._gpu("nvmlDeviceGetFieldValues", handle)
        if not gpu.field_values:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        values = (c_nvmlFieldValue_t * len(fieldIds))()
        now_us = int(self.clock() * 1e6)
        for i, field_id in enumerate(fieldIds):
            v = values[i]
            v.fieldId = field_id
            v.timestamp = now_us
            v.valueType = NVML_VALUE_TYPE_UNSIGNED_INT
            if field_id == NVML_FI_DEV_POWER_AVERAGE and gpu.power_average_field:
                v.nvmlReturn = NVML_SUCCESS
                v.value.uiVal = int(gpu.average_watts * 1000)
            elif field_id == NVML_FI_DEV_POWER_INSTANT and gpu.power_instant_field:
                v.nvmlReturn = NVML_SUCCESS
                v.value.uiVal = int(gpu.instant_watts * 1000)
            else:
                v.nvmlReturn = NVML_ERROR_NOT_SUPPORTED
        return values

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        gpu = self._gpu("nvmlDeviceGetUtilizationRates", handle)
        sm = gpu.utilization if gpu.utilization is not None else sum(p.sm_util for p in gpu.processes)
        mem = sum(p.mem_util for p in gpu.processes)
        return c_nvmlUtilization_t(gpu=min(sm, 100), memory=min(mem, 100))

    def _running(self, function: str, handle: _Handle, kinds: tuple[str, ...]) -> list[Any]:
        gpu = self._gpu(function, handle)
        out = []
        for p in gpu.processes:
            if p.kind in kinds:
                info = c_nvmlProcessInfo_v3_t(pid=p.pid, usedGpuMemory=0, gpuInstanceId=0xFFFFFFFF,
                                              computeInstanceId=0xFFFFFFFF)
                obj = nvmlStructToFriendlyObject(info)
                obj.usedGpuMemory = p.used_memory  # pynvml turns "not available" into None
                out.append(obj)
        return out

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        return self._running("nvmlDeviceGetComputeRunningProcesses", handle, ("compute", "both"))

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: _Handle) -> list[Any]:
        return self._running("nvmlDeviceGetGraphicsRunningProcesses", handle, ("graphics", "both"))

    def nvmlDeviceGetProcessUtilization(self, handle: _Handle, timeStamp: int) -> list[Any]:
        """One sample per process with non-zero use, stamped with the latest tick (CPU time, µs); only
        samples newer than `timeStamp`; NVML_ERROR_NOT_FOUND when there are none."""
        gpu = self._gpu("nvmlDeviceGetProcessUtilization", handle)
        if not gpu.process_utilization:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        stamp = int((self.start + gpu.tick * TICK) * 1e6)
        busy = [p for p in gpu.processes if p.sm_util or p.mem_util]
        if stamp <= timeStamp or not busy:
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return [
            c_nvmlProcessUtilizationSample_t(pid=p.pid, timeStamp=stamp, smUtil=p.sm_util, memUtil=p.mem_util)
            for p in busy
        ]


def make_fake_nvml(
    gpus: int | Sequence[FakeGpu] = 8,
    *,
    clock: Callable[[], float] | None = None,
    watts: float | PowerProfile = 100.0,
    init_error: int | None = None,
) -> FakeNvml:
    """An isolated simulator to inject: `NvmlSource(make_fake_nvml(gpus=8, clock=FakeClock()))`."""
    return FakeNvml(gpus, clock=clock, watts=watts, init_error=init_error)


# -- module-level API: a default simulator --------------------------------------------------------

_default: FakeNvml | None = None
ENV = "CARBONWATCH_FAKE_NVML"


def configure(
    gpus: int | Sequence[FakeGpu] = 2,
    *,
    clock: Callable[[], float] | None = None,
    watts: float | PowerProfile = 100.0,
    init_error: int | None = None,
) -> FakeNvml:
    """Replace the simulator behind the module-level functions and return it."""
    global _default
    _default = FakeNvml(gpus, clock=clock, watts=watts, init_error=init_error)
    return _default


def _process_from(spec: dict[str, Any]) -> tuple[int, FakeProcess]:
    return int(spec.get("gpu", 0)), FakeProcess(
        pid=int(spec["pid"]),
        sm_util=int(spec.get("sm_util", 50)),
        mem_util=int(spec.get("mem_util", 20)),
        used_memory=spec.get("used_memory", 1 << 30),
        kind=str(spec.get("kind", "compute")),
    )


def configure_from_env(environ: dict[str, str] | None = None) -> FakeNvml:
    """The default simulator described by CARBONWATCH_FAKE_NVML (JSON; see the module docstring)."""
    env = os.environ if environ is None else environ
    spec: dict[str, Any] = json.loads(env.get(ENV) or "{}")
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
    sim = configure([FakeGpu(i, per_gpu[i]) for i in range(count)])
    fixed = [_process_from(p) for p in spec.get("processes", [])]
    for gpu_index, proc in fixed:
        sim.gpus[gpu_index].processes.append(proc)
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
            for gpu in sim.gpus:
                gpu.processes = [p for i, p in fixed if i == gpu.index]
            for gpu_index, proc in listed:
                sim.gpus[gpu_index].processes.append(proc)

        sim.before_call = reload_processes
    return sim


def _sim() -> FakeNvml:
    return _default if _default is not None else configure_from_env()


def __getattr__(name: str) -> Any:  # constants, error classes and structures: pynvml's own
    if name.startswith(("NVML_", "NVMLError", "c_nvml")):
        return getattr(_pynvml, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def nvmlInit() -> None:
    _sim().nvmlInit()


def nvmlInitWithFlags(flags: int) -> None:
    _sim().nvmlInitWithFlags(flags)


def nvmlShutdown() -> None:
    _sim().nvmlShutdown()


def nvmlSystemGetDriverVersion() -> str:
    return _sim().nvmlSystemGetDriverVersion()


def nvmlDeviceGetCount() -> int:
    return _sim().nvmlDeviceGetCount()


def nvmlDeviceGetHandleByIndex(index: int) -> Any:
    return _sim().nvmlDeviceGetHandleByIndex(index)


def nvmlDeviceGetUUID(handle: Any) -> str:
    return _sim().nvmlDeviceGetUUID(handle)


def nvmlDeviceGetName(handle: Any) -> str:
    return _sim().nvmlDeviceGetName(handle)


def nvmlDeviceGetTotalEnergyConsumption(handle: Any) -> int:
    return _sim().nvmlDeviceGetTotalEnergyConsumption(handle)


def nvmlDeviceGetPowerUsage(handle: Any) -> int:
    return _sim().nvmlDeviceGetPowerUsage(handle)


def nvmlDeviceGetFieldValues(handle: Any, fieldIds: Sequence[int]) -> Any:
    return _sim().nvmlDeviceGetFieldValues(handle, fieldIds)


def nvmlDeviceGetUtilizationRates(handle: Any) -> Any:
    return _sim().nvmlDeviceGetUtilizationRates(handle)


def nvmlDeviceGetComputeRunningProcesses(handle: Any) -> list[Any]:
    return _sim().nvmlDeviceGetComputeRunningProcesses(handle)


def nvmlDeviceGetGraphicsRunningProcesses(handle: Any) -> list[Any]:
    return _sim().nvmlDeviceGetGraphicsRunningProcesses(handle)


def nvmlDeviceGetProcessUtilization(handle: Any, timeStamp: int) -> list[Any]:
    return _sim().nvmlDeviceGetProcessUtilization(handle, timeStamp)
