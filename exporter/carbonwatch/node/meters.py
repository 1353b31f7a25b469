"""One meter per component: each turns its source's reading into the device energy of one sample interval
and splits it among processes (carbonwatch.node.attribution). Meters keep only their own baselines (the previous
hardware counter or power reading); the counters that accumulate live in carbonwatch.node.counters.

Every meter returns a `Measured`: the devices' interval energy, the parts per process, what went to
pid="other" (busy time of processes not read individually) and the unattributed rest, so that
parts + other + unattributed == the devices' energy, per component and sample, by construction.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from carbonwatch.node import attribution
from carbonwatch.node.config import ExporterConfig
from carbonwatch.node.model import (
    SOURCE_MODEL,
    SOURCE_NVML_COUNTER,
    SOURCE_NVML_POWER,
    SOURCE_RAPL,
    CollectorStatus,
    CpuTimes,
    EnergyReading,
    GpuReading,
    ProcessReading,
    SourceError,
)

ProcKey = tuple[int, float]  # (pid, start time): a process identity that survives pid reuse


# -- the sources' interfaces ---------------------------------------------------------------------------


class GpuSource(Protocol):
    """carbonwatch.node.sources.nvml.NvmlSource; `last_errors` names per-GPU problems of the last read."""

    last_errors: list[str]

    def read(self) -> list[GpuReading]: ...


class RaplReadingLike(Protocol):
    @property
    def packages(self) -> list[EnergyReading]: ...

    @property
    def dram(self) -> EnergyReading | None: ...


class RaplLike(Protocol):
    def read(self) -> RaplReadingLike: ...


class CpuModel(Protocol):
    cpu_model: str

    def power_watts(self, utilization: float) -> float: ...


class MemoryModel(Protocol):
    def power_watts(self) -> float: ...


# -- what one sample hands the meters --------------------------------------------------------------------


@dataclass
class Interval:
    """What one sample saw, shared by every meter. `dt` is None at the first sample (baselines only)."""

    dt: float | None
    full: bool  # a full /proc scan: every process was read
    procs: dict[ProcKey, ProcessReading]
    prev: Mapping[ProcKey, ProcessReading]  # the processes read at the previous sample
    gone: Collection[ProcKey]  # of those, the ones that ended since (no longer listed)
    reg_cpu: Mapping[ProcKey, float]  # CPU seconds of registered processes when they registered
    cpu_times: CpuTimes | None
    prev_cpu_times: CpuTimes | None
    boot_prev: float | None  # seconds since boot at the previous sample
    folded_rss: float  # RSS of the processes not read between full scans
    mem_total: int


@dataclass
class DeviceDelta:
    component: str
    key: str
    source: str
    joules: float | None  # None: no delta yet (a baseline was just taken)
    power_watts: float | None  # a reading of its own (GPU, model), else joules / dt


@dataclass
class Measured:
    devices: list[DeviceDelta] = field(default_factory=list)
    parts: dict[ProcKey, float] = field(default_factory=dict)
    other: float = 0.0
    unattributed: float = 0.0
    unknown: list[ProcKey] = field(default_factory=list)  # GPU users not visible in our /proc
    source: str = ""  # where this component's energy came from in this sample
    status: CollectorStatus | None = None  # what the meter says of its collector in this sample (None: nothing)
    status_fallback: bool = False  # `status` holds only where nothing else was said of the collector


# -- meters ------------------------------------------------------------------------------------------------


class GpuMeter:
    """Each GPU's energy from its hardware counter (resets absorbed), else its power integrated between
    samples (trapezoid); split by SM share, then memory share, then equally (attribution.gpu_weights)."""

    component = "gpu"

    def __init__(self) -> None:
        self._prev: dict[str, tuple[float | None, float | None]] = {}  # uuid -> (raw counter J, power W)

    def measure(self, gpus: list[GpuReading], iv: Interval) -> Measured:
        out = Measured()
        # a GPU user that exited since the last sample (gone, or a zombie /proc can no longer read) is still
        # the process, and in the run, it was: the interval's GPU energy it used is its own, not an unknown pid's
        pid_index = {k[0]: k for k in iv.prev}
        pid_index.update({k[0]: k for k in iv.procs})
        sources = []
        for g in gpus:
            de, src = self._delta(g, iv.dt)
            sources.append(src)
            out.devices.append(DeviceDelta("gpu", str(g.index), src, de, g.power_watts))
            if de is None:
                continue
            by_pid, rest = attribution.split_gpu(de, g.processes)
            parts = {pid_index.get(pid, (pid, -1.0)): v for pid, v in by_pid.items()}
            for k, v in parts.items():
                out.parts[k] = out.parts.get(k, 0.0) + v
                if k not in iv.procs and k not in out.unknown:
                    out.unknown.append(k)
            out.unattributed += rest
        out.source = weakest(sources)
        return out

    def _delta(self, g: GpuReading, dt: float | None) -> tuple[float | None, str]:
        prev_e, prev_p = self._prev.get(g.uuid, (None, None))
        self._prev[g.uuid] = (g.energy_joules, g.power_watts)
        declared = g.energy_source
        if g.energy_joules is not None:
            src = declared or SOURCE_NVML_COUNTER
            if dt is None or prev_e is None:
                return None, src
            de = g.energy_joules - prev_e
            if de < 0:  # counter reset (driver reload): it restarted from 0
                de = g.energy_joules
            return de, src
        src = declared or SOURCE_NVML_POWER
        if dt is None or g.power_watts is None:
            return None, src
        p0 = prev_p if prev_p is not None else g.power_watts
        return (p0 + g.power_watts) / 2.0 * dt, src  # trapezoid between samples


class RaplDeltas:
    """Deltas of the RAPL reader's cumulative (wrap-corrected) joules, per zone key."""

    def __init__(self) -> None:
        self._prev: dict[str, float] = {}

    def delta(self, key: str, cumulative: float | None, dt: float | None) -> float | None:
        if cumulative is None:
            return None
        prev = self._prev.get(key)
        self._prev[key] = cumulative
        if prev is None or dt is None:
            return None
        return max(cumulative - prev, 0.0)

    def forget(self, component: str) -> None:
        """Drop the baselines of `component`'s zones ("cpu" or "memory"): their next reading starts afresh."""
        self._prev = {k: v for k, v in self._prev.items() if k != component and not k.startswith(component + ":")}


def _resuming(deltas: list[float | None], iv: Interval) -> bool:
    """A RAPL zone without a baseline after the first sample: it was unreadable and the model (source auto) counted
    the gap (see RaplDeltas.forget); the model counts this interval too, and RAPL the ones after it."""
    return iv.dt is not None and None in deltas


def cpu_seconds_in_interval(iv: Interval) -> dict[ProcKey, float]:
    """CPU seconds in this interval, for the processes where that is known exactly: read in the previous
    sample too, started after it (all their CPU time is in this interval), or registered by the run
    client since (their CPU time since the registration).

    A process also gets the CPU time of its children that ended in the interval and that it waited for
    (the kernel adds it to its cutime + cstime), less what was already counted for those children
    individually: a DataLoader worker or a shell command that starts and ends between two samples is never
    listed, yet its CPU time goes to its parent, and so to the parent's run, not to pid="other"."""
    counted_for_gone: dict[int, float] = {}  # ppid -> CPU already counted for its children that ended
    for k in iv.gone:
        g = iv.prev.get(k)
        if g is not None:
            counted_for_gone[g.ppid] = counted_for_gone.get(g.ppid, 0.0) + g.cpu_seconds + g.children_cpu_seconds
    out: dict[ProcKey, float] = {}
    for k, p in iv.procs.items():
        if p.start_time < 0:
            continue
        prev = iv.prev.get(k)
        if prev is not None:
            reaped = p.children_cpu_seconds - prev.children_cpu_seconds - counted_for_gone.get(p.pid, 0.0)
            out[k] = p.cpu_seconds - prev.cpu_seconds + max(0.0, reaped)
        elif iv.boot_prev is not None and p.start_time >= iv.boot_prev - 0.01:
            out[k] = p.cpu_seconds + p.children_cpu_seconds
        elif k in iv.reg_cpu:
            out[k] = max(0.0, p.cpu_seconds - iv.reg_cpu[k])
    return out


class _RaplOrModelMeter:
    """A component measured by RAPL zones (unless its source is `model`), else by a labelled power model; the
    interval's energy is then split among processes by `_split`. The meter says how its collector did in
    `Measured.status`; it never writes into the sampler's state."""

    component = ""

    def __init__(self, cfg: ExporterConfig, rapl: RaplDeltas) -> None:
        self.cfg = cfg
        self.rapl = rapl
        self.source = ""

    def measure(self, reading: RaplReadingLike | None, iv: Interval, rapl_seconds: float = 0.0) -> Measured:
        """This interval's energy and its split; `rapl_seconds` is how long the RAPL read took."""
        out = Measured()
        de = self._energy(reading, iv, out, rapl_seconds)
        out.source = self.source or SOURCE_MODEL
        if de is not None:
            self._split(de, iv, out)
        return out

    def _energy(self, reading: RaplReadingLike | None, iv: Interval, out: Measured,
                rapl_seconds: float) -> float | None:  # fmt: skip
        raise NotImplementedError

    def _split(self, de: float, iv: Interval, out: Measured) -> None:
        raise NotImplementedError

    def _rapl_unless_resuming(self, deltas: list[float | None], iv: Interval, source: str, has_model: bool) -> bool:
        """Whether RAPL measures this interval: not where RAPL is readable again after a gap the model filled
        (source auto), where this interval only set RAPL's baselines."""
        return not (_resuming(deltas, iv) and source == "auto" and has_model)


class CpuMeter(_RaplOrModelMeter):
    """CPU packages from RAPL (unless `cpu.source: model`), else the labelled model (TDP x utilisation from
    /proc/stat). A process gets the share of all CPU time the machine had (busy and idle) that it used; busy
    time of processes not read individually goes to pid="other"; idle time stays unattributed."""

    component = "cpu"

    def __init__(self, cfg: ExporterConfig, model: CpuModel | None, rapl: RaplDeltas) -> None:
        super().__init__(cfg, rapl)
        self.model = model

    def _split(self, de: float, iv: Interval, out: Measured) -> None:
        if iv.prev_cpu_times is None or iv.cpu_times is None:
            return
        weights = cpu_seconds_in_interval(iv)
        d_total = iv.cpu_times.total - iv.prev_cpu_times.total
        parts, rest = attribution.split_by_capacity(de, weights, d_total)
        out.parts = parts
        unseen = max(0.0, (iv.cpu_times.busy - iv.prev_cpu_times.busy) - sum(weights.values()))
        out.other = min(rest, de * unseen / d_total) if d_total > 0 else 0.0
        out.unattributed = rest - out.other

    def _energy(self, reading: RaplReadingLike | None, iv: Interval, out: Measured,
                rapl_seconds: float) -> float | None:  # fmt: skip
        source = self.cfg.cpu.source
        if reading is not None and reading.packages and source != "model":
            deltas = [(p.key, self.rapl.delta(f"cpu:{p.key}", p.energy_joules, iv.dt)) for p in reading.packages]
            if self._rapl_unless_resuming([d for _, d in deltas], iv, source, self.model is not None):
                self.source = SOURCE_RAPL
                total: float | None = 0.0
                for key, de in deltas:
                    out.devices.append(DeviceDelta("cpu", key, SOURCE_RAPL, de, None))
                    total = None if (de is None or total is None) else total + de
                out.status = CollectorStatus(True, rapl_seconds)
                return total
        if source == "rapl":
            out.status = CollectorStatus(False, 0.0, "cpu.source is rapl but RAPL could not be read")
            return None
        if self.model is None or iv.cpu_times is None:
            out.status = CollectorStatus(False, 0.0, "no CPU time from /proc/stat for the CPU model")
            out.status_fallback = True
            return None
        self.source = SOURCE_MODEL
        t0 = time.perf_counter()
        if iv.prev_cpu_times is None or iv.dt is None:
            return None
        d_total = iv.cpu_times.total - iv.prev_cpu_times.total
        util = (iv.cpu_times.busy - iv.prev_cpu_times.busy) / d_total if d_total > 0 else 0.0
        power = float(self.model.power_watts(min(max(util, 0.0), 1.0)))
        de = power * iv.dt
        out.devices.append(DeviceDelta("cpu", "all", SOURCE_MODEL, de, power))
        out.status = CollectorStatus(True, time.perf_counter() - t0)
        return de


class MemoryMeter(_RaplOrModelMeter):
    """Memory from RAPL dram zones (unless `memory.source: model`), else W/GB installed; a process gets its
    RSS share of installed memory; between full scans the RSS of processes not read goes to pid="other"."""

    component = "memory"

    def __init__(self, cfg: ExporterConfig, model: MemoryModel | None, rapl: RaplDeltas) -> None:
        super().__init__(cfg, rapl)
        self.model = model

    def _split(self, de: float, iv: Interval, out: Measured) -> None:
        parts, rest = attribution.split_by_capacity(
            de, {k: float(p.rss_bytes) for k, p in iv.procs.items()}, float(iv.mem_total)
        )
        out.parts = parts
        if not iv.full and iv.mem_total:
            out.other = min(rest, de * iv.folded_rss / iv.mem_total)
        out.unattributed = rest - out.other

    def _energy(self, reading: RaplReadingLike | None, iv: Interval, out: Measured,
                rapl_seconds: float) -> float | None:  # fmt: skip
        source = self.cfg.memory.source
        dram = reading.dram if reading is not None else None
        if dram is not None and dram.energy_joules is not None and source != "model":
            rapl_de = self.rapl.delta("memory", dram.energy_joules, iv.dt)
            if self._rapl_unless_resuming([rapl_de], iv, source, self.model is not None):
                self.source = SOURCE_RAPL
                out.devices.append(DeviceDelta("memory", "", SOURCE_RAPL, rapl_de, None))
                out.status = CollectorStatus(True, 0.0)
                return rapl_de
        if source == "rapl":
            out.status = CollectorStatus(False, 0.0, "memory.source is rapl but RAPL has no dram zone")
            return None
        if self.model is None:
            return None
        t0 = time.perf_counter()
        try:
            power = float(self.model.power_watts())
        except SourceError as exc:
            out.status = CollectorStatus(False, time.perf_counter() - t0, str(exc))
            return None
        self.source = SOURCE_MODEL
        out.status = CollectorStatus(True, time.perf_counter() - t0)
        if iv.dt is None:
            return None
        de = power * iv.dt
        out.devices.append(DeviceDelta("memory", "", SOURCE_MODEL, de, power))
        return de


_STRENGTH = {SOURCE_MODEL: 0, SOURCE_NVML_POWER: 1, "nvml_power_instant": 1, "nvml_power_average": 2}


def weakest(sources: list[str] | tuple[str, ...]) -> str:
    """The least exact of `sources` (a modelled or power-integrated sample makes a total so)."""
    return min(sources, key=lambda s: _STRENGTH.get(s, 9), default="")
