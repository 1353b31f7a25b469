"""A stub of the NVML C library (libnvidia-ml.so.1) underneath the real `pynvml`.

pynvml looks every C function up through `pynvml._nvmlGetFunctionPointer(name)`, which reads
`pynvml.nvmlLib` (the loaded CDLL) and caches what it finds in `pynvml._nvmlGetFunctionPointer_cache`.
`NvmlStub.install()` puts an object in `nvmlLib` whose attributes are ctypes function pointers
(`CFUNCTYPE`) to Python functions, and empties the cache. Everything above the C boundary is pynvml's real
code: its wrappers, struct layouts and sizes, the two-call sizing of the process lists (and the
Insufficient Size race between the calls), `NVMLLibraryMismatchError` when a `_v3` function is missing,
`NVMLError` subclasses, the "not available" memory value. A C function the simulated driver does not have
is simply absent, exactly as from an older libnvidia-ml.

The hardware model, from measurements on an H100: the energy counter and the averaged power update every
`TICK` (100 ms). Each tick a GPU draws `profile(t)` watts (t = seconds since the stub started); the counter
(integer mJ) adds watts x 0.1 s; the averaged power is the mean of the last 10 ticks (1 s); the instant
power is the latest tick. `FakeGpu.true_energy_joules` is the ground truth. Per-process utilisation: every
`SAMPLE_PERIOD` (1 s) the driver writes one sample per process that has a context, (0, 0) for an idle one;
before a process's first sample, the call answers NOT_FOUND. Sample timestamps are wall-clock µs
(`NvmlStub.wall()`, which a test can move backwards with `wall_offset`).

Call costs: `COSTS` holds the CPU cost per call measured on an H200 (seconds; a field-values call that asks
for the energy counter adds `ENERGY_FIELD_COST`); each C call adds its price to `cost_seconds`. Calls
without a measured price are counted in `unmeasured_calls` and priced at `unmeasured_cost` (0 unless a
benchmark sets it). `calls` counts C calls per function, and the field-values calls that asked for the
counter under `ENERGY_FIELD`.

Usage::

    clock = FakeClock()
    with NvmlStub([FakeGpu(0, 300.0, processes=[FakeProcess(1234, sm_util=80)])], clock=clock) as stub:
        source = NvmlSource(pynvml, proc_root=..., wall=stub.wall)
        clock.advance(2.0)
        source.read()
"""

from __future__ import annotations

import ctypes
import math
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from ctypes import CFUNCTYPE, c_int, c_int32, c_uint, c_ulonglong, c_void_p
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

TICK = 0.1  # seconds between hardware updates of the counter and the averaged power
AVERAGE_TICKS = 10  # NVML_FI_DEV_POWER_AVERAGE: 1 s
SAMPLE_PERIOD = 1.0  # seconds between per-process utilisation samples
SAMPLE_BUFFER = 512  # samples the driver keeps per GPU
# Seconds of CPU per C call, measured on an H200 with driver 580.159.04 (bench.nvml_calls: medians of calls
# 100 ms apart under load, bench/results/nvml_calls_h200.json). A field-values call costs the power-field
# price, plus ENERGY_FIELD_COST when it asks for the energy counter: reading the counter is what is slow.
COSTS = {
    "nvmlDeviceGetFieldValues": 0.077e-3,
    "nvmlDeviceGetTotalEnergyConsumption": 3.15e-3,
    "nvmlDeviceGetPowerUsage": 0.046e-3,
    "nvmlDeviceGetUtilizationRates": 0.006e-3,
    "nvmlDeviceGetProcessUtilization": 2.12e-3,
    **{f"nvmlDeviceGet{kind}RunningProcesses{v}": 0.1e-3
       for kind in ("Compute", "Graphics", "MPSCompute") for v in ("_v3", "_v2")},
}
ENERGY_FIELD_COST = 3.21e-3
ENERGY_FIELD = "field values with the energy counter"  # counted in `calls` beside the C functions

PowerProfile = Callable[[float], float]  # seconds since the stub started -> watts


class ProcTree:
    """A fake /proc tree holding only what NvmlSource reads of it: pid directories with comm, and pid_max
    (NVML's pids are checked against it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sys" / "kernel").mkdir(parents=True, exist_ok=True)
        (root / "sys" / "kernel" / "pid_max").write_text("4194304\n")

    def add(self, *pids: int, comm: str = "python") -> None:
        for pid in pids:
            (self.root / str(pid)).mkdir(exist_ok=True)
            (self.root / str(pid) / "comm").write_text(comm + "\n")

    def remove(self, pid: int) -> None:
        for f in (self.root / str(pid)).iterdir():
            f.unlink()
        (self.root / str(pid)).rmdir()

S = pynvml  # constants
_ENTRY = {24: struct.Struct("<I4xQII"), 32: struct.Struct("<I4xQII8x")}
_NOT_AVAILABLE = (1 << 64) - 1
_NO_INSTANCE = 0xFFFFFFFF


class FakeClock:
    """Seconds that only move when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"FakeClock.advance: a clock does not go back (got {seconds} s)")
        self.now += seconds


def bursty(low: float, high: float, period: float, duty: float = 0.5) -> PowerProfile:
    """Square wave: `high` watts for the first `duty` of every `period` seconds, `low` otherwise."""
    if period <= 0 or not 0 <= duty <= 1:
        raise ValueError(f"bursty: period must be > 0 and duty in [0, 1], got period={period}, duty={duty}")

    def profile(t: float) -> float:
        return high if (t % period) < duty * period - 1e-9 else low

    return profile


@dataclass
class FakeProcess:
    pid: int
    sm_util: int = 0  # percent
    mem_util: int = 0  # percent
    used_memory: int | None = 1 << 30  # bytes; None = not available
    kind: str = "compute"  # compute | graphics | both | mps (an MPS client: listed by the MPS call only)
    gpu_instance: int | None = None  # MIG: the GPU instance it runs in
    compute_instance: int = 0


@dataclass
class FakeMigDevice:
    """One MIG device: a compute instance of a GPU instance."""

    gpu_instance: int
    slices: int  # of the GPU instance
    compute_instance: int = 0
    compute_slices: int | None = None  # None: the whole GPU instance
    uuid: str = ""


class FakeGpu:
    """One simulated GPU. `power` is a constant (watts) or a profile t -> watts."""

    def __init__(
        self,
        index: int,
        power: float | PowerProfile = 100.0,
        *,
        name: str = "NVIDIA H100 80GB HBM3",
        uuid: str | None = None,
        memory_total: int = 80 << 30,
        energy_counter: bool = True,
        energy_field: bool = True,
        energy_field_offset_mj: int = 0,
        power_average_field: bool = True,
        power_instant_field: bool = True,
        field_values: bool = True,
        power_usage: bool = True,
        process_utilization: bool = True,
        utilization: int | None = None,
        mig_capable: bool = True,
        mig: Sequence[FakeMigDevice] | None = None,
        mig_slots: int = 7,
        mps_samples_to: int | None = None,
        processes: Sequence[FakeProcess] = (),
    ) -> None:
        self.index = index
        self.name = name
        self.uuid = uuid or f"GPU-{index:08x}-fake-4000-8000-{index:012x}"
        self.memory_total = memory_total
        self.energy_counter = energy_counter
        self.energy_field = energy_field
        self.energy_field_offset_mj = energy_field_offset_mj  # a field that disagrees with the dedicated call
        self.power_average_field = power_average_field
        self.power_instant_field = power_instant_field
        self.field_values = field_values
        self.power_usage = power_usage
        self.process_utilization = process_utilization
        self.utilization = utilization  # percent; None = sum of the processes' SM use, capped at 100
        self.mig_capable = mig_capable
        self.mig: list[FakeMigDevice] | None = None if mig is None else list(mig)
        for n, m in enumerate(self.mig or []):
            m.uuid = m.uuid or f"MIG-{index:08x}-fake-{m.gpu_instance:04x}-{m.compute_instance:04x}-{n:012x}"
        self.mig_slots = mig_slots
        self.mps_samples_to = mps_samples_to  # pid under which MPS clients' samples are reported (the server)
        self.processes: list[FakeProcess] = list(processes)
        self.lost = False
        self._profile: PowerProfile | None = None
        self._constant = 0.0
        self.counter_mj = 0.0
        self._true_joules = 0.0
        self.recent: deque[float] = deque(maxlen=AVERAGE_TICKS)
        self.tick = 0
        self.period = 0  # index of the last per-process sample period written
        self.samples: deque[tuple[int, int, int, int]] = deque(maxlen=SAMPLE_BUFFER)  # (pid, µs, sm, mem)
        self._has_context: set[int] = set()  # pids that had a context at the last period boundary
        self.now_tick: Callable[[], int] = lambda: self.tick
        self.now_period: Callable[[], int] = lambda: self.period
        self.period_stamp: Callable[[int], int] = lambda k: 0
        self.set_power(power)

    def sync(self) -> None:
        """Simulate the hardware up to now."""
        self._run_to(self.now_tick())
        self._sample_to(self.now_period())

    @property
    def true_energy_joules(self) -> float:
        """Everything drawn since the stub started (counter resets do not touch it)."""
        self.sync()
        return self._true_joules

    def set_power(self, power: float | PowerProfile) -> None:
        self.sync()
        if callable(power):
            self._profile = power
        else:
            self._profile = None
            self._constant = float(power)

    def reset_counter(self) -> None:
        self.sync()
        self.counter_mj = 0.0

    def lose(self) -> None:
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

    def _sample_to(self, period: int) -> None:
        """Per-process samples at each period boundary crossed, for the processes with a context at the
        previous boundary (a process gets its first sample one period after it appears)."""
        if period <= self.period:
            self._has_context = {p.pid for p in self.processes}
            return
        for k in range(self.period + 1, period + 1):
            stamp = self.period_stamp(k)
            by_pid: dict[int, list[int]] = {}
            for p in self.processes:
                if p.pid not in self._has_context:
                    continue
                pid = self.mps_samples_to if (p.kind == "mps" and self.mps_samples_to) else p.pid
                acc = by_pid.setdefault(pid, [0, 0])
                acc[0] += p.sm_util
                acc[1] += p.mem_util
            for pid, (sm, mem) in by_pid.items():
                self.samples.append((pid, stamp, min(sm, 100), min(mem, 100)))
            self._has_context = {p.pid for p in self.processes}
        self.period = period

    @property
    def instant_watts(self) -> float:
        return self.recent[-1] if self.recent else 0.0

    @property
    def average_watts(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else 0.0


class _Ret(Exception):
    """A C function returning an nvmlReturn_t other than success."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class _Injected:
    code: int
    gpu: int | None
    remaining: int | None  # None = every call


class _Lib:
    """What `pynvml.nvmlLib` holds while the stub is installed: one attribute per C function."""


@dataclass
class NvmlStub:
    """The simulated driver and its library. `v3=False` is a driver older than R510 (no `_v3` process
    functions); `entry_bytes=32` writes process entries in the 32-byte layout of some R535 drivers;
    `privileged=False` refuses board-level process lists in MIG mode (MIG-device handles still answer
    unless `mig_handle_lists=False`)."""

    gpus: list[FakeGpu] | int = 1
    clock: Callable[[], float] = time.time
    watts: float | PowerProfile = 100.0
    driver_version: str = "550.54.15"
    v3: bool = True
    entry_bytes: int = 24
    privileged: bool = True
    mig_handle_lists: bool = True
    init_error: int | None = None
    unmeasured_cost: float = 0.0
    wall_offset: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)
    cost_seconds: float = 0.0
    unmeasured_calls: int = 0
    callback_errors: list[str] = field(default_factory=list)
    before_call: Callable[[], None] | None = None
    on_sized: dict[str, Callable[[], None]] = field(default_factory=dict)  # one-shot, after a sizing call

    def __post_init__(self) -> None:
        if self.entry_bytes not in _ENTRY:
            raise ValueError(f"NvmlStub: entry_bytes must be 24 or 32, got {self.entry_bytes}")
        if isinstance(self.gpus, int):
            self.gpus = [FakeGpu(i, self.watts) for i in range(self.gpus)]
        self.board: list[FakeGpu] = list(self.gpus)
        self.start = self.clock()
        self.refcount = 0
        self.generation = 0
        self._errors: dict[str, list[_Injected]] = {}
        self._saved: tuple[Any, int] | None = None
        for gpu in self.board:
            gpu.now_tick = self._now_tick
            gpu.now_period = self._now_period
            gpu.period_stamp = self._period_stamp
        self.lib = self._build_lib()

    # -- installing ---------------------------------------------------------------------------

    def install(self) -> NvmlStub:
        """Put this library under pynvml (until `uninstall`)."""
        if self._saved is None:
            self._saved = (pynvml.nvmlLib, pynvml._nvmlLib_refcount)
        pynvml.nvmlLib = self.lib
        pynvml._nvmlLib_refcount = 0
        pynvml._nvmlGetFunctionPointer_cache.clear()
        return self

    def uninstall(self) -> None:
        if self._saved is not None:
            pynvml.nvmlLib, pynvml._nvmlLib_refcount = self._saved
            self._saved = None
        pynvml._nvmlGetFunctionPointer_cache.clear()

    def __enter__(self) -> NvmlStub:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # -- simulator controls ---------------------------------------------------------------------

    def wall(self) -> float:
        """The wall clock NVML stamps samples with."""
        return self.clock() + self.wall_offset

    def driver_reload(self) -> None:
        """Every energy counter restarts at 0 and the open session (and its handles) is invalid."""
        for gpu in self.board:
            gpu.reset_counter()
        self.refcount = 0
        self.generation += 1

    def inject_error(self, function: str, code: int, *, gpu: int | None = None, times: int | None = 1) -> None:
        """Make the C function `function` return `code` (for one GPU, or any) the next `times` calls."""
        self._errors.setdefault(function, []).append(_Injected(code, gpu, times))

    def reset_counts(self) -> None:
        self.calls.clear()
        self.cost_seconds = 0.0
        self.unmeasured_calls = 0

    def _now_tick(self) -> int:
        return int(math.floor((self.clock() - self.start) / TICK + 1e-9))

    def _now_period(self) -> int:
        return int(math.floor((self.clock() - self.start) / SAMPLE_PERIOD + 1e-9))

    def _period_stamp(self, k: int) -> int:
        return int((self.start + k * SAMPLE_PERIOD + self.wall_offset) * 1e6)

    # -- the C functions ---------------------------------------------------------------------

    def _build_lib(self) -> _Lib:
        lib = _Lib()
        h = c_void_p
        table: dict[str, tuple[list[Any], Callable[..., None]]] = {
            "nvmlInitWithFlags": ([c_uint], self._init),
            "nvmlInit_v2": ([], lambda: self._init(0)),
            "nvmlShutdown": ([], self._shutdown),
            "nvmlSystemGetDriverVersion": ([c_void_p, c_uint], self._driver_version),
            "nvmlDeviceGetCount_v2": ([c_void_p], self._count),
            "nvmlDeviceGetHandleByIndex_v2": ([c_uint, c_void_p], self._handle_by_index),
            "nvmlDeviceGetUUID": ([h, c_void_p, c_uint], self._uuid),
            "nvmlDeviceGetName": ([h, c_void_p, c_uint], self._name),
            "nvmlDeviceGetMemoryInfo": ([h, c_void_p], self._memory_info),
            "nvmlDeviceGetTotalEnergyConsumption": ([h, c_void_p], self._energy),
            "nvmlDeviceGetPowerUsage": ([h, c_void_p], self._power_usage),
            "nvmlDeviceGetFieldValues": ([h, c_int32, c_void_p], self._field_values),
            "nvmlDeviceGetUtilizationRates": ([h, c_void_p], self._utilization),
            "nvmlDeviceGetProcessUtilization": ([h, c_void_p, c_void_p, c_ulonglong], self._process_utilization),
            "nvmlDeviceGetMigMode": ([h, c_void_p, c_void_p], self._mig_mode),
            "nvmlDeviceGetMaxMigDeviceCount": ([h, c_void_p], self._max_mig),
            "nvmlDeviceGetMigDeviceHandleByIndex": ([h, c_uint, c_void_p], self._mig_handle),
            "nvmlDeviceGetGpuInstanceId": ([h, c_void_p], self._gpu_instance_id),
            "nvmlDeviceGetAttributes_v2": ([h, c_void_p], self._attributes),
        }
        lists = {"Compute": ("compute", "both"), "Graphics": ("graphics", "both"), "MPSCompute": ("mps",)}
        for word, kinds in lists.items():
            versions = ("_v2", "_v3") if self.v3 else ("_v2",)
            for version in versions:
                name = f"nvmlDeviceGet{word}RunningProcesses{version}"
                size = self.entry_bytes if version == "_v3" else 24
                table[name] = ([h, c_void_p, c_void_p], self._lister(name, kinds, size))
        for name, (argtypes, impl) in table.items():
            setattr(lib, name, CFUNCTYPE(c_int, *argtypes)(self._entry(name, impl)))
        return lib

    def _entry(self, name: str, impl: Callable[..., None]) -> Callable[..., int]:
        def call(*args: Any) -> int:
            self.calls[name] += 1
            if name in COSTS:
                self.cost_seconds += COSTS[name]
            else:
                self.unmeasured_calls += 1
                self.cost_seconds += self.unmeasured_cost
            try:
                if self.before_call is not None:
                    self.before_call()
                if name not in ("nvmlInitWithFlags", "nvmlInit_v2") and self.refcount == 0:
                    raise _Ret(S.NVML_ERROR_UNINITIALIZED)
                impl(*args)
                return S.NVML_SUCCESS
            except _Ret as ret:
                return ret.code
            except Exception as exc:  # a bug in the stub: make it loud, never a silent success
                self.callback_errors.append(f"{name}: {type(exc).__name__}: {exc}")
                return S.NVML_ERROR_UNKNOWN

        return call

    def _check_injected(self, name: str, index: int | None) -> None:
        for err in list(self._errors.get(name, [])):
            if err.gpu is None or err.gpu == index:
                if err.remaining is not None:
                    err.remaining -= 1
                    if err.remaining <= 0:
                        self._errors[name].remove(err)
                raise _Ret(err.code)

    def _device(self, name: str, handle: int | None) -> tuple[FakeGpu, FakeMigDevice | None]:
        """The GPU (and MIG device) a handle names; errors as the driver answers them."""
        if not handle:
            raise _Ret(S.NVML_ERROR_INVALID_ARGUMENT)
        generation, board, slot = (handle >> 20) - 1, (handle >> 8) & 0xFFF, handle & 0xFF
        if generation != self.generation or board >= len(self.board):
            raise _Ret(S.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.board[board]
        self._check_injected(name, board)
        if gpu.lost:
            raise _Ret(S.NVML_ERROR_GPU_IS_LOST)
        gpu.sync()
        if slot == 0:
            return gpu, None
        if gpu.mig is None or slot - 1 >= len(gpu.mig):
            raise _Ret(S.NVML_ERROR_INVALID_ARGUMENT)
        return gpu, gpu.mig[slot - 1]

    def _handle(self, board: int, slot: int = 0) -> int:
        return ((self.generation + 1) << 20) | (board << 8) | slot

    def _init(self, flags: int) -> None:
        self._check_injected("nvmlInitWithFlags", None)
        if self.init_error is not None:
            raise _Ret(self.init_error)
        self.refcount += 1

    def _shutdown(self) -> None:
        self.refcount -= 1

    def _driver_version(self, buf: int, size: int) -> None:
        _write_text(buf, size, self.driver_version)

    def _count(self, out: int) -> None:
        self._check_injected("nvmlDeviceGetCount_v2", None)
        c_uint.from_address(out).value = len(self.board)

    def _handle_by_index(self, index: int, out: int) -> None:
        self._check_injected("nvmlDeviceGetHandleByIndex_v2", index)
        if index >= len(self.board):
            raise _Ret(S.NVML_ERROR_INVALID_ARGUMENT)
        if self.board[index].lost:
            raise _Ret(S.NVML_ERROR_GPU_IS_LOST)
        c_void_p.from_address(out).value = self._handle(index)

    def _uuid(self, handle: int, buf: int, size: int) -> None:
        gpu, mig = self._device("nvmlDeviceGetUUID", handle)
        _write_text(buf, size, mig.uuid if mig else gpu.uuid)

    def _name(self, handle: int, buf: int, size: int) -> None:
        gpu, mig = self._device("nvmlDeviceGetName", handle)
        _write_text(buf, size, gpu.name + (f" MIG {mig.slices}g" if mig else ""))

    def _memory_info(self, handle: int, out: int) -> None:
        gpu, mig = self._device("nvmlDeviceGetMemoryInfo", handle)
        total = gpu.memory_total * (mig.slices if mig else gpu.mig_slots) // gpu.mig_slots
        used = sum(p.used_memory or 0 for p in gpu.processes)
        mem = pynvml.c_nvmlMemory_t.from_address(out)
        mem.total, mem.used, mem.free = total, min(used, total), max(total - used, 0)

    def _energy(self, handle: int, out: int) -> None:
        gpu, mig = self._device("nvmlDeviceGetTotalEnergyConsumption", handle)
        if mig is not None or not gpu.energy_counter:
            raise _Ret(S.NVML_ERROR_NOT_SUPPORTED)
        ctypes.c_uint64.from_address(out).value = int(gpu.counter_mj)

    def _power_usage(self, handle: int, out: int) -> None:
        gpu, mig = self._device("nvmlDeviceGetPowerUsage", handle)
        if mig is not None or not gpu.power_usage:
            raise _Ret(S.NVML_ERROR_NOT_SUPPORTED)
        c_uint.from_address(out).value = int(gpu.instant_watts * 1000)

    def _field_values(self, handle: int, count: int, out: int) -> None:
        gpu, mig = self._device("nvmlDeviceGetFieldValues", handle)
        if not gpu.field_values:
            raise _Ret(S.NVML_ERROR_NOT_SUPPORTED)
        values = (pynvml.c_nvmlFieldValue_t * count).from_address(out)
        if any(v.fieldId == S.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION for v in values):
            self.cost_seconds += ENERGY_FIELD_COST
            self.calls[ENERGY_FIELD] += 1
        now_us = int(self.wall() * 1e6)
        for v in values:
            v.timestamp, v.latencyUsec = now_us, 0
            v.nvmlReturn = S.NVML_SUCCESS
            board = mig is None
            energy = board and gpu.energy_counter and gpu.energy_field
            if v.fieldId == S.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION and energy:
                v.valueType = S.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                v.value.ullVal = int(gpu.counter_mj) + gpu.energy_field_offset_mj
            elif v.fieldId == S.NVML_FI_DEV_POWER_AVERAGE and board and gpu.power_average_field:
                v.valueType = S.NVML_VALUE_TYPE_UNSIGNED_INT
                v.value.uiVal = int(gpu.average_watts * 1000)
            elif v.fieldId == S.NVML_FI_DEV_POWER_INSTANT and board and gpu.power_instant_field:
                v.valueType = S.NVML_VALUE_TYPE_UNSIGNED_INT
                v.value.uiVal = int(gpu.instant_watts * 1000)
            else:
                v.nvmlReturn = S.NVML_ERROR_NOT_SUPPORTED

    def _utilization(self, handle: int, out: int) -> None:
        gpu, mig = self._device("nvmlDeviceGetUtilizationRates", handle)
        if gpu.mig is not None:
            raise _Ret(S.NVML_ERROR_NOT_SUPPORTED)
        sm = gpu.utilization if gpu.utilization is not None else sum(p.sm_util for p in gpu.processes)
        util = pynvml.c_nvmlUtilization_t.from_address(out)
        util.gpu, util.memory = min(sm, 100), min(sum(p.mem_util for p in gpu.processes), 100)

    def _lister(self, name: str, kinds: tuple[str, ...], size: int) -> Callable[[int, int, int | None], None]:
        def impl(handle: int, count_ptr: int, infos: int | None) -> None:
            gpu, mig = self._device(name, handle)
            procs = [p for p in gpu.processes if p.kind in kinds]
            if gpu.mig is not None:
                if mig is None and not self.privileged:
                    raise _Ret(S.NVML_ERROR_NO_PERMISSION)
                if mig is not None:
                    if not self.mig_handle_lists:
                        raise _Ret(S.NVML_ERROR_NO_PERMISSION)
                    procs = [p for p in procs if (p.gpu_instance, p.compute_instance)
                             == (mig.gpu_instance, mig.compute_instance)]
            elif mig is not None:
                raise _Ret(S.NVML_ERROR_INVALID_ARGUMENT)
            count = c_uint.from_address(count_ptr)
            if infos is None or count.value < len(procs):
                count.value = len(procs)
                if infos is None and name in self.on_sized:
                    self.on_sized.pop(name)()
                if procs:
                    raise _Ret(S.NVML_ERROR_INSUFFICIENT_SIZE)
                return
            layout = _ENTRY[size]
            for i, p in enumerate(procs):
                memory = _NOT_AVAILABLE if p.used_memory is None else p.used_memory
                gi = p.gpu_instance if (gpu.mig is not None and p.gpu_instance is not None) else _NO_INSTANCE
                ci = p.compute_instance if gpu.mig is not None else _NO_INSTANCE
                entry = layout.pack(p.pid, memory, gi, ci)
                ctypes.memmove(infos + i * size, entry, size)
            count.value = len(procs)

        return impl

    def _process_utilization(self, handle: int, samples: int | None, count_ptr: int, last_seen: int) -> None:
        name = "nvmlDeviceGetProcessUtilization"
        gpu, _mig = self._device(name, handle)
        if gpu.mig is not None or not gpu.process_utilization:
            raise _Ret(S.NVML_ERROR_NOT_SUPPORTED)
        newer = [s for s in gpu.samples if s[1] > last_seen]
        count = c_uint.from_address(count_ptr)
        if not newer:
            raise _Ret(S.NVML_ERROR_NOT_FOUND)
        if samples is None or count.value < len(newer):
            count.value = len(newer)
            if samples is None and name in self.on_sized:
                self.on_sized.pop(name)()
            raise _Ret(S.NVML_ERROR_INSUFFICIENT_SIZE)
        out = (pynvml.c_nvmlProcessUtilizationSample_t * len(newer)).from_address(samples)
        for o, (pid, stamp, sm, mem) in zip(out, newer, strict=True):
            o.pid, o.timeStamp, o.smUtil, o.memUtil, o.encUtil, o.decUtil = pid, stamp, sm, mem, 0, 0
        count.value = len(newer)

    def _mig_mode(self, handle: int, current: int, pending: int) -> None:
        gpu, mig = self._device("nvmlDeviceGetMigMode", handle)
        if not gpu.mig_capable or mig is not None:
            raise _Ret(S.NVML_ERROR_NOT_SUPPORTED)
        on = 1 if gpu.mig is not None else 0
        c_uint.from_address(current).value = on
        c_uint.from_address(pending).value = on

    def _max_mig(self, handle: int, out: int) -> None:
        gpu, _mig = self._device("nvmlDeviceGetMaxMigDeviceCount", handle)
        if not gpu.mig_capable:
            raise _Ret(S.NVML_ERROR_NOT_SUPPORTED)
        c_uint.from_address(out).value = gpu.mig_slots

    def _mig_handle(self, handle: int, index: int, out: int) -> None:
        gpu, mig = self._device("nvmlDeviceGetMigDeviceHandleByIndex", handle)
        if gpu.mig is None or mig is not None:
            raise _Ret(S.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(gpu.mig):
            raise _Ret(S.NVML_ERROR_NOT_FOUND)
        c_void_p.from_address(out).value = self._handle(gpu.index, index + 1)

    def _gpu_instance_id(self, handle: int, out: int) -> None:
        _gpu, mig = self._device("nvmlDeviceGetGpuInstanceId", handle)
        if mig is None:
            raise _Ret(S.NVML_ERROR_INVALID_ARGUMENT)
        c_uint.from_address(out).value = mig.gpu_instance

    def _attributes(self, handle: int, out: int) -> None:
        gpu, mig = self._device("nvmlDeviceGetAttributes_v2", handle)
        attrs = pynvml.c_nvmlDeviceAttributes.from_address(out)
        slices = mig.slices if mig else gpu.mig_slots
        attrs.multiprocessorCount = 132 * slices // gpu.mig_slots
        attrs.gpuInstanceSliceCount = slices
        attrs.computeInstanceSliceCount = (mig.compute_slices or mig.slices) if mig else slices
        attrs.memorySizeMB = (gpu.memory_total >> 20) * slices // gpu.mig_slots


def _write_text(buf: int, size: int, text: str) -> None:
    data = text.encode()[: max(size - 1, 0)] + b"\0"
    ctypes.memmove(buf, data, len(data))
