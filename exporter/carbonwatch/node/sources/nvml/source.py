"""NvmlSource: every GPU NVML can see, one reading per GPU and sample. The NVML session and the GPU handles
live here; the energy (energy.py), the process lists (lists.py), the per-process samples (processes.py) and
MIG (mig.py) are one class each, all over the same `Nvml` (base.py).

Energy first, always: a failure anywhere in the process part never drops a GPU's energy; the reading is
returned and the problem named in `last_errors`.

Errors: no pynvml, no NVML library, no driver or no GPU raise `SourceAbsent` (nothing to measure here), unless
this source has read GPUs before (then the driver went away: `SourceError`); a library that no longer matches
the loaded driver (NVML_ERROR_LIB_RM_VERSION_MISMATCH, after a driver upgrade) raises `FatalSourceError`,
since pynvml never loads the library again; an uninitialised session (driver reload) is initialised again on
the next read. NVML pids are host pids: when the /proc tree is not in the host's PID namespace, processes are
not attributed and `last_errors` says why.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from carbonwatch.node.model import FatalSourceError, GpuProcessUse, GpuReading, SourceAbsent, SourceError
from carbonwatch.node.sources import pidns
from carbonwatch.node.sources.nvml.base import (
    CANNOT_TELL,
    DRIVER_NOT_LOADED,
    LIB_RM_VERSION_MISMATCH,
    LIBRARY_NOT_FOUND,
    MIG_ENABLED,
    REINIT,
    Gpu,
    GpuState,
    Nvml,
    code,
    fatal_if_mismatch,
    mismatch_message,
    text,
)
from carbonwatch.node.sources.nvml.energy import EnergyReader, UtilizationGauge
from carbonwatch.node.sources.nvml.lists import ProcessLists
from carbonwatch.node.sources.nvml.mig import MigBoards, mig_shares
from carbonwatch.node.sources.nvml.processes import GpuProcesses, ProcessSamples

log = logging.getLogger("carbonwatch.nvml")


@dataclass(frozen=True)
class Intervals:
    """Seconds between the reads of each kind (see the modules that read them)."""

    gauge: float = 30.0
    lists: float = 1.0
    carry: float = 5.0
    mig: float = 60.0
    counter: float = 5.0
    process: float = 5.0


class _Readers:
    """The per-concern readers over one NVML module."""

    def __init__(self, nvml: Nvml, every: Intervals, proc_root: str, wall: Callable[[], float]) -> None:
        self.energy = EnergyReader(nvml, every.counter)
        self.utilization = UtilizationGauge(nvml, every.gauge)
        self.lists = ProcessLists(nvml, proc_root)
        self.processes = GpuProcesses(nvml, self.lists, ProcessSamples(nvml, every.process, wall), every.lists,
                                      every.carry)  # fmt: skip
        self.mig = MigBoards(nvml, self.lists, every.lists, every.mig)


class NvmlSource:
    """Reads every GPU NVML can see. `nvml` is anything with the `Nvml` calls (a fake in tests); None imports
    `pynvml` on the first read. `proc_root` is the /proc tree the exporter reads processes from (pids from NVML
    are checked against it); `host_pids` overrides the PID-namespace detection."""

    def __init__(
        self,
        nvml: Nvml | None = None,
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
        self.every = Intervals(gauge_seconds, list_seconds, carry_seconds, mig_seconds, counter_seconds,
                               process_seconds)  # fmt: skip
        self._nvml = nvml
        self.proc_root = proc_root
        self._host_pids = host_pids
        self.read_processes = read_processes
        self._clock = clock
        self._wall = wall
        self._readers: _Readers | None = None
        self._initialized = False
        self._gpus: dict[int, Gpu] = {}
        self._state: dict[str, GpuState] = {}
        self._had_gpus = False  # once GPUs were seen, a missing driver or GPU is a failure, not an absence
        self.last_errors: list[str] = []  # one message per problem in the last read

    @property
    def counter_seconds(self) -> float:
        return self.every.counter

    @property
    def process_seconds(self) -> float:
        return self.every.process

    # -- module and session ------------------------------------------------------------------

    def _module(self) -> Nvml:
        if self._nvml is None:
            try:
                self._nvml = cast(Nvml, importlib.import_module("pynvml"))
            except ImportError as exc:
                raise SourceAbsent("no NVML: the pynvml module (package nvidia-ml-py) is not installed") from exc
        if self._readers is None:
            self._readers = _Readers(self._nvml, self.every, self.proc_root, self._wall)
        return self._nvml

    def _ensure_init(self) -> tuple[Nvml, _Readers]:
        nvml = self._module()
        assert self._readers is not None
        if self._initialized:
            return nvml, self._readers
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            ret = code(exc)
            if ret in (LIBRARY_NOT_FOUND, DRIVER_NOT_LOADED):
                if self._had_gpus:  # it was there: a driver unloaded under a running exporter is a failure
                    raise SourceError(f"NVML initialisation failed: {exc} (the NVIDIA driver was unloaded?)") from exc
                lib = " (libnvidia-ml.so.1)" if ret == LIBRARY_NOT_FOUND else ""
                raise SourceAbsent(f"no NVIDIA driver on this node: {exc}{lib}") from exc
            if ret == LIB_RM_VERSION_MISMATCH:
                raise FatalSourceError(mismatch_message(exc)) from exc
            raise SourceError(f"NVML initialisation failed: {exc}") from exc
        self._initialized = True
        self._gpus.clear()
        for state in self._state.values():
            state.power = None  # a new session reads each counter first: nothing is carried across a gap
        return nvml, self._readers

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
        try:
            return self._read()
        except FatalSourceError:
            self._initialized = False
            raise

    def _read(self) -> list[GpuReading]:
        nvml, readers = self._ensure_init()
        count = self._count(nvml)
        readings: list[GpuReading] = []
        errors: list[str] = []
        reinit = False
        attribute = self.read_processes and self.host_pids()
        for index in range(count):
            try:
                reading, lost_session = self._read_gpu(readers, index, attribute, errors)
            except nvml.NVMLError as exc:
                fatal_if_mismatch(exc)
                cached = self._gpus.pop(index, None)
                if cached is not None and cached.uuid in self._state:
                    self._state[cached.uuid].power = None  # its next read is of the counter itself
                errors.append(f"GPU {index}" + (f" ({cached.uuid})" if cached else "") + f": {exc}")
                reinit = reinit or code(exc) in REINIT
                continue
            readings.append(reading)
            reinit = reinit or lost_session
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

    def _count(self, nvml: Nvml) -> int:
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            fatal_if_mismatch(exc)
            self._drop_session()
            raise SourceError(f"NVML could not count the GPUs: {exc}") from exc
        if count == 0:
            if self._had_gpus:
                raise SourceError("NVML sees no GPU any more (it saw some before)")
            raise SourceAbsent("NVML sees no GPU on this node")
        self._had_gpus = True
        for index in [i for i in self._gpus if i >= count]:
            del self._gpus[index]
        return count

    def _read_gpu(self, readers: _Readers, index: int, attribute: bool,
                  errors: list[str]) -> tuple[GpuReading, bool]:  # fmt: skip
        """The energy (an NVMLError here loses this GPU's reading), then gauges and processes (whose errors
        are only named); True with it when the process part found the session lost."""
        gpu = self._gpu(readers, index)
        state = self._state.setdefault(gpu.uuid, GpuState())
        now = self._clock()
        energy, watts, source = readers.energy.read(gpu, state, now)
        if energy is not None:
            if watts is None and state.counter is not None and now > state.counter[1]:
                watts = max(energy - state.counter[0], 0.0) / (now - state.counter[1])
            state.counter = (energy, now)
        who = f"GPU {index} ({gpu.uuid})"
        util = readers.utilization.read(gpu, state, now, who, errors)
        processes, lost = self._processes(readers, gpu, state, now, who, errors) if attribute else ((), False)
        return GpuReading(index=index, uuid=gpu.uuid, name=gpu.name, power_watts=watts, energy_joules=energy,
                          utilization_ratio=util, processes=processes, energy_source=source,
                          mig_shares=mig_shares(gpu)), lost  # fmt: skip

    def _processes(self, readers: _Readers, gpu: Gpu, state: GpuState, now: float, who: str,
                   errors: list[str]) -> tuple[tuple[GpuProcessUse, ...], bool]:  # fmt: skip
        nvml = self._module()
        try:
            if gpu.mig is not None:
                return readers.mig.processes(gpu, state, now, who, errors), False
            return readers.processes.read(gpu, state, now, who, errors), False
        except FatalSourceError:
            raise
        except nvml.NVMLError as exc:
            fatal_if_mismatch(exc)
            errors.append(f"{who}: processes: {exc}")
            return (), code(exc) in REINIT
        except Exception as exc:  # the energy is read: a bug in the process part must not lose it
            log.exception("%s: reading its processes failed", who)
            errors.append(f"{who}: processes: {type(exc).__name__}: {exc}")
        return (), False

    def _gpu(self, readers: _Readers, index: int) -> Gpu:
        gpu = self._gpus.get(index)
        if gpu is not None:
            return gpu
        nvml = self._module()
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory: int | None = None
        try:
            memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        except nvml.NVMLError as exc:
            fatal_if_mismatch(exc)
        gpu = Gpu(handle, text(nvml.nvmlDeviceGetUUID(handle)), text(nvml.nvmlDeviceGetName(handle)), memory)
        try:
            current = int(nvml.nvmlDeviceGetMigMode(gpu.handle)[0])
        except nvml.NVMLError as exc:
            if code(exc) not in CANNOT_TELL:
                raise
            current = 0
        if current == MIG_ENABLED:
            gpu.process_util = False  # no per-process utilisation in MIG mode
            gpu.utilization = False
            readers.mig.setup(gpu, self._clock())
        self._gpus[index] = gpu
        return gpu
