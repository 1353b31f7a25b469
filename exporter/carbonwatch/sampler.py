"""The sampling loop: read every source once per interval, attribute, accumulate, publish a snapshot.

Data flows one way: sources -> deltas per device -> attribution -> counters -> `Snapshot`. The HTTP
side only ever reads `Sampler.latest`, so scrape cost does not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from carbonwatch import attribution
from carbonwatch.config import ExporterConfig
from carbonwatch.identity import ContainerRef, IdentityResolver, ProcessIdentity, RunIdentity
from carbonwatch.model import (
    SOURCE_MODEL,
    SOURCE_NVML_COUNTER,
    SOURCE_NVML_POWER,
    SOURCE_RAPL,
    CollectorStatus,
    ContainerState,
    CpuTimes,
    DeviceState,
    FatalSourceError,
    GpuReading,
    IntensityInUse,
    ProcessReading,
    ProcessState,
    RunState,
    Snapshot,
    SourceAbsent,
    SourceError,
)
from carbonwatch.registration import Registration, RegistrationReader
from carbonwatch.sources.memory import read_mem_total_bytes
from carbonwatch.sources.procs import ProcScanner

log = logging.getLogger("carbonwatch.sampler")

ProcKey = tuple[int, float]  # (pid, start time): a process identity that survives pid reuse
OTHER = "other"
JOULES_PER_KWH = 3.6e6


@dataclass
class Sources:
    """What the sampler reads. Any may be None (collector disabled or unavailable)."""

    procs: ProcScanner | None = None
    nvml: Any = None  # carbonwatch.sources.nvml.NvmlSource
    rapl: Any = None  # carbonwatch.sources.rapl.RaplSource
    rapl_expected: bool = False  # a powercap tree exists: failing to read it is a degradation
    cpu_model: Any = None  # carbonwatch.sources.cpumodel.CpuPowerModel
    memory_model: Any = None  # carbonwatch.sources.memory.MemoryPowerModel
    registrations: Any = None  # RegistrationReader, or anything with read() -> list[Registration]


def _import_nvml(dotted: str) -> ModuleType:
    return importlib.import_module(dotted)


def build_sources(cfg: ExporterConfig) -> Sources:
    """Sources for a config. Never raises for a missing device: the sampler reports it per collector."""
    from carbonwatch.sources.cpumodel import CpuPowerModel
    from carbonwatch.sources.memory import MemoryPowerModel
    from carbonwatch.sources.rapl import RaplSource

    s = Sources()
    on = cfg.collectors
    if on.get("process", True) or on.get("cpu", True):
        s.procs = ProcScanner(cfg.process.proc_root)
    if on.get("process", True):
        s.registrations = RegistrationReader(
            cfg.process.spool_dir, cfg.process.proc_root, cfg.process.max_registrations
        )
    if on.get("gpu", True):
        from carbonwatch.sources.nvml import NvmlSource

        module: ModuleType | None = None
        if cfg.gpu.nvml_module != "pynvml":
            module = _import_nvml(cfg.gpu.nvml_module)
        s.nvml = NvmlSource(module)
    want_rapl = (on.get("cpu", True) and cfg.cpu.source != "model") or (
        on.get("memory", True) and cfg.memory.source != "model"
    )
    if want_rapl:
        s.rapl_expected = _has_rapl_zones(cfg.cpu.powercap_root) or "rapl" in (cfg.cpu.source, cfg.memory.source)
        if s.rapl_expected:
            s.rapl = RaplSource(cfg.cpu.powercap_root)
    if on.get("cpu", True):
        s.cpu_model = CpuPowerModel(
            proc_root=cfg.process.proc_root,
            tdp_watts=cfg.cpu.tdp_watts,
            min_watts_per_cpu=cfg.cpu.min_watts_per_cpu,
            max_watts_per_cpu=cfg.cpu.max_watts_per_cpu,
        )
    if on.get("memory", True):
        s.memory_model = MemoryPowerModel(watts_per_gb=cfg.memory.watts_per_gb, proc_root=cfg.process.proc_root)
    return s


def _boot_clock() -> float:
    """Seconds since boot, the clock of /proc/PID/stat start times."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _has_rapl_zones(root: str) -> bool:
    try:
        return any(n.startswith("intel-rapl:") for n in os.listdir(root))
    except OSError:
        return False


@dataclass
class _Proc:
    """Per-process accumulator between samples."""

    reading: ProcessReading
    run_id: str
    energy: dict[str, float] = field(default_factory=dict)
    power: dict[str, float] = field(default_factory=dict)
    container: ContainerRef | None = None


def _list_pids(proc_root: str) -> set[int]:
    """The pids under `proc_root`: one directory listing, cheap enough for every sample."""
    try:
        return {int(n) for n in os.listdir(proc_root) if n.isdigit()}
    except OSError:
        return set()


class BasicResolver:
    """Run membership from what every node has: a process's own CARBONWATCH_RUN_ID (`env`), a registration of
    it by the in-code run client (`registration`), else its parent's run (`parent`). The fleet resolver
    (Kubernetes, SLURM) extends this order; see carbonwatch.identity."""

    def assign(
        self, readings: Sequence[ProcessReading], regs: Sequence[Registration]
    ) -> dict[int, ProcessIdentity]:
        by_pid = {p.pid: p for p in readings}
        registered: dict[int, str] = {}
        for r in regs:
            p = by_pid.get(r.pid)
            if p is not None and (r.start_time is None or abs(p.start_time - r.start_time) < 0.05):
                registered[r.pid] = r.run_id
        memo: dict[int, RunIdentity | None] = {}

        def run_of(pid: int, depth: int = 0) -> RunIdentity | None:
            if pid in memo:
                return memo[pid]
            p = by_pid.get(pid)
            if p is None or depth > 256:
                return None
            rid: RunIdentity | None = None
            if p.run_id:
                rid = RunIdentity(p.run_id, "env", _env_labels(p))
            elif pid in registered:
                rid = RunIdentity(registered[pid], "registration", _env_labels(p))
            elif p.ppid not in (0, pid):
                rid = run_of(p.ppid, depth + 1)  # a child is in its parent's run, found the same way
            memo[pid] = rid
            return rid

        return {p.pid: ProcessIdentity(run=run_of(p.pid)) for p in readings}


_LABEL_ENV = {"CARBONWATCH_USER": "user", "CARBONWATCH_PROJECT": "project", "CARBONWATCH_MODEL": "model",
              "CARBONWATCH_TEAM": "team"}


def _env_labels(p: ProcessReading) -> dict[str, str]:
    return {_LABEL_ENV[k]: v for k, v in p.environ if k in _LABEL_ENV and v}


class Sampler:
    """One sample: read the sources, take each device's energy since the previous sample, split it among
    processes, add it to process, run, container and node counters, price it at the zone's intensity of
    the moment, and publish an immutable `Snapshot`.

    Counters that must survive a restart (node, device, run and container energy and emissions) are
    exported with `export_state()` and put back with `restore_state()`; carbonwatch.state writes them."""

    def __init__(
        self,
        cfg: ExporterConfig,
        sources: Sources,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        static_registrations: Iterable[Registration] = (),
        only_runs: bool = False,
        boot_clock: Callable[[], float] | None = None,
        intensity: Callable[[], IntensityInUse] | None = None,
        resolver: IdentityResolver | None = None,
    ) -> None:
        self.cfg = cfg
        self.s = sources
        self.clock = clock
        self.wall = wall
        self.static_registrations = list(static_registrations)
        self.only_runs = only_runs  # local mode: expose only run processes (no top N)
        self.boot_clock = boot_clock or _boot_clock
        self.intensity = intensity  # None: no emissions (energy only)
        self.resolver: IdentityResolver = resolver or BasicResolver()
        self.latest: Snapshot | None = None
        self._lock = threading.Lock()
        self._last_full: float | None = None  # monotonic time of the last full /proc scan
        self._full_cpu: dict[ProcKey, float] = {}  # CPU seconds of every process at the last full scan
        self._top: set[ProcKey] = set()  # processes outside runs shown individually (top N at the last full scan)
        self._folded_rss = 0.0  # RSS of the processes not read between full scans
        self._boot_prev: float | None = None  # seconds since boot at the previous sample
        self._listed: set[int] = set()  # pids listed at the previous sample: any other pid is new
        self._other: dict[str, float] = {}  # energy of the folded processes, J (the pid="other" counter)
        self._t: float | None = None
        self._cpu_times: CpuTimes | None = None
        self._procs: dict[ProcKey, _Proc] = {}
        self._gpu_prev: dict[str, tuple[float | None, float | None]] = {}  # uuid -> (raw counter J, power W)
        self._rapl_prev: dict[str, float] = {}  # "cpu:<pkg>" / "memory" -> cumulative J from the reader
        self._dev_energy: dict[tuple[str, str, str], float] = {}  # (component, key, source) -> counter, J
        self._unattributed: dict[str, float] = {}
        self._node_energy: dict[str, float] = {}  # component -> J, all energy of the node
        self._node_emissions: dict[str, float] = {}  # component -> g
        self._runs: dict[str, RunState] = {}
        self._containers: dict[tuple[str, str, str], ContainerState] = {}
        self._reg_cpu: dict[ProcKey, float] = {}  # CPU seconds of a registered process when it registered
        self.mem_total = 0
        self._components: set[str] = set()  # components this node has reported energy for
        self.cpu_source = ""
        self.memory_source = ""
        self.devices_found: dict[str, int] = {}  # collector -> devices read at the last sample

    # -- one sample -------------------------------------------------------------------------------

    def sample_once(self) -> Snapshot | None:
        t = self.clock()
        dt = None if self._t is None else t - self._t
        if dt is not None and dt <= 0:
            return self.latest
        status: dict[str, CollectorStatus] = {}
        energy: dict[str, dict[ProcKey, float]] = {"gpu": {}, "cpu": {}, "memory": {}}
        unatt: dict[str, float] = {"gpu": 0.0, "cpu": 0.0, "memory": 0.0}
        devices: list[DeviceState] = []
        intensity = self._intensity(status)

        rapl = self._read_rapl(status)
        gpus = self._read_gpus(status)
        full = self._last_full is None or t - self._last_full >= self.cfg.process.scan_interval
        regs = self._read_registrations()
        pids = None
        listed: set[int] | None = None
        if not full:
            listed = _list_pids(self.s.procs.proc_root) if self.s.procs is not None else set()
            pids = self._tracked_pids() | {p.pid for g in gpus for p in g.processes} | {r.pid for r in regs}
            pids |= listed - self._listed  # every new process is read in the sample after it started
            if self.s.procs is not None:
                pids |= self.s.procs.children(k[0] for k, a in self._procs.items() if a.run_id)
        procs, cpu_times, identities = self._read_procs(status, pids, regs)
        self._listed = listed if listed is not None else {k[0] for k in procs}
        boot_now = self.boot_clock()
        other: dict[str, float] = {"gpu": 0.0, "cpu": 0.0, "memory": 0.0}

        pid_index = {k[0]: k for k in procs}
        # --- GPU ----------------------------------------------------------------------------------
        for g in gpus:
            de, src = self._gpu_delta(g, dt)
            devices.append(self._device("gpu", str(g.index), src, de, dt, g.power_watts))
            if de is None:
                continue
            weights = {
                pid_index.get(pid, (pid, -1.0)): w for pid, w in attribution.gpu_weights(g.processes).items()
            }
            parts, rest = attribution.split_by_share(de, weights)
            self._add(energy["gpu"], parts)
            unatt["gpu"] += rest
            for key in parts:
                if key not in procs:  # on the GPU but not visible in our /proc (another pid namespace)
                    procs[key] = ProcessReading(key[0], 0, "unknown", 0.0, 0, -1.0, None)
        # --- CPU ----------------------------------------------------------------------------------
        if self.cfg.collectors.get("cpu", True):
            cpu_de = self._cpu_energy(rapl, cpu_times, dt, devices, status)
            if cpu_de is not None and self._cpu_times is not None and cpu_times is not None:
                weights_cpu = self._cpu_deltas(procs)
                d_total = cpu_times.total - self._cpu_times.total
                parts, rest = attribution.split_by_capacity(cpu_de, weights_cpu, d_total)
                self._add(energy["cpu"], parts)
                # busy time of processes without a fresh per-process baseline (not read between full scans,
                # ended inside the interval, kernel threads) goes to pid="other", idle time stays unattributed
                unseen = max(0.0, (cpu_times.busy - self._cpu_times.busy) - sum(weights_cpu.values()))
                other["cpu"] = min(rest, cpu_de * unseen / d_total) if d_total > 0 else 0.0
                unatt["cpu"] += rest - other["cpu"]
        # --- memory -------------------------------------------------------------------------------
        if self.cfg.collectors.get("memory", True):
            mem_de = self._memory_energy(rapl, dt, devices, status)
            if mem_de is not None:
                if not self.mem_total:
                    try:
                        root = self.s.procs.proc_root if self.s.procs is not None else self.cfg.process.proc_root
                        self.mem_total = read_mem_total_bytes(root)
                    except SourceError:
                        self.mem_total = 0
                parts, rest = attribution.split_by_capacity(
                    mem_de, {k: float(p.rss_bytes) for k, p in procs.items()}, float(self.mem_total)
                )
                self._add(energy["memory"], parts)
                if not full and self.mem_total:
                    other["memory"] = min(rest, mem_de * self._folded_rss / self.mem_total)
                unatt["memory"] += rest - other["memory"]

        self._components |= {d.component for d in devices}
        self._t = t
        self._boot_prev = boot_now
        if cpu_times is not None:
            self._cpu_times = cpu_times
        factor = intensity.grams_per_kwh / JOULES_PER_KWH if intensity is not None else None
        if dt is None:  # the first sample only sets the baselines
            self._update_procs(procs, identities, energy, 1.0, None)
            self._after_scan(procs, t, full)
            return None
        for comp, v in unatt.items():
            self._unattributed[comp] = self._unattributed.get(comp, 0.0) + v
        for d in devices:
            de = d.interval_joules
            self._node_energy[d.component] = self._node_energy.get(d.component, 0.0) + de
            if factor is not None:
                self._node_emissions[d.component] = self._node_emissions.get(d.component, 0.0) + de * factor
        self._update_procs(procs, identities, energy, dt, factor)
        self._after_scan(procs, t, full)
        snap = self._build(t, dt, gpus, devices, unatt, other, status, intensity)
        with self._lock:
            self.latest = snap
        return snap

    # -- sources ----------------------------------------------------------------------------------

    def _timed(self, status: dict[str, CollectorStatus], name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            out = fn()
            status[name] = CollectorStatus(True, time.perf_counter() - t0)
            return out
        except FatalSourceError:
            raise  # the exporter exits; its supervisor restarts it with a fresh library
        except SourceAbsent as exc:
            status[name] = CollectorStatus(True, time.perf_counter() - t0, str(exc), absent=True)
        except SourceError as exc:
            status[name] = CollectorStatus(False, time.perf_counter() - t0, str(exc))
        except Exception as exc:  # a source must never kill the exporter
            log.exception("collector %s failed", name)
            status[name] = CollectorStatus(False, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}")
        return None

    def _intensity(self, status: dict[str, CollectorStatus]) -> IntensityInUse | None:
        if self.intensity is None:
            return None
        try:
            return self.intensity()
        except Exception as exc:  # the feed serves a cached value and never raises; be safe all the same
            log.exception("intensity in use could not be read")
            status["emissions"] = CollectorStatus(False, 0.0, f"{type(exc).__name__}: {exc}")
            return None

    def _read_registrations(self) -> list[Registration]:
        regs: list[Registration] = list(self.static_registrations)
        if self.s.registrations is not None and self.cfg.collectors.get("process", True):
            regs += self.s.registrations.read()
        return regs

    def _tracked_pids(self) -> set[int]:
        """Processes read between full scans: those of runs, the top N, and registered roots."""
        return {k[0] for k, a in self._procs.items() if a.run_id or k in self._top} | {
            r.pid for r in self.static_registrations
        }

    def _cpu_deltas(self, procs: dict[ProcKey, ProcessReading]) -> dict[ProcKey, float]:
        """CPU seconds in this interval, for the processes where that is known exactly: read in the previous
        sample too, started after it (all their CPU time is in this interval), or registered by the run
        client since (their CPU time since the registration)."""
        out: dict[ProcKey, float] = {}
        for k, p in procs.items():
            if p.start_time < 0:
                continue
            prev = self._procs.get(k)
            if prev is not None:
                out[k] = p.cpu_seconds - prev.reading.cpu_seconds
            elif self._boot_prev is not None and p.start_time >= self._boot_prev - 0.01:
                out[k] = p.cpu_seconds
            elif k in self._reg_cpu:
                out[k] = max(0.0, p.cpu_seconds - self._reg_cpu[k])
        return out

    def _after_scan(self, procs: dict[ProcKey, ProcessReading], t: float, full: bool) -> None:
        """After a full scan: rank the processes outside runs by CPU rate since the previous full scan and
        choose the top N to follow until the next one."""
        if not full:
            return
        span = t - self._last_full if self._last_full is not None else 0.0
        rates: list[tuple[float, ProcKey]] = []
        folded_rss = 0.0
        for k, p in procs.items():
            if self._procs.get(k) is not None and self._procs[k].run_id:
                continue
            before = self._full_cpu.get(k)
            # CPU rate since the previous full scan; at the first one, lifetime CPU seconds as the best guess
            rate = (p.cpu_seconds - before) / span if (before is not None and span > 0) else p.cpu_seconds
            rates.append((rate, k))
            folded_rss += p.rss_bytes
        rates.sort(reverse=True)
        top_n = 0 if self.only_runs else self.cfg.process.top_n
        self._top = {k for _, k in rates[:top_n]}
        self._folded_rss = folded_rss - sum(procs[k].rss_bytes for k in self._top)
        self._full_cpu = {k: p.cpu_seconds for k, p in procs.items()}
        self._last_full = t

    def _read_procs(
        self, status: dict[str, CollectorStatus], pids: set[int] | None, regs: list[Registration]
    ) -> tuple[dict[ProcKey, ProcessReading], CpuTimes | None, dict[int, ProcessIdentity]]:
        if self.s.procs is None:
            return {}, None, {}
        scanner = self.s.procs
        cpu_times = self._timed(status, "process", scanner.cpu_times)
        if cpu_times is None:
            return {}, None, {}
        if not self.cfg.collectors.get("process", True):
            status.pop("process", None)
            return {}, cpu_times, {}
        readings: list[ProcessReading] = self._timed(status, "process", lambda: scanner.read(pids)) or []
        identities = self.resolver.assign(readings, regs)
        by_pid = {p.pid: p for p in readings}
        for r in regs:  # CPU baseline of a process the run client registered (its time before belongs elsewhere)
            p = by_pid.get(r.pid)
            if p is not None and r.cpu_seconds is not None and (p.pid, p.start_time) not in self._procs:
                self._reg_cpu.setdefault((p.pid, p.start_time), r.cpu_seconds)
        out: dict[ProcKey, ProcessReading] = {}
        for p in readings:
            ident = identities.get(p.pid)
            rid = ident.run.run_id if ident is not None and ident.run is not None else None
            if rid != p.run_id:
                p = dataclasses.replace(p, run_id=rid)
            out[(p.pid, p.start_time)] = p
        return out, cpu_times, identities

    def _read_gpus(self, status: dict[str, CollectorStatus]) -> list[GpuReading]:
        if self.s.nvml is None:
            return []
        gpus: list[GpuReading] = self._timed(status, "gpu", self.s.nvml.read) or []
        self.devices_found["gpu"] = len(gpus)
        errors = list(getattr(self.s.nvml, "last_errors", None) or [])
        if errors and "gpu" in status and status["gpu"].success and not status["gpu"].absent:
            status["gpu"] = CollectorStatus(False, status["gpu"].duration_seconds, "; ".join(errors))
        return gpus

    def _read_rapl(self, status: dict[str, CollectorStatus]) -> Any:
        if self.s.rapl is None:
            return None
        reading = self._timed(status, "rapl", self.s.rapl.read)
        if reading is None and not self.s.rapl_expected:
            status.pop("rapl", None)
        return reading

    def _gpu_delta(self, g: GpuReading, dt: float | None) -> tuple[float | None, str]:
        prev_e, prev_p = self._gpu_prev.get(g.uuid, (None, None))
        self._gpu_prev[g.uuid] = (g.energy_joules, g.power_watts)
        declared = str(getattr(g, "energy_source", "") or "")
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

    def _cpu_energy(
        self,
        rapl: Any,
        cpu_times: CpuTimes | None,
        dt: float | None,
        devices: list[DeviceState],
        status: dict[str, CollectorStatus],
    ) -> float | None:
        use_rapl = rapl is not None and rapl.packages and self.cfg.cpu.source != "model"
        if use_rapl:
            self.cpu_source = SOURCE_RAPL
            total: float | None = 0.0
            for pkg in rapl.packages:
                de = self._rapl_delta(f"cpu:{pkg.key}", pkg.energy_joules, dt)
                devices.append(self._device("cpu", pkg.key, SOURCE_RAPL, de, dt, None))
                total = None if (de is None or total is None) else total + de
            status["cpu"] = CollectorStatus(True, status.get("rapl", CollectorStatus(True, 0.0)).duration_seconds)
            return total
        if self.cfg.cpu.source == "rapl":
            status["cpu"] = CollectorStatus(False, 0.0, "cpu.source is rapl but RAPL could not be read")
            return None
        if self.s.cpu_model is None or cpu_times is None:
            status["cpu"] = CollectorStatus(False, 0.0, "no CPU time from /proc/stat for the CPU model")
            return None
        self.cpu_source = SOURCE_MODEL
        t0 = time.perf_counter()
        if self._cpu_times is None or dt is None:
            return None
        d_total = cpu_times.total - self._cpu_times.total
        util = (cpu_times.busy - self._cpu_times.busy) / d_total if d_total > 0 else 0.0
        power = float(self.s.cpu_model.power_watts(min(max(util, 0.0), 1.0)))
        de = power * dt
        devices.append(self._device("cpu", "all", SOURCE_MODEL, de, dt, power))
        status["cpu"] = CollectorStatus(True, time.perf_counter() - t0)
        return de

    def _memory_energy(
        self, rapl: Any, dt: float | None, devices: list[DeviceState], status: dict[str, CollectorStatus]
    ) -> float | None:
        dram = getattr(rapl, "dram", None) if rapl is not None else None
        if dram is not None and dram.energy_joules is not None and self.cfg.memory.source != "model":
            self.memory_source = SOURCE_RAPL
            de = self._rapl_delta("memory", dram.energy_joules, dt)
            devices.append(self._device("memory", "", SOURCE_RAPL, de, dt, None))
            status["memory"] = CollectorStatus(True, 0.0)
            return de
        if self.cfg.memory.source == "rapl":
            status["memory"] = CollectorStatus(False, 0.0, "memory.source is rapl but RAPL has no dram zone")
            return None
        if self.s.memory_model is None:
            return None
        t0 = time.perf_counter()
        try:
            power = float(self.s.memory_model.power_watts())
        except SourceError as exc:
            status["memory"] = CollectorStatus(False, time.perf_counter() - t0, str(exc))
            return None
        self.memory_source = SOURCE_MODEL
        status["memory"] = CollectorStatus(True, time.perf_counter() - t0)
        if dt is None:
            return None
        de = power * dt
        devices.append(self._device("memory", "", SOURCE_MODEL, de, dt, power))
        return de

    def _rapl_delta(self, key: str, cumulative: float | None, dt: float | None) -> float | None:
        if cumulative is None:
            return None
        prev = self._rapl_prev.get(key)
        self._rapl_prev[key] = cumulative
        if prev is None or dt is None:
            return None
        return max(cumulative - prev, 0.0)

    def _device(
        self, comp: str, key: str, source: str, de: float | None, dt: float | None, power: float | None
    ) -> DeviceState:
        total = self._dev_energy.get((comp, key, source), 0.0) + (de or 0.0)
        self._dev_energy[(comp, key, source)] = total
        if power is None:
            power = de / dt if (de is not None and dt) else 0.0
        return DeviceState(comp, key, source, power, total, de or 0.0)

    @staticmethod
    def _add(acc: dict[ProcKey, float], parts: dict[ProcKey, float]) -> None:
        for k, v in parts.items():
            acc[k] = acc.get(k, 0.0) + v

    # -- accumulate and publish -------------------------------------------------------------------

    def _update_procs(
        self,
        procs: dict[ProcKey, ProcessReading],
        identities: dict[int, ProcessIdentity],
        energy: dict[str, dict[ProcKey, float]],
        dt: float,
        factor: float | None,
    ) -> None:
        now = self.clock()
        fresh: dict[ProcKey, _Proc] = {}
        comps = sorted(self._components)
        for key, reading in procs.items():
            acc = self._procs.get(key) or _Proc(reading, reading.run_id or "")
            ident = identities.get(key[0])
            acc.reading = reading
            acc.run_id = reading.run_id or acc.run_id  # a process never leaves its run
            if ident is not None and ident.container is not None:
                acc.container = ident.container
            acc.power = {}
            run = None
            if acc.run_id:
                run = self._runs.get(acc.run_id)
                if run is None:
                    run = self._runs[acc.run_id] = RunState(acc.run_id)
                if ident is not None and ident.run is not None and ident.run.run_id == acc.run_id:
                    _merge_identity(run, ident.run)
            box = None
            if acc.container is not None:
                c = acc.container
                ckey = (c.namespace, c.pod, c.container)
                box = self._containers.get(ckey)
                if box is None:
                    box = self._containers[ckey] = ContainerState(c.namespace, c.pod, c.container)
                box.last_seen = now
            for comp in comps:
                de = energy[comp].get(key, 0.0)
                acc.power[comp] = de / dt
                if de:
                    acc.energy[comp] = acc.energy.get(comp, 0.0) + de
                g = de * factor if factor is not None else 0.0
                if run is not None:
                    run.energy_joules[comp] = run.energy_joules.get(comp, 0.0) + de
                    if factor is not None:
                        run.emissions_grams[comp] = run.emissions_grams.get(comp, 0.0) + g
                if box is not None:
                    box.energy_joules[comp] = box.energy_joules.get(comp, 0.0) + de
                    if factor is not None:
                        box.emissions_grams[comp] = box.emissions_grams.get(comp, 0.0) + g
            fresh[key] = acc
        self._procs = fresh
        self._reg_cpu = {k: v for k, v in self._reg_cpu.items() if k in fresh}
        for run in self._runs.values():
            run.power_watts = {c: 0.0 for c in self._components}
            run.live_processes = 0
            for comp in self._components:  # every component this node measures, even if 0 for this run
                run.energy_joules.setdefault(comp, 0.0)
                if factor is not None:
                    run.emissions_grams.setdefault(comp, 0.0)
        for acc in fresh.values():
            if acc.run_id:
                run = self._runs[acc.run_id]
                run.live_processes += 1
                run.last_seen = now
                for comp, w in acc.power.items():
                    run.power_watts[comp] += w
        linger = self.cfg.process.run_linger
        self._runs = {
            rid: r for rid, r in self._runs.items() if r.live_processes or now - r.last_seen <= linger
        }
        self._containers = {k: c for k, c in self._containers.items() if now - c.last_seen <= linger}

    def _build(
        self,
        t: float,
        dt: float,
        gpus: list[GpuReading],
        devices: list[DeviceState],
        unatt: dict[str, float],
        other: dict[str, float],
        status: dict[str, CollectorStatus],
        intensity: IntensityInUse | None,
    ) -> Snapshot:
        gpu_sources = [d.source for d in devices if d.component == "gpu"]
        current = {
            "gpu": _weakest(gpu_sources) or SOURCE_NVML_COUNTER,
            "cpu": self.cpu_source or SOURCE_MODEL,
            "memory": self.memory_source or SOURCE_MODEL,
        }
        for run in self._runs.values():
            for comp in self._components:
                # a run's source is the weakest it has had: one modelled sample makes the total modelled
                run.sources[comp] = _weakest([s for s in (run.sources.get(comp), current[comp]) if s])
        processes = self._select_processes(dt, other)
        return Snapshot(
            timestamp=self.wall(),
            gpus=list(gpus),
            devices=devices,
            processes=processes,
            runs=[dataclasses.replace(r, power_watts=dict(r.power_watts), energy_joules=dict(r.energy_joules),
                                      sources=dict(r.sources), emissions_grams=dict(r.emissions_grams),
                                      labels=dict(r.labels)) for r in self._runs.values()],
            unattributed_power_watts={c: v / dt for c, v in unatt.items()},
            unattributed_energy_joules=dict(self._unattributed),
            collectors=status,
            node_energy_joules=dict(self._node_energy),
            node_emissions_grams=dict(self._node_emissions),
            intensity=intensity,
            containers=[dataclasses.replace(c, energy_joules=dict(c.energy_joules),
                                            emissions_grams=dict(c.emissions_grams))
                        for c in self._containers.values()],
        )

    def _select_processes(self, dt: float, other: dict[str, float]) -> list[ProcessState]:
        """Run processes plus the top N; the rest, and the busy time of processes not read individually,
        fold into one pid="other" series, so the per-sample sums still hold."""
        shown: list[_Proc] = []
        power = {c: other.get(c, 0.0) / dt for c in self._components}
        for key, a in self._procs.items():
            if a.run_id or key in self._top or a.power.get("gpu"):  # GPU users are always shown
                shown.append(a)
            else:
                for comp, w in a.power.items():
                    power[comp] = power.get(comp, 0.0) + w
        for comp, w in power.items():
            self._other[comp] = self._other.get(comp, 0.0) + w * dt
        out = [ProcessState(a.reading.pid, a.reading.comm, a.run_id, dict(a.power), dict(a.energy)) for a in shown]
        if not self.only_runs:
            out.append(ProcessState(-1, OTHER, "", power, dict(self._other)))
        return out

    # -- durable counters -------------------------------------------------------------------------

    def export_state(self) -> dict[str, Any]:
        """The counters that must survive a restart, as plain JSON-able data (see carbonwatch.state)."""
        now, wall = self.clock(), self.wall()
        with self._lock:
            return {
                "devices": [[c, k, s, v] for (c, k, s), v in sorted(self._dev_energy.items())],
                "node_energy_joules": dict(self._node_energy),
                "node_emissions_grams": dict(self._node_emissions),
                "unattributed_energy_joules": dict(self._unattributed),
                "runs": {
                    rid: {
                        "energy_joules": dict(r.energy_joules),
                        "emissions_grams": dict(r.emissions_grams),
                        "sources": dict(r.sources),
                        "origin": r.origin,
                        "labels": dict(r.labels),
                        "last_seen_wall": wall - (now - r.last_seen),
                    }
                    for rid, r in sorted(self._runs.items())
                },
                "containers": [
                    {"namespace": c.namespace, "pod": c.pod, "container": c.container,
                     "energy_joules": dict(c.energy_joules), "emissions_grams": dict(c.emissions_grams),
                     "last_seen_wall": wall - (now - c.last_seen)}
                    for c in self._containers.values()
                ],
            }

    def restore_state(self, state: Mapping[str, Any]) -> None:
        """Continue every counter from `state` (as written by `export_state`, validated by carbonwatch.state).
        Runs whose linger ran out while the exporter was down are not brought back."""
        now, wall = self.clock(), self.wall()
        linger = self.cfg.process.run_linger
        with self._lock:
            for comp, key, source, value in state.get("devices", []):
                self._dev_energy[(comp, key, source)] = float(value)
                self._components.add(comp)
            self._node_energy = {k: float(v) for k, v in state.get("node_energy_joules", {}).items()}
            self._node_emissions = {k: float(v) for k, v in state.get("node_emissions_grams", {}).items()}
            self._unattributed = {k: float(v) for k, v in state.get("unattributed_energy_joules", {}).items()}
            for rid, r in state.get("runs", {}).items():
                age = max(0.0, wall - float(r.get("last_seen_wall", wall)))
                if age > linger:
                    continue
                self._runs[rid] = RunState(
                    rid,
                    energy_joules={k: float(v) for k, v in r.get("energy_joules", {}).items()},
                    sources=dict(r.get("sources", {})),
                    last_seen=now - age,
                    emissions_grams={k: float(v) for k, v in r.get("emissions_grams", {}).items()},
                    origin=str(r.get("origin", "")),
                    labels=dict(r.get("labels", {})),
                )
            for c in state.get("containers", []):
                age = max(0.0, wall - float(c.get("last_seen_wall", wall)))
                if age > linger:
                    continue
                box = ContainerState(c["namespace"], c["pod"], c["container"],
                                     {k: float(v) for k, v in c.get("energy_joules", {}).items()},
                                     {k: float(v) for k, v in c.get("emissions_grams", {}).items()}, now - age)
                self._containers[(box.namespace, box.pod, box.container)] = box

    # -- loop -------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot | None:
        with self._lock:
            return self.latest

    def run_forever(self, stop: threading.Event, after_sample: Callable[[], None] | None = None) -> None:
        """Sample every interval until `stop` is set. A FatalSourceError ends the loop (and is re-raised)."""
        interval = self.cfg.sample_interval
        next_t = self.clock()
        while not stop.is_set():
            try:
                self.sample_once()
            except FatalSourceError:
                raise
            except Exception:  # never let the loop die; the next sample may succeed
                log.exception("sample failed")
            if after_sample is not None:
                try:
                    after_sample()
                except Exception:
                    log.exception("after-sample hook failed")
            next_t += interval
            delay = next_t - self.clock()
            if delay < 0:  # fell behind (suspend, overload): skip, do not burst
                next_t = self.clock()
                delay = 0
            stop.wait(delay)


_STRENGTH = {SOURCE_MODEL: 0, SOURCE_NVML_POWER: 1, "nvml_power_instant": 1, "nvml_power_average": 2}


def _weakest(sources: Iterable[str]) -> str:
    """The least exact of `sources` (a modelled or power-integrated sample makes a total so)."""
    return min(sources, key=lambda s: _STRENGTH.get(s, 9), default="")


def _merge_identity(run: RunState, ident: RunIdentity) -> None:
    """The first origin that found a run names it; labels are filled in as they become known."""
    if not run.origin:
        run.origin = ident.origin
    for k, v in ident.labels.items():
        if v and not run.labels.get(k):
            run.labels[k] = v
