"""The sources an exporter (or the run client's local meter) reads, built from its config: one per collector,
each under its configured root, NVML as given (pynvml by default, a fake in tests)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from carbonwatch.node.config import ExporterConfig
from carbonwatch.node.meters import CpuModel, GpuSource, MemoryModel, RaplLike
from carbonwatch.node.model import SourceError
from carbonwatch.node.registration import Registration, RegistrationReader
from carbonwatch.node.sources.procs import ProcScanner

if TYPE_CHECKING:
    from carbonwatch.node.sources.nvml import Nvml


class RegistrationSource(Protocol):
    def read(self) -> list[Registration]: ...

    def consumed(self, reg: Registration) -> None: ...


@dataclass
class Sources:
    """What the sampler reads. Each may be None (collector disabled or unavailable); `errors` names the
    sources that could not even be set up (the sampler reports those collectors as failed)."""

    procs: ProcScanner | None = None
    nvml: GpuSource | None = None
    rapl: RaplLike | None = None
    rapl_expected: bool = False  # a powercap tree exists: failing to read it is a degradation
    cpu_model: CpuModel | None = None
    memory_model: MemoryModel | None = None
    registrations: RegistrationSource | None = None
    errors: dict[str, str] = field(default_factory=dict)


def build_sources(cfg: ExporterConfig, nvml: Nvml | None = None) -> Sources:
    """Sources for a config. Never raises for a missing device: the sampler reports it per collector. `nvml`:
    the NVML calls (None: pynvml, loaded on the first read; tests pass a fake)."""
    from carbonwatch.node.sources.cpumodel import CpuPowerModel
    from carbonwatch.node.sources.memory import MemoryPowerModel
    from carbonwatch.node.sources.rapl import RaplSource

    s = Sources()
    on = cfg.collectors
    if on.get("process", True) or on.get("cpu", True):
        s.procs = ProcScanner(cfg.process.proc_root)
    if on.get("process", True):
        s.registrations = RegistrationReader(
            cfg.process.spool_dir, cfg.process.proc_root, cfg.process.max_registrations
        )
    if on.get("gpu", True):
        from carbonwatch.node.sources.nvml import NvmlSource

        # connects on its first read: a missing driver is reported per sample; NVML pids are checked in proc_root
        s.nvml = NvmlSource(nvml, proc_root=cfg.process.proc_root, counter_seconds=cfg.gpu.counter_interval,
                            process_seconds=cfg.gpu.process_interval)
    want_rapl = (on.get("cpu", True) and cfg.cpu.source != "model") or (
        on.get("memory", True) and cfg.memory.source != "model"
    )
    if want_rapl:
        s.rapl_expected = _has_rapl_zones(cfg.cpu.powercap_root) or "rapl" in (cfg.cpu.source, cfg.memory.source)
        if s.rapl_expected:
            s.rapl = RaplSource(cfg.cpu.powercap_root)
    if on.get("cpu", True):
        try:
            s.cpu_model = CpuPowerModel(
                proc_root=cfg.process.proc_root,
                tdp_watts=cfg.cpu.tdp_watts,
                min_watts_per_cpu=cfg.cpu.min_watts_per_cpu,
                max_watts_per_cpu=cfg.cpu.max_watts_per_cpu,
            )
        except SourceError as exc:
            s.errors["cpu"] = f"CPU model: {exc}"
    if on.get("memory", True):
        try:
            s.memory_model = MemoryPowerModel(watts_per_gb=cfg.memory.watts_per_gb, proc_root=cfg.process.proc_root)
        except SourceError as exc:
            s.errors["memory"] = f"memory model: {exc}"
    return s


def _has_rapl_zones(root: str) -> bool:
    try:
        return any(n.startswith("intel-rapl:") for n in os.listdir(root))
    except OSError:
        return False
