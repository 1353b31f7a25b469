"""NVIDIA GPUs through NVML (the `pynvml` module of nvidia-ml-py, or a module with the same API).

Energy first, always. Per GPU and per sample, one `nvmlDeviceGetFieldValues` call (0.12 ms on an H100)
carries the total-energy counter (`NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION`, mJ since the driver was loaded),
the 1 s averaged power and the instant power. The energy comes from the best of them, named in
`GpuReading.energy_source`:

* `nvml_counter`: the counter (Volta and newer). Where the driver does not serve it as a field, the
  dedicated `nvmlDeviceGetTotalEnergyConsumption` (3.4 ms) is used instead; on the first read of each GPU
  both are read once and compared, and a field that disagrees with the dedicated call is not used.
  Reading the counter is the slow part either way (3.3 ms of CPU a read on an H200 with driver 580, where
  the power fields alone cost 0.08 ms), so it is read every `counter_seconds`; the reads in between ask
  for the power fields only and carry the counter forward by the averaged power (trapezoid). Each real read
  resets the carried value to the counter (never backwards: an estimate ahead of the counter is held until
  the counter passes it; a counter below its previous real read is a driver reload and passes through, and
  what was carried since the last real read is then counted again: at most one interval), so totals are
  the counter's at every real read and off by at most one interval's estimate in between. Nothing is
  carried across a failed read or a new NVML session: the next read is of the counter itself.
* `nvml_power_average`: no counter, the 1 s averaged power field (integrated by the sampler).
* `nvml_power_instant`: neither, the instant power field, else `nvmlDeviceGetPowerUsage` (3.5 ms).

A failure anywhere in the process part never drops a GPU's energy: the reading is returned and the
problem named in `last_errors`.

Per-process shares, every `process_seconds` (2.1 ms of CPU a call on the H200), where the GPU supports
them: `nvmlDeviceGetProcessUtilization` since the newest sample seen, in one C call into a buffer sized
from earlier reads (pynvml's wrapper, which makes a sizing call first, when it is too small). NVML writes
about one sample per process per second, (0, 0) for an idle context. A process with new samples gets
their mean SM / memory-controller use; between reads every listed process keeps its figures, and a listed
process without a new sample keeps them for `carry_seconds` after the read that found none (a sample that
has not arrived yet is not idleness); a new process has figures from the first read after its first
sample (until then the sampler splits by memory where no process shows SM time). The timestamp survives
failures; one ahead of the wall clock (the clock went back) is replaced by the time of the previous read,
and samples stamped in the future are ignored. Insufficient Size (more samples or
processes between pynvml's sizing call and its fill call) is retried.

Process lists (compute, graphics and MPS clients, `_v3` with a fallback to `_v2` on drivers older than
R510, where pynvml raises NVMLLibraryMismatchError) give the used memory and the processes without
samples. They are read every `list_seconds` (1 s: 0.16 ms on the H200; this is how a new process is found
while the per-process samples wait, and a newly listed process has its samples read at once), and at once
when a sample names an unlisted pid. Entries are checked (the pid exists in /proc, the memory fits the
board); when a list of two or more does not check out, it is read again raw and parsed with the 32-byte
entry layout some R535 drivers write, which is kept for that call when it checks out better. MPS clients
are listed by the MPS call only; the MPS server's SM share goes to its clients (by memory) and the server gets none.

MIG (one reading per board, like without MIG, so the board's counter stays one series): per-process
utilisation does not exist in MIG mode, and a board-level process list needs privileges, so processes are
listed through each MIG device's own handle (board-level list as a fallback); the MIG devices are read
again every `mig_seconds`, as instances can be created and destroyed without a GPU reset. A process's
`board_share` is its GPU instance's slices / the board's slices, times its share of the instance's memory
in use; the slices of instances without a process, and unallocated slices, stay unattributed. A refused
list is an error in `last_errors`, never silent.

Gauge-only reads are taken less often than the energy: `nvmlDeviceGetUtilizationRates` (2.1 ms) every
`gauge_seconds`, its last value carried in between.

Errors: no pynvml, no NVML library, no driver or no GPU raise `SourceAbsent` (nothing to measure here),
unless this source has read GPUs before (then the driver went away: `SourceError`); a library that no
longer matches the loaded driver (NVML_ERROR_LIB_RM_VERSION_MISMATCH, after a driver upgrade) raises
`FatalSourceError`, since pynvml never loads the library again; an uninitialised session (driver reload)
is initialised again on the next read. NVML pids are host pids: when the /proc tree is not
in the host's PID namespace, processes are not attributed and `last_errors` says why.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from carbonwatch.node.model import FatalSourceError, GpuProcessUse, GpuReading, SourceAbsent, SourceError
from carbonwatch.node.sources import pidns

log = logging.getLogger("carbonwatch.nvml")

ENERGY_COUNTER = "nvml_counter"
POWER_AVERAGE = "nvml_power_average"
POWER_INSTANT = "nvml_power_instant"

# nvmlReturn_t and field ids, as in nvml.h (stable across driver and pynvml versions).
_SUCCESS = 0
_UNINITIALIZED = 1
_INVALID_ARGUMENT = 2
_NOT_SUPPORTED = 3
_NO_PERMISSION = 4
_NOT_FOUND = 6
_INSUFFICIENT_SIZE = 7
_DRIVER_NOT_LOADED = 9
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_LIB_RM_VERSION_MISMATCH = 18
_FI_TOTAL_ENERGY = 83
_FI_POWER_AVERAGE = 185
_FI_POWER_INSTANT = 186
_MIG_ENABLED = 1
_NOT_AVAILABLE_U64 = (1 << 64) - 1
_MPS_SERVER = "nvidia-cuda-mps-server"
MPS_SERVER = "mps_server"  # _Entry.kind of the MPS server once clients are listed

_CANNOT_TELL = frozenset({_NOT_SUPPORTED, _FUNCTION_NOT_FOUND, _INVALID_ARGUMENT})  # "this GPU/driver can't"
_REINIT = frozenset({_UNINITIALIZED, _DRIVER_NOT_LOADED})
_RETRIES = 3  # Insufficient Size: processes or samples appeared between the sizing and the fill call

# nvmlValueType_t -> member of the c_nvmlValue_t union
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")

# Process lists: kind -> (pynvml wrapper, C function behind it, pre-R510 wrapper)
_LISTS = {
    "compute": ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v3",
                "nvmlDeviceGetComputeRunningProcesses_v2"),
    "graphics": ("nvmlDeviceGetGraphicsRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses_v3",
                 "nvmlDeviceGetGraphicsRunningProcesses_v2"),
    "mps": ("nvmlDeviceGetMPSComputeRunningProcesses", "nvmlDeviceGetMPSComputeRunningProcesses_v3",
            "nvmlDeviceGetMPSComputeRunningProcesses_v2"),
}
# Process entry layouts: what pynvml reads (pid, used memory, GPU instance, compute instance) and what some
# R535 drivers write (the same plus an 8-byte confidential-computing memory figure).
_LAYOUTS = {24: struct.Struct("<I4xQII"), 32: struct.Struct("<I4xQII8x")}


def _code(exc: BaseException) -> int | None:
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


class _NvmlRefused(Exception):
    """A process list NVML refused (no permission); carries the message for `last_errors`."""


@dataclass
class _Entry:
    """One process from a process list."""

    pid: int
    memory: int | None
    kind: str  # compute, graphics, mps (an MPS client), mps_server
    gpu_instance: int | None = None


@dataclass
class _Mig:
    """One MIG device (a compute instance) of a board."""

    handle: Any
    uuid: str
    gpu_instance: int
    slices: int  # of its GPU instance
    compute_slices: int  # of its compute instance (a GPU instance can hold several)


@dataclass
class _Gpu:
    """What is cached about one GPU handle (dropped and fetched again when the GPU errs)."""

    handle: Any
    uuid: str
    name: str
    memory_total: int | None
    fields: list[int] = field(default_factory=lambda: [_FI_TOTAL_ENERGY, _FI_POWER_AVERAGE, _FI_POWER_INSTANT])
    field_values: bool = True
    energy_call: bool = False  # the counter through nvmlDeviceGetTotalEnergyConsumption
    energy_checked: bool = False
    power_usage: bool = True
    average: float | None = None  # the averaged power field of the last read, W
    utilization: bool = True
    process_util: bool = True
    sample_capacity: int = 16  # samples the one-call utilisation read has room for
    lists_unsupported: set[str] = field(default_factory=set)
    mig: list[_Mig] | None = None  # None: not in MIG mode
    mig_slots: int = 0
    mig_at: float = 0.0  # monotonic time the MIG devices were read
    mig_error: str = ""


@dataclass
class _Carried:
    sm: float
    mem: float
    at: float  # monotonic time of its newest sample


@dataclass
class _State:
    """What is kept per GPU UUID across reads, handle losses and errors."""

    last_seen_us: int = 0  # newest process-utilisation sample taken (NVML timestamp, wall clock µs)
    last_read_us: int = 0  # wall clock of the previous process-utilisation read
    carried: dict[int, _Carried] = field(default_factory=dict)
    listed: list[_Entry] = field(default_factory=list)
    lists_at: float | None = None  # monotonic time of the last process-list read
    util: float | None = None
    util_at: float | None = None
    counter: tuple[float, float] | None = None  # (joules, monotonic) of the previous read, for power
    real: tuple[float, float] | None = None  # (joules, monotonic) of the last read of the counter itself
    carried_joules: float = 0.0  # averaged power integrated since `real`
    reported: float | None = None  # the counter value the previous reading gave (never goes back)
    power: tuple[float, float] | None = None  # (averaged watts, monotonic) of the previous read
    samples_at: float | None = None  # monotonic time of the last process-utilisation read
    sampled: set[int] = field(default_factory=set)  # pids listed or sampled at that read


class NvmlSource:
    """Reads every GPU NVML can see. `nvml` is a pynvml-compatible module; None imports `pynvml` on the
    first read. `proc_root` is the /proc tree the exporter reads processes from (pids from NVML are
    checked against it); `host_pids` overrides the PID-namespace detection."""

    def __init__(
        self,
        nvml: Any | None = None,
        *,
        proc_root: str = "/proc",
        host_pids: bool | None = None,
        read_processes: bool = True,
        gauge_seconds: float = 30.0,
        list_seconds: float = 1.0,
        carry_seconds: float = 5.0,
        mig_seconds: float = 60.0,
        counter_seconds: float = 5.0,
        process_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (("gauge_seconds", gauge_seconds), ("list_seconds", list_seconds),
                            ("carry_seconds", carry_seconds), ("mig_seconds", mig_seconds),
                            ("counter_seconds", counter_seconds), ("process_seconds", process_seconds)):
            if value < 0:
                raise ValueError(f"NvmlSource: {name} must be >= 0 seconds, got {value!r}")
        self._nvml = nvml
        self.proc_root = proc_root
        self._host_pids = host_pids
        self.read_processes = read_processes
        self.gauge_seconds = gauge_seconds
        self.list_seconds = list_seconds
        self.carry_seconds = carry_seconds
        self.mig_seconds = mig_seconds
        self.counter_seconds = counter_seconds
        self.process_seconds = process_seconds
        self._clock = clock
        self._wall = wall
        self._initialized = False
        self._gpus: dict[int, _Gpu] = {}
        self._state: dict[str, _State] = {}
        self._layout: dict[str, int] = {}  # C list function -> entry size, where it is not pynvml's 24 bytes
        self._v2: set[str] = set()  # kinds read through the pre-R510 `_v2` functions
        self._pid_max: int | None = None
        self._had_gpus = False  # once GPUs were seen, a missing driver or GPU is a failure, not an absence
        self.last_errors: list[str] = []  # one message per problem in the last read

    # -- module and session ------------------------------------------------------------------

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise SourceAbsent("no NVML: the pynvml module (package nvidia-ml-py) is not installed") from exc
        return self._nvml

    def _ensure_init(self) -> Any:
        nvml = self._module()
        if self._initialized:
            return nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            code = _code(exc)
            if code in (_LIBRARY_NOT_FOUND, _DRIVER_NOT_LOADED):
                if self._had_gpus:  # it was there: a driver unloaded under a running exporter is a failure
                    raise SourceError(f"NVML initialisation failed: {exc} (the NVIDIA driver was unloaded?)") from exc
                lib = " (libnvidia-ml.so.1)" if code == _LIBRARY_NOT_FOUND else ""
                raise SourceAbsent(f"no NVIDIA driver on this node: {exc}{lib}") from exc
            if code == _LIB_RM_VERSION_MISMATCH:
                raise FatalSourceError(_mismatch_message(exc)) from exc
            raise SourceError(f"NVML initialisation failed: {exc}") from exc
        self._initialized = True
        self._gpus.clear()
        for state in self._state.values():
            state.power = None  # a new session reads each counter first: nothing is carried across a gap
        return nvml

    def _drop_session(self) -> None:
        """Forget the session and every cached handle; the next read initialises NVML again."""
        if self._initialized:
            nvml = self._module()
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError:
                pass
        self._initialized = False
        self._gpus.clear()

    def close(self) -> None:
        self._drop_session()

    def host_pids(self) -> bool:
        """Whether pids from NVML can be looked up in `proc_root` (see `carbonwatch.node.sources.pidns`)."""
        if self._host_pids is None:
            view = pidns.detect(self.proc_root)
            self._host_pids = view.host_pids
            if not view.host_pids:
                log.warning("GPU processes cannot be attributed: %s", view.reason)
        return self._host_pids

    # -- reading -------------------------------------------------------------------------------

    def read(self) -> list[GpuReading]:
        """One reading per GPU whose energy could be read; the GPUs that could not, and every problem
        in the process part, are described in `last_errors`."""
        nvml = self._ensure_init()
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            self._fatal_if_mismatch(exc)
            self._drop_session()
            raise SourceError(f"NVML could not count the GPUs: {exc}") from exc
        if count == 0:
            if self._had_gpus:
                raise SourceError("NVML sees no GPU any more (it saw some before)")
            raise SourceAbsent("NVML sees no GPU on this node")
        self._had_gpus = True
        for index in [i for i in self._gpus if i >= count]:
            del self._gpus[index]

        readings: list[GpuReading] = []
        errors: list[str] = []
        reinit = False
        attribute = self.read_processes and self.host_pids()
        for index in range(count):
            try:
                gpu = self._gpu(nvml, index)
                state = self._state.setdefault(gpu.uuid, _State())
                now = self._clock()
                energy, watts, source = self._counter(nvml, gpu, state, now)
            except nvml.NVMLError as exc:
                self._fatal_if_mismatch(exc)
                cached = self._gpus.pop(index, None)
                if cached is not None and cached.uuid in self._state:
                    self._state[cached.uuid].power = None  # its next read is of the counter itself
                errors.append(f"GPU {index}" + (f" ({cached.uuid})" if cached else "") + f": {exc}")
                reinit = reinit or _code(exc) in _REINIT
                continue
            if energy is not None:
                if watts is None and state.counter is not None and now > state.counter[1]:
                    watts = max(energy - state.counter[0], 0.0) / (now - state.counter[1])
                state.counter = (energy, now)
            who = f"GPU {index} ({gpu.uuid})"
            util = self._utilization(nvml, gpu, state, now, who, errors)
            processes: tuple[GpuProcessUse, ...] = ()
            if attribute:
                try:
                    processes = self._processes(nvml, gpu, state, now, who, errors)
                except FatalSourceError:
                    raise
                except nvml.NVMLError as exc:
                    self._fatal_if_mismatch(exc)
                    errors.append(f"{who}: processes: {exc}")
                    reinit = reinit or _code(exc) in _REINIT
                except Exception as exc:  # the energy is read: a bug in the process part must not lose it
                    log.exception("%s: reading its processes failed", who)
                    errors.append(f"{who}: processes: {type(exc).__name__}: {exc}")
            readings.append(
                GpuReading(
                    index=index,
                    uuid=gpu.uuid,
                    name=gpu.name,
                    power_watts=watts,
                    energy_joules=energy,
                    utilization_ratio=util,
                    processes=processes,
                    energy_source=source,
                    mig_shares=_mig_shares(gpu),
                )
            )
        if self.read_processes and not attribute:
            errors.append(
                f"GPU processes not attributed: NVML reports host pids and {self.proc_root} is not in the host "
                "PID namespace (run the exporter with the host's PID namespace, e.g. hostPID: true or "
                "--pid=host, or point process.proc_root at the host's /proc)"
            )
        self.last_errors = errors
        if reinit:
            self._drop_session()
        return readings

    def _fatal_if_mismatch(self, exc: BaseException) -> None:
        if _code(exc) == _LIB_RM_VERSION_MISMATCH:
            self._initialized = False
            raise FatalSourceError(_mismatch_message(exc)) from exc

    # -- per GPU, cached ------------------------------------------------------------------------

    def _gpu(self, nvml: Any, index: int) -> _Gpu:
        gpu = self._gpus.get(index)
        if gpu is not None:
            return gpu
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory: int | None = None
        try:
            memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        except nvml.NVMLError as exc:
            self._fatal_if_mismatch(exc)
        gpu = _Gpu(handle, _text(nvml.nvmlDeviceGetUUID(handle)), _text(nvml.nvmlDeviceGetName(handle)), memory)
        try:
            current = int(nvml.nvmlDeviceGetMigMode(gpu.handle)[0])
        except nvml.NVMLError as exc:
            if _code(exc) not in _CANNOT_TELL:
                raise
            current = 0
        if current == _MIG_ENABLED:
            gpu.process_util = False  # no per-process utilisation in MIG mode
            gpu.utilization = False
            self._setup_mig(nvml, gpu, self._clock())
        self._gpus[index] = gpu
        return gpu

    def _setup_mig(self, nvml: Any, gpu: _Gpu, now: float) -> None:
        """The MIG devices of a board in MIG mode. Instances come and go without a GPU reset, so this is
        read again every `mig_seconds`. A failure leaves the energy alone: the problem is reported with
        the processes."""
        gpu.mig_at = now
        try:
            gpu.mig, gpu.mig_slots = self._mig_devices(nvml, gpu)
            gpu.mig_error = ""
        except nvml.NVMLError as exc:
            self._fatal_if_mismatch(exc)
            if gpu.mig is None:
                gpu.mig = []
            gpu.mig_error = f"MIG layout unreadable: {exc}"

    def _mig_devices(self, nvml: Any, gpu: _Gpu) -> tuple[list[_Mig], int]:
        slots = int(nvml.nvmlDeviceGetMaxMigDeviceCount(gpu.handle))
        migs: list[_Mig] = []
        for i in range(slots):
            try:
                handle = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu.handle, i)
            except nvml.NVMLError as exc:
                if _code(exc) in (_NOT_FOUND, _INVALID_ARGUMENT):
                    continue  # an empty slot
                raise
            attrs = nvml.nvmlDeviceGetAttributes(handle)
            gi = int(nvml.nvmlDeviceGetGpuInstanceId(handle))
            migs.append(_Mig(handle, _text(nvml.nvmlDeviceGetUUID(handle)), gi, int(attrs.gpuInstanceSliceCount),
                             max(int(attrs.computeInstanceSliceCount), 1)))
        # One slice per MIG device the board can hold (7 on A100/H100, 4 on A30), never less than in use.
        in_use = sum({m.gpu_instance: m.slices for m in migs}.values())
        return migs, max(slots, in_use, 1)

    # -- energy --------------------------------------------------------------------------------

    def _counter(self, nvml: Any, gpu: _Gpu, state: _State, now: float) -> tuple[float | None, float | None, str]:
        """`_energy`, reading the counter itself every `counter_seconds` and carrying it forward by the
        averaged power in between (where the GPU has that field)."""
        cheap = gpu.field_values and _FI_POWER_AVERAGE in gpu.fields
        due = (not cheap or state.real is None or state.reported is None
               or now - state.real[1] >= self.counter_seconds - 1e-6)
        if not due:
            assert state.real is not None and state.reported is not None
            self._energy(nvml, gpu, with_counter=False)  # the power fields only
            average = gpu.average
            if average is not None and state.power is not None:
                state.carried_joules += max(now - state.power[1], 0.0) * (average + state.power[0]) / 2.0
                state.power = (average, now)
                state.reported = max(state.reported, state.real[0] + state.carried_joules)
                return state.reported, average, ENERGY_COUNTER
            # the averaged power went missing: read the counter now
        energy, watts, source = self._energy(nvml, gpu)
        if energy is None or source != ENERGY_COUNTER:
            state.real = state.reported = state.power = None
            return energy, watts, source
        reported = energy
        if state.real is not None and state.reported is not None and energy >= state.real[0]:
            reported = max(energy, state.reported)  # an estimate ahead of the counter is held, never taken back
        # (a counter below its previous read is a driver reload: it passes through, for the sampler to see)
        state.real, state.carried_joules, state.reported = (energy, now), 0.0, reported
        state.power = (gpu.average, now) if gpu.average is not None else None
        return reported, watts, source

    def _energy(self, nvml: Any, gpu: _Gpu, with_counter: bool = True) -> tuple[float | None, float | None, str]:
        """(counter in J or None, power in W or None, energy source), from one field-values call where the
        driver has one; `with_counter=False` asks for the power fields only."""
        got: dict[int, float] = {}
        gpu.average = None
        wanted = gpu.fields if with_counter else [f for f in gpu.fields if f != _FI_TOTAL_ENERGY]
        if gpu.field_values and wanted:
            try:
                values = nvml.nvmlDeviceGetFieldValues(gpu.handle, list(wanted))
            except nvml.NVMLError as exc:
                if _code(exc) not in _CANNOT_TELL:
                    raise
                gpu.field_values = False
                if _FI_TOTAL_ENERGY in gpu.fields:
                    gpu.energy_call = True
            else:
                got = self._field_results(nvml, gpu, values)
        energy = got.get(_FI_TOTAL_ENERGY)
        if energy is not None and not gpu.energy_checked:
            energy = self._check_energy_field(nvml, gpu, energy, got)
        if energy is None and gpu.energy_call and with_counter:
            energy = self._energy_call(nvml, gpu)
        average, instant = got.get(_FI_POWER_AVERAGE), got.get(_FI_POWER_INSTANT)
        gpu.average = average
        if energy is not None:
            return energy, average if average is not None else instant, ENERGY_COUNTER
        if average is not None:
            return None, average, POWER_AVERAGE
        if instant is None and gpu.power_usage:
            try:
                instant = int(nvml.nvmlDeviceGetPowerUsage(gpu.handle)) / 1000.0
            except nvml.NVMLError as exc:
                if _code(exc) in _CANNOT_TELL:
                    gpu.power_usage = False
                elif _code(exc) != _NO_PERMISSION:
                    raise
        return None, instant, POWER_INSTANT

    def _field_results(self, nvml: Any, gpu: _Gpu, values: Any) -> dict[int, float]:
        got: dict[int, float] = {}
        for v in values:
            fid, ret = int(v.fieldId), int(v.nvmlReturn)
            if ret == _SUCCESS:
                number = _field_number(v)
                got[fid] = number / 1000.0  # mJ -> J, mW -> W
            elif ret in _CANNOT_TELL:
                gpu.fields = [f for f in gpu.fields if f != fid]  # never asked again
                if fid == _FI_TOTAL_ENERGY:
                    gpu.energy_call = True  # try the dedicated call
            elif ret != _NO_PERMISSION:
                raise nvml.NVMLError(ret)
        return got

    def _check_energy_field(self, nvml: Any, gpu: _Gpu, energy: float, got: dict[int, float]) -> float | None:
        """First read of a GPU: the energy field against the dedicated call, read right after it. They may
        differ by the ticks in between (100 ms each); more than 0.5 s of the board's power, or 1 J, and the
        field is not trusted."""
        gpu.energy_checked = True
        try:
            direct = int(nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)) / 1000.0
        except nvml.NVMLError as exc:
            if _code(exc) in _CANNOT_TELL or _code(exc) == _NO_PERMISSION:
                return energy
            raise
        watts = got.get(_FI_POWER_AVERAGE) or got.get(_FI_POWER_INSTANT) or 0.0
        if abs(direct - energy) <= max(1.0, 0.5 * watts):
            return energy
        log.warning(
            "GPU %s: the energy field reads %.3f J but nvmlDeviceGetTotalEnergyConsumption %.3f J: "
            "using the dedicated call (3.4 ms a read instead of none)", gpu.uuid, energy, direct,
        )
        gpu.fields = [f for f in gpu.fields if f != _FI_TOTAL_ENERGY]
        gpu.energy_call = True
        return direct

    def _energy_call(self, nvml: Any, gpu: _Gpu) -> float | None:
        try:
            return int(nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)) / 1000.0
        except nvml.NVMLError as exc:
            if _code(exc) in _CANNOT_TELL:
                gpu.energy_call = False  # pre-Volta: no counter at all
                return None
            if _code(exc) == _NO_PERMISSION:
                return None
            raise

    # -- gauges --------------------------------------------------------------------------------

    def _utilization(
        self, nvml: Any, gpu: _Gpu, state: _State, now: float, who: str, errors: list[str]
    ) -> float | None:
        if not gpu.utilization:
            return None
        if state.util_at is not None and now - state.util_at < self.gauge_seconds:
            return state.util
        state.util_at = now
        try:
            rates = nvml.nvmlDeviceGetUtilizationRates(gpu.handle)
        except nvml.NVMLError as exc:
            self._fatal_if_mismatch(exc)
            if _code(exc) in _CANNOT_TELL:
                gpu.utilization = False
                state.util = None
            elif _code(exc) != _NO_PERMISSION:
                errors.append(f"{who}: utilization: {exc}")
            return state.util
        state.util = min(max(int(rates.gpu) / 100.0, 0.0), 1.0)
        return state.util

    # -- processes -----------------------------------------------------------------------------

    def _processes(
        self, nvml: Any, gpu: _Gpu, state: _State, now: float, who: str, errors: list[str]
    ) -> tuple[GpuProcessUse, ...]:
        if gpu.mig is not None:
            return self._mig_processes(nvml, gpu, state, now, who, errors)
        before = {e.pid for e in state.listed}  # alive at the previous read
        listed_now = state.lists_at is None or now - state.lists_at >= self.list_seconds
        if listed_now:
            self._read_lists(nvml, gpu, state, now, who, errors)
        # a process listed since the last per-process read is read at once, not up to process_seconds late
        fresh = any(e.pid not in state.sampled for e in state.listed)
        samples = self._samples(nvml, gpu, state, now, who, errors, force=fresh)
        unlisted = set(samples or ()) - {e.pid for e in state.listed}
        if not listed_now and any(self._alive(pid) for pid in unlisted):  # started since the lists were read
            self._read_lists(nvml, gpu, state, now, who, errors)
        listed = [e for e in state.listed if self._alive(e.pid)]
        state.listed = listed

        if samples is None:  # no per-process utilisation on this GPU: memory share in the sampler
            return _merge(listed, None)
        # a process that exited since the previous read still used the GPU in this interval; samples of one
        # that was gone before it (from a read that covers several seconds) say nothing about this interval
        alive = {e.pid for e in listed}
        samples = {pid: f for pid, f in samples.items() if pid in alive or pid in before}
        if state.samples_at == now:
            state.sampled = alive | set(samples)
        for pid, (sm, mem) in samples.items():
            state.carried[pid] = _Carried(sm, mem, now)
        alive |= before  # (those that exited since the previous read: their last interval)
        state.carried = {
            pid: c for pid, c in state.carried.items()
            if pid in samples or (pid in alive and (state.samples_at or now) - c.at <= self.carry_seconds)
        }
        figures = {pid: (c.sm, c.mem) for pid, c in state.carried.items()}
        return _merge(listed, figures)

    def _read_lists(self, nvml: Any, gpu: _Gpu, state: _State, now: float, who: str, errors: list[str]) -> None:
        try:
            state.listed = self._lists(nvml, gpu, gpu.handle)
            state.lists_at = now
        except _NvmlRefused as exc:
            errors.append(f"{who}: {exc}")
            state.lists_at = now
        except nvml.NVMLError as exc:
            self._fatal_if_mismatch(exc)
            errors.append(f"{who}: process lists: {exc}")

    def _alive(self, pid: int) -> bool:
        return os.path.exists(f"{self.proc_root}/{pid}")

    def _samples(
        self, nvml: Any, gpu: _Gpu, state: _State, now: float, who: str, errors: list[str], force: bool = False
    ) -> dict[int, tuple[float, float]] | None:
        """pid -> (SM %, memory %), the mean of the samples newer than the newest seen (every
        `process_seconds`, or now if `force`; empty in between); None when this GPU has no per-process
        utilisation."""
        if not gpu.process_util:
            return None
        if not force and state.samples_at is not None and now - state.samples_at < self.process_seconds - 1e-6:
            return {}
        state.samples_at = now
        now_us = int(self._wall() * 1e6)
        since = state.last_seen_us
        if since <= 0 or since > now_us:  # first read, or the wall clock went back
            since = state.last_read_us if 0 < state.last_read_us <= now_us else now_us - 1_000_000
        state.last_read_us = now_us
        raw: Any = ()
        for attempt in range(_RETRIES + 1):
            try:
                if attempt == 0:  # one call into a buffer sized from earlier reads
                    direct = self._samples_direct(nvml, gpu, since)
                    if direct is None:
                        continue  # too small: pynvml's wrapper sizes it (two calls)
                    raw = direct
                else:
                    raw = nvml.nvmlDeviceGetProcessUtilization(gpu.handle, since)
                break
            except nvml.NVMLError as exc:
                code = _code(exc)
                if code in (_NOT_FOUND, _SUCCESS):  # no sample newer than `since` (pynvml: SUCCESS, none)
                    state.last_seen_us = since
                    return {}
                if code in _CANNOT_TELL:
                    gpu.process_util = False
                    return None
                if code == _INSUFFICIENT_SIZE and attempt < _RETRIES:
                    continue
                self._fatal_if_mismatch(exc)
                errors.append(f"{who}: process utilization: {exc}")
                return {}
        gpu.sample_capacity = max(gpu.sample_capacity, 2 * len(raw) + 8)
        sums: dict[int, list[float]] = {}
        newest = since
        for s in raw:
            stamp = int(s.timeStamp)
            if stamp <= since or stamp > now_us + 1_000_000:
                continue  # stamped before the window or in the future (from before the clock went back)
            acc = sums.setdefault(int(s.pid), [0.0, 0.0, 0.0])
            acc[0] += float(s.smUtil)
            acc[1] += float(s.memUtil)
            acc[2] += 1.0
            newest = max(newest, stamp)
        state.last_seen_us = newest
        return {pid: (a[0] / a[2], a[1] / a[2]) for pid, a in sums.items()}

    def _samples_direct(self, nvml: Any, gpu: _Gpu, since: int) -> list[Any] | None:
        """nvmlDeviceGetProcessUtilization called once, through pynvml's function lookup, into a buffer as
        large as twice the most samples seen (pynvml's wrapper always makes a sizing call first). None when
        the buffer is too small or the module gives no access to the C function."""
        try:
            fn = nvml._nvmlGetFunctionPointer("nvmlDeviceGetProcessUtilization")
            sample_t = nvml.c_nvmlProcessUtilizationSample_t
        except AttributeError:
            return None
        capacity = gpu.sample_capacity
        buf = (sample_t * capacity)()
        count = ctypes.c_uint(capacity)
        ret = fn(gpu.handle, buf, ctypes.byref(count), ctypes.c_ulonglong(since))
        if ret == _INSUFFICIENT_SIZE:
            return None
        if ret != _SUCCESS:
            raise nvml.NVMLError(ret)
        return list(buf[: min(count.value, capacity)])

    def _mig_processes(
        self, nvml: Any, gpu: _Gpu, state: _State, now: float, who: str, errors: list[str]
    ) -> tuple[GpuProcessUse, ...]:
        assert gpu.mig is not None
        due = state.lists_at is None or now - state.lists_at >= self.list_seconds
        if due and now - gpu.mig_at >= (self.list_seconds if gpu.mig_error else self.mig_seconds):
            self._setup_mig(nvml, gpu, now)
        if gpu.mig_error:
            errors.append(f"{who}: {gpu.mig_error}")
            return ()
        if due:
            state.lists_at = now
            try:
                state.listed = self._mig_lists(nvml, gpu)
            except _NvmlRefused as exc:
                state.listed = []
                errors.append(f"{who}: {exc}")
        listed = [e for e in state.listed if self._alive(e.pid)]
        state.listed = listed
        slices = {m.gpu_instance: m.slices for m in gpu.mig}
        by_gi: dict[int, dict[int, _Entry]] = {}
        for e in listed:
            if e.gpu_instance in slices and e.kind != MPS_SERVER:
                by_gi.setdefault(e.gpu_instance, {})[e.pid] = e
        out: list[GpuProcessUse] = []
        for gi, entries in sorted(by_gi.items()):
            fraction = slices[gi] / gpu.mig_slots
            memory = {pid: e.memory for pid, e in entries.items()}
            known = [m for m in memory.values() if m is not None]
            total = float(sum(known))
            for pid in sorted(entries):
                mem = memory[pid]
                within = (mem or 0) / total if (len(known) == len(memory) and total > 0) else 1.0 / len(entries)
                out.append(GpuProcessUse(pid, None, None, mem, gpu_instance_id=gi, board_share=fraction * within))
        return tuple(out)

    def _mig_lists(self, nvml: Any, gpu: _Gpu) -> list[_Entry]:
        """Processes of every MIG device through its own handle; the board-level list (which needs
        privileges) only if a MIG handle is refused."""
        assert gpu.mig is not None
        entries: list[_Entry] = []
        try:
            for m in gpu.mig:
                for e in self._lists(nvml, gpu, m.handle, kinds=("compute", "mps")):
                    e.gpu_instance = m.gpu_instance
                    entries.append(e)
            return entries
        except _NvmlRefused as first:
            try:
                board = self._lists(nvml, gpu, gpu.handle, kinds=("compute", "mps"))
            except _NvmlRefused:
                raise _NvmlRefused(
                    f"MIG: NVML refused the process lists ({first}): the board's energy stays unattributed; "
                    "run the exporter as root or with the device capabilities of each MIG instance"
                ) from first
            return board

    def _lists(
        self, nvml: Any, gpu: _Gpu, handle: Any, kinds: tuple[str, ...] = ("compute", "graphics", "mps")
    ) -> list[_Entry]:
        """Processes from the process lists of one handle, validated, with MPS clients in place of the
        MPS server. Raises _NvmlRefused when NVML refuses them for lack of permission."""
        entries: list[_Entry] = []
        for kind in kinds:
            if kind in gpu.lists_unsupported:
                continue
            got = self._list(nvml, gpu, handle, kind)
            if got is None:
                gpu.lists_unsupported.add(kind)
                continue
            entries.extend(got)
        return self._without_mps_server(entries)

    def _list(self, nvml: Any, gpu: _Gpu, handle: Any, kind: str) -> list[_Entry] | None:
        wrapper, c_name, v2 = _LISTS[kind]
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
        for attempt in range(_RETRIES):
            try:
                if self._layout.get(c_name, 24) != 24:
                    parsed = self._raw_entries(nvml, c_name, handle, self._layout[c_name])
                    return [_Entry(p, m, kind, gi) for p, m, gi in parsed if self._valid(gpu, p, m)]
                infos = getattr(nvml, v2 if kind in self._v2 else wrapper)(handle)
            except nvml.NVMLError as exc:
                code = _code(exc)
                if code == _INSUFFICIENT_SIZE and attempt + 1 < _RETRIES:
                    continue
                if code in _CANNOT_TELL:
                    if code == _FUNCTION_NOT_FOUND and kind not in self._v2 and v2:
                        self._v2.add(kind)  # an older pynvml raising the NVMLError itself
                        continue
                    return None
                if code == _NO_PERMISSION:
                    raise _NvmlRefused(f"{kind} process list: {exc}") from exc
                raise
            except Exception as exc:
                if mismatch is None or not isinstance(exc, mismatch) or kind in self._v2:
                    raise
                self._v2.add(kind)  # driver older than R510: no `_v3` functions
                log.info("NVML: no %s; reading the %s process list through %s", c_name, kind, v2)
                continue
            found = [(int(i.pid), _memory(i.usedGpuMemory), _instance(i)) for i in infos]
            if len(found) >= 2 and kind not in self._v2 and not all(self._valid(gpu, p, m) for p, m, _ in found):
                found = self._other_layout(nvml, gpu, c_name, handle, found)
            return [_Entry(p, m, kind, gi) for p, m, gi in found if self._valid(gpu, p, m)]
        return []

    def _other_layout(
        self, nvml: Any, gpu: _Gpu, c_name: str, handle: Any, found: list[tuple[int, int | None, int | None]]
    ) -> list[tuple[int, int | None, int | None]]:
        """A list where some entries do not check out: read it again raw and keep the entry layout under
        which more of them do (the 32-byte layout of some R535 drivers, remembered for this call)."""
        try:
            wide = self._raw_entries(nvml, c_name, handle, 32)
        except (AttributeError, TypeError):
            return found  # a module without pynvml's function-pointer access
        score_24 = sum(self._valid(gpu, p, m) for p, m, _ in found)
        score_32 = sum(self._valid(gpu, p, m) for p, m, _ in wide)
        if score_32 > score_24:
            log.warning("NVML: %s writes 32-byte process entries (R535 layout); reading it raw from now on", c_name)
            self._layout[c_name] = 32
            return wide
        return found

    def _raw_entries(
        self, nvml: Any, c_name: str, handle: Any, size: int
    ) -> list[tuple[int, int | None, int | None]]:
        """The C list function called directly, through pynvml's own function lookup: pynvml's two-call
        sizing with a buffer wide enough for 32-byte entries, parsed with entries of `size` bytes."""
        fn = nvml._nvmlGetFunctionPointer(c_name)
        for _attempt in range(_RETRIES):
            count = ctypes.c_uint(0)
            ret = fn(handle, ctypes.byref(count), None)
            if ret == _SUCCESS:
                return []
            if ret != _INSUFFICIENT_SIZE:
                raise nvml.NVMLError(ret)
            capacity = count.value * 2 + 5
            buf = (ctypes.c_ubyte * (capacity * 32))()
            count.value = capacity
            ret = fn(handle, ctypes.byref(count), buf)
            if ret == _INSUFFICIENT_SIZE:
                continue
            if ret != _SUCCESS:
                raise nvml.NVMLError(ret)
            data = bytes(buf)
            layout = _LAYOUTS[size]
            out: list[tuple[int, int | None, int | None]] = []
            for i in range(min(count.value, capacity)):
                pid, memory, gi, _ci = layout.unpack_from(data, i * size)
                out.append((pid, None if memory == _NOT_AVAILABLE_U64 else memory,
                            None if gi == 0xFFFFFFFF else gi))
            return out
        raise nvml.NVMLError(_INSUFFICIENT_SIZE)

    def _valid(self, gpu: _Gpu, pid: int, memory: int | None) -> bool:
        """A process entry that can be real: a pid the kernel could hand out, present in /proc, and GPU
        memory no larger than the board's."""
        if self._pid_max is None:
            try:
                with open(f"{self.proc_root}/sys/kernel/pid_max") as fh:
                    self._pid_max = int(fh.read().strip())
            except (OSError, ValueError):
                self._pid_max = 4_194_304  # the kernel's ceiling (PID_MAX_LIMIT on 64-bit)
        if not 0 < pid <= self._pid_max:
            return False
        if memory is not None and gpu.memory_total is not None and memory > gpu.memory_total:
            return False
        return self._alive(pid)

    def _without_mps_server(self, entries: list[_Entry]) -> list[_Entry]:
        """With MPS clients listed, the MPS server (in the compute list) is their proxy: mark it, so that its
        SM time goes to the clients and it is charged nothing itself."""
        if not any(e.kind == "mps" for e in entries):
            return entries
        for e in entries:
            if e.kind != "mps" and _comm(self.proc_root, e.pid) == _MPS_SERVER:
                e.kind = MPS_SERVER
        return entries


def _merge(listed: list[_Entry], figures: dict[int, tuple[float, float]] | None) -> tuple[GpuProcessUse, ...]:
    """One GpuProcessUse per pid: listed processes (largest memory figure where listed twice) and processes
    that only have utilisation figures (they used the GPU in the window, then left). The MPS server's SM and
    memory-controller time is split among its clients by their memory; the server itself is left out."""
    servers = {e.pid for e in listed if e.kind == MPS_SERVER}
    memory: dict[int, int | None] = {}
    for e in listed:
        if e.pid in servers:
            continue
        prev = memory.get(e.pid)
        if e.pid not in memory or (e.memory is not None and (prev is None or e.memory > prev)):
            memory[e.pid] = e.memory
    if figures is None:
        return tuple(GpuProcessUse(pid, None, None, memory[pid]) for pid in sorted(memory))
    figs = {pid: f for pid, f in figures.items() if pid not in servers}
    clients = sorted({e.pid for e in listed if e.kind == "mps"})
    sm = sum(figures[pid][0] for pid in servers if pid in figures)
    mem = sum(figures[pid][1] for pid in servers if pid in figures)
    if clients and (sm > 0 or mem > 0):
        weights = {pid: float(memory.get(pid) or 0) for pid in clients}
        total = sum(weights.values())
        for pid in clients:
            w = weights[pid] / total if total > 0 else 1.0 / len(clients)
            base = figs.get(pid, (0.0, 0.0))
            figs[pid] = (base[0] + sm * w, base[1] + mem * w)
    return tuple(
        GpuProcessUse(pid, *figs.get(pid, (0.0, 0.0)), memory.get(pid)) for pid in sorted(set(memory) | set(figs))
    )


def _mig_shares(gpu: _Gpu) -> tuple[tuple[str, float], ...]:
    """Per MIG device: its GPU instance's fraction of the board's slices, split among the instance's compute
    instances by their compute slices, so the fractions of one instance's devices add up to the instance's."""
    if not gpu.mig:
        return ()
    per_gi: dict[int, int] = {}
    for m in gpu.mig:
        per_gi[m.gpu_instance] = per_gi.get(m.gpu_instance, 0) + m.compute_slices
    return tuple(
        (m.uuid, m.slices / gpu.mig_slots * m.compute_slices / per_gi[m.gpu_instance]) for m in gpu.mig
    )


def _mismatch_message(exc: BaseException) -> str:
    return (
        f"NVML: {exc} The loaded NVIDIA kernel driver no longer matches the NVML library this process loaded "
        "(a driver upgrade without a reboot or module reload?). pynvml cannot load the library again: exiting so "
        "that the supervisor restarts the exporter."
    )


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _memory(value: Any) -> int | None:
    if value is None:
        return None
    number = int(value)
    return None if number == _NOT_AVAILABLE_U64 else number


def _instance(info: Any) -> int | None:
    gi = getattr(info, "gpuInstanceId", None)
    return None if gi is None or int(gi) == 0xFFFFFFFF else int(gi)


def _comm(proc_root: str, pid: int) -> str:
    try:
        with open(f"{proc_root}/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _field_number(value: Any) -> float:
    """The number in a c_nvmlFieldValue_t, read from the union member its valueType names."""
    kind = int(value.valueType)
    member = _VALUE_MEMBERS[kind] if 0 <= kind < len(_VALUE_MEMBERS) else "uiVal"
    return float(getattr(value.value, member))
