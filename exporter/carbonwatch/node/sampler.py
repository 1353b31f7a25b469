"""The sampling loop: read every source once per interval, attribute, accumulate, publish a snapshot.

Data flows one way: sources -> deltas per device -> attribution -> counters -> `Snapshot`. The HTTP
side only ever reads `Sampler.latest`, so scrape cost does not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from carbonwatch.intensity.providers import IntensityInUse
from carbonwatch.node.config import ExporterConfig
from carbonwatch.node.counters import Counters, grams_per_joule
from carbonwatch.node.identity import ContainerRef, IdentityResolver, ProcessIdentity, Resolver
from carbonwatch.node.meters import (
    CpuMeter,
    DeviceDelta,
    GpuMeter,
    Interval,
    Measured,
    MemoryMeter,
    ProcKey,
    RaplDeltas,
    RaplReadingLike,
    weakest,
)
from carbonwatch.node.model import (
    SOURCE_NVML_COUNTER,
    CollectorStatus,
    CpuTimes,
    DeviceState,
    FatalSourceError,
    GpuReading,
    ProcessReading,
    ProcessState,
    Snapshot,
    SourceAbsent,
    SourceError,
)
from carbonwatch.node.registration import Registration, RegistrationReader
from carbonwatch.node.selection import ProcessSelection
from carbonwatch.node.sources.memory import read_mem_total_bytes
from carbonwatch.node.sources.wiring import Sources, build_sources
from carbonwatch.node.stateschema import CountersRecord

__all__ = ["Sampler", "Sources", "build_sources"]  # (the sources' wiring is in sources/wiring.py)

log = logging.getLogger("carbonwatch.node.sampler")

OTHER = "other"
T = TypeVar("T")


def _boot_clock() -> float:
    """Seconds since boot, the clock of /proc/PID/stat start times."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@dataclass
class _Proc:
    """Per-process accumulator between samples."""

    reading: ProcessReading
    run_id: str
    energy: dict[str, float] = field(default_factory=dict)
    power: dict[str, float] = field(default_factory=dict)
    container: ContainerRef | None = None


class Sampler:
    """One sample: read the sources, let each component's meter (carbonwatch.node.meters) turn its reading into
    the interval's device energy split among processes, add it to the process, run, container and node
    counters (carbonwatch.node.counters) priced at the zone's intensity of the moment, and publish an immutable
    `Snapshot`. Which processes are read is decided here: every process at a full scan (every
    `process.scan_interval`), in between the run, top-N and GPU processes, children of run processes,
    registered processes and every process that is new since the previous sample."""

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
        self.resolver: IdentityResolver = resolver or Resolver(proc_root=cfg.process.proc_root)
        self.counters = Counters()
        self.rapl_deltas = rapl = RaplDeltas()
        self.gpu_meter = GpuMeter()
        self.cpu_meter = CpuMeter(cfg, sources.cpu_model, rapl)
        self.memory_meter = MemoryMeter(cfg, sources.memory_model, rapl)
        self.latest: Snapshot | None = None
        self._lock = threading.Lock()
        top_n = 0 if only_runs else cfg.process.top_n
        self.selection = ProcessSelection(sources.procs, cfg.process.scan_interval, top_n,
                                          (r.pid for r in self.static_registrations))
        self._boot_prev: float | None = None  # seconds since boot at the previous sample
        self._t: float | None = None
        self._cpu_times: CpuTimes | None = None
        self._procs: dict[ProcKey, _Proc] = {}
        self._reg_cpu: dict[ProcKey, float] = {}  # CPU seconds of a registered process when it registered
        self._ended: dict[ProcKey, float] = {}  # processes whose registered run ended (counted up to the end) -> when
        self._leaving: set[ProcKey] = set()  # of those, the ones that leave their run after this sample
        self.mem_total = 0
        self._components: set[str] = set()  # components this node has reported energy for
        self.devices_found: dict[str, int] = {}  # collector -> devices read at the last sample
        self._failing: dict[str, str] = {}  # collector -> the error logged for it, while it fails

    @property
    def cpu_source(self) -> str:
        return self.cpu_meter.source

    @property
    def memory_source(self) -> str:
        return self.memory_meter.source

    # -- one sample -------------------------------------------------------------------------------

    def sample_once(self) -> Snapshot | None:
        t = self.clock()
        dt = None if self._t is None else t - self._t
        if dt is not None and dt <= 0:
            return self.latest
        status = {name: CollectorStatus(False, 0.0, why) for name, why in self.s.errors.items()}
        intensity = self._intensity(status)
        rapl = self._read_rapl(status)
        gpus = self._read_gpus(status)
        full = self.selection.is_full(t)
        regs = self._read_registrations()
        # before listing /proc: a process missing from this listing started after this moment, so the next
        # sample counts all its CPU time (a process that starts between the listing and a later clock read
        # would be counted from nowhere)
        boot_now = self.boot_clock()
        pids, listed = (None, None) if full else self.selection.between_scans(self._in_runs(), self._procs, gpus, regs)
        procs, cpu_times, identities = self._read_procs(status, pids, regs)
        self.selection.read(procs, listed)
        prev = {k: a.reading for k, a in self._procs.items()}
        gone = [k for k in prev if k not in procs and k[0] not in self.selection.listed]
        iv = Interval(dt, full, procs, prev, gone, self._reg_cpu, cpu_times, self._cpu_times, self._boot_prev,
                      self.selection.folded_rss, self._memory_total())

        measured: dict[str, Measured] = {"gpu": self.gpu_meter.measure(gpus, iv)}
        for key in measured["gpu"].unknown:  # exited since the last sample, or not in our /proc (pid namespace)
            procs[key] = prev[key] if key in prev else ProcessReading(key[0], 0, "unknown", 0.0, 0, -1.0, None)
        rapl_seconds = status["rapl"].duration_seconds if "rapl" in status else 0.0
        for meter in (self.cpu_meter, self.memory_meter):
            if self.cfg.collectors.get(meter.component, True):
                m = measured[meter.component] = meter.measure(rapl, iv, rapl_seconds)
                if m.status is not None and not (m.status_fallback and meter.component in status):
                    status[meter.component] = m.status

        factor = grams_per_joule(intensity.grams_per_kwh) if intensity is not None else None
        devices = [self._device(d, dt) for m in measured.values() for d in m.devices]
        self._log_status(status)
        self._components |= {d.component for d in devices}
        self._t, self._boot_prev = t, boot_now
        if cpu_times is not None:
            self._cpu_times = cpu_times
        if dt is None:  # the first sample only sets the baselines
            self._update_procs(procs, identities, {}, 1.0, None)
            self.selection.after_scan(procs, self._in_runs(), t, full)
            return None
        for comp, m in measured.items():
            joules = sum(d.interval_joules for d in devices if d.component == comp)
            if any(d.component == comp for d in devices):
                self.counters.add_node(comp, joules, m.unattributed, factor)
        self._update_procs(procs, identities, {c: m.parts for c, m in measured.items()}, dt, factor)
        self.selection.after_scan(procs, self._in_runs(), t, full)
        snap = self._build(dt, gpus, devices, measured, status, intensity)
        with self._lock:
            self.latest = snap
        return snap

    def _in_runs(self) -> set[ProcKey]:
        return {k for k, a in self._procs.items() if a.run_id}

    def _memory_total(self) -> int:
        if not self.mem_total and self.cfg.collectors.get("memory", True):
            try:
                root = self.s.procs.proc_root if self.s.procs is not None else self.cfg.process.proc_root
                self.mem_total = read_mem_total_bytes(root)
            except SourceError:
                self.mem_total = 0
        return self.mem_total

    def _device(self, d: DeviceDelta, dt: float | None) -> DeviceState:
        de = d.joules or 0.0
        total = self.counters.add_device(d.component, d.key, d.source, de)
        power = d.power_watts
        if power is None:
            power = de / dt if (d.joules is not None and dt) else 0.0
        return DeviceState(d.component, d.key, d.source, power, total, de)

    # -- sources ----------------------------------------------------------------------------------

    def _timed(self, status: dict[str, CollectorStatus], name: str, fn: Callable[[], T]) -> T | None:
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
            self._failing[name] = f"{type(exc).__name__}: {exc}"
        return None

    def _log_status(self, status: Mapping[str, CollectorStatus]) -> None:
        """Log a collector's failure when it starts or its reason changes, and its recovery: once, not at
        every sample (the reason is served all along in carbonwatch_collector_info)."""
        for name, st in status.items():
            if not st.success and self._failing.get(name) != st.error:
                self._failing[name] = st.error
                log.warning("collector %s failed: %s", name, st.error)
            elif st.success and name in self._failing:
                del self._failing[name]
                log.info("collector %s works again", name)

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
        # a run that ended is counted once, up to its end; afterwards its registration no longer names the run
        return [r for r in regs if not (r.end_cpu_seconds is not None and (r.pid, r.start_time) in self._ended)]

    def _end_runs(self, regs: list[Registration], out: dict[ProcKey, ProcessReading]) -> None:
        """Registrations whose run ended (carbonwatch.node.registration.end): the process is counted up to the CPU
        time it had at the end, whether it still runs or exited since, and then leaves the run."""
        for r in regs:
            if r.end_cpu_seconds is None or r.start_time is None:
                continue
            key = (r.pid, r.start_time)
            prev = self._procs.get(key)
            base = prev.reading if prev is not None else out.get(key)
            if base is None:
                if r.cpu_seconds is None:
                    continue  # neither seen nor a baseline: nothing to count exactly
                base = ProcessReading(r.pid, 0, "unknown", r.cpu_seconds, 0, r.start_time, r.run_id)
                self._reg_cpu[key] = r.cpu_seconds
            # own + children CPU at the end, with the children's part as last seen
            out[key] = dataclasses.replace(base, cpu_seconds=max(base.cpu_seconds, r.end_cpu_seconds
                                                                 - base.children_cpu_seconds), run_id=r.run_id)
            self._ended[key] = self.clock()
            self._leaving.add(key)
            if self.s.registrations is not None:
                self.s.registrations.consumed(r)

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
        readings = self._timed(status, "process", lambda: scanner.read(pids)) or []
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
            if (p.pid, p.start_time) in self._ended:
                rid = None  # it left its run when the run ended
            if rid != p.run_id:
                p = dataclasses.replace(p, run_id=rid)
            out[(p.pid, p.start_time)] = p
        self._end_runs(regs, out)
        return out, cpu_times, identities

    def _read_gpus(self, status: dict[str, CollectorStatus]) -> list[GpuReading]:
        if self.s.nvml is None:
            return []
        gpus = self._timed(status, "gpu", self.s.nvml.read) or []
        self.devices_found["gpu"] = len(gpus)
        errors = list(self.s.nvml.last_errors or [])
        if errors and "gpu" in status and status["gpu"].success and not status["gpu"].absent:
            status["gpu"] = CollectorStatus(False, status["gpu"].duration_seconds, "; ".join(errors))
        return gpus

    def _read_rapl(self, status: dict[str, CollectorStatus]) -> RaplReadingLike | None:
        if self.s.rapl is None:
            return None
        reading = self._timed(status, "rapl", self.s.rapl.read)
        if reading is None:
            # Where the model fills in (source auto) until RAPL is readable again, the RAPL delta across the gap
            # would count that time a second time: RAPL starts again from a fresh baseline. With source rapl
            # nothing fills in, and the delta across the gap is the energy drawn meanwhile.
            for comp, source in (("cpu", self.cfg.cpu.source), ("memory", self.cfg.memory.source)):
                if source != "rapl":
                    self.rapl_deltas.forget(comp)
            if not self.s.rapl_expected:
                status.pop("rapl", None)
        return reading

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
        counters = self.counters
        for key, reading in procs.items():
            acc = self._procs.get(key) or _Proc(reading, reading.run_id or "")
            ident = identities.get(key[0])
            acc.reading = reading
            acc.run_id = reading.run_id or acc.run_id  # a process never leaves its run
            if ident is not None and ident.container is not None:
                acc.container = ident.container
            acc.power = {}
            run = counters.run(acc.run_id, ident.run if ident is not None else None) if acc.run_id else None
            box = counters.container(acc.container, now) if acc.container is not None else None
            for comp in comps:
                de = energy.get(comp, {}).get(key, 0.0)
                acc.power[comp] = de / dt
                if de:
                    acc.energy[comp] = acc.energy.get(comp, 0.0) + de
                if run is not None:
                    counters.add_energy(run, comp, de, factor)
                if box is not None:
                    counters.add_energy(box, comp, de, factor)
            fresh[key] = acc
        self._procs = fresh
        self._reg_cpu = {k: v for k, v in self._reg_cpu.items() if k in fresh}
        for run in counters.runs.values():
            run.power_watts = {c: 0.0 for c in self._components}
            run.live_processes = 0
            for comp in self._components:  # every component this node measures, even if 0 for this run
                run.energy_joules.setdefault(comp, 0.0)
                if factor is not None:
                    run.emissions_grams.setdefault(comp, 0.0)
        for acc in fresh.values():
            if acc.run_id:
                run = counters.runs[acc.run_id]
                run.live_processes += 1
                run.last_seen = now
                for comp, w in acc.power.items():
                    run.power_watts[comp] += w
        for key in self._leaving:  # counted up to the run's end in this sample; from now on outside it
            if key in fresh:
                fresh[key].run_id = ""
        self._leaving = set()
        # remembered while the process lives and while the reader may still offer its registration file
        grace = 2 * RegistrationReader.ended_grace
        self._ended = {k: t for k, t in self._ended.items() if k in fresh or now - t < grace}
        counters.expire(now, self.cfg.process.run_linger)

    def _build(
        self,
        dt: float,
        gpus: list[GpuReading],
        devices: list[DeviceState],
        measured: dict[str, Measured],
        status: dict[str, CollectorStatus],
        intensity: IntensityInUse | None,
    ) -> Snapshot:
        current = {c: m.source for c, m in measured.items()}
        current.setdefault("gpu", SOURCE_NVML_COUNTER)
        for run in self.counters.runs.values():
            for comp in self._components:
                # a run's source is the weakest it has had: one modelled sample makes the total modelled
                run.sources[comp] = weakest([s for s in (run.sources.get(comp), current.get(comp)) if s])
        return Snapshot(
            timestamp=self.wall(),
            gpus=list(gpus),
            devices=devices,
            processes=self._select_processes(dt, {c: m.other for c, m in measured.items()}),
            runs=self.counters.runs_copy(),
            unattributed_power_watts={c: m.unattributed / dt for c, m in measured.items()},
            unattributed_energy_joules=dict(self.counters.unattributed),
            collectors=status,
            node_energy_joules=dict(self.counters.node_energy),
            node_emissions_grams=dict(self.counters.node_emissions),
            intensity=intensity,
            containers=self.counters.containers_copy(),
        )

    def _select_processes(self, dt: float, other: dict[str, float]) -> list[ProcessState]:
        """Run processes plus the top N; the rest, and the busy time of processes not read individually,
        fold into one pid="other" series, so the per-sample sums still hold."""
        shown: list[_Proc] = []
        power = {c: other.get(c, 0.0) / dt for c in self._components}
        for key, a in self._procs.items():
            if a.run_id or key in self.selection.top or a.power.get("gpu"):  # GPU users are always shown
                shown.append(a)
            else:
                for comp, w in a.power.items():
                    power[comp] = power.get(comp, 0.0) + w
        for comp, w in power.items():
            self.counters.other[comp] = self.counters.other.get(comp, 0.0) + w * dt
        out = [ProcessState(a.reading.pid, a.reading.comm, a.run_id, dict(a.power), dict(a.energy)) for a in shown]
        if not self.only_runs:
            out.append(ProcessState(-1, OTHER, "", power, dict(self.counters.other)))
        return out

    # -- durable counters -------------------------------------------------------------------------

    def export_state(self) -> CountersRecord:
        """The counters that must survive a restart, as plain JSON-able data (see carbonwatch.node.state)."""
        with self._lock:
            return self.counters.export(self.clock(), self.wall())

    def restore_state(self, state: CountersRecord) -> None:
        """Continue every counter from `state` (as written by `export_state`, validated by carbonwatch.node.state)."""
        with self._lock:
            self._components |= self.counters.restore(state, self.clock(), self.wall(), self.cfg.process.run_linger)

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
