"""Exporter configuration: defaults < YAML file < environment < flags, validated.

Every error names the key (or flag / variable) and what is wrong; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError

COLLECTORS = ("gpu", "cpu", "memory", "process", "intensity")
DEFAULT_SPOOL_DIR = "/tmp/carbonwatch-runs"
# Grid zones: ISO 3166 country codes, Electricity Maps zone keys (US-CAL-CISO, DK-DK1), or "world".
ZONE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})$")


@dataclass
class CpuConfig:
    source: str = "auto"  # auto (RAPL if readable, else model) | rapl | model
    powercap_root: str = "/sys/class/powercap"
    tdp_watts: float | None = None
    min_watts_per_cpu: float | None = None
    max_watts_per_cpu: float | None = None


@dataclass
class MemoryConfig:
    source: str = "auto"  # auto (RAPL dram if present, else model) | rapl | model
    watts_per_gb: float = 0.392  # Cloud Carbon Footprint memory coefficient


@dataclass
class GpuConfig:
    nvml_module: str = "pynvml"  # dotted path of an NVML-compatible module (tests inject a fake)


@dataclass
class ProcessConfig:
    proc_root: str = "/proc"
    top_n: int = 20  # per-process series for run processes plus the top N by power; the rest fold into pid="other"
    run_linger: float = 300.0  # seconds a run's series stay after its last process ended
    scan_interval: float = 10.0  # full /proc scans; between them only run, top-N and GPU processes are read
    spool_dir: str = DEFAULT_SPOOL_DIR  # run root pids registered by the in-code run client
    max_registrations: int = 1024


@dataclass
class ExporterConfig:
    listen_address: str = ":9860"
    sample_interval: float = 1.0
    zone: str = "world"
    collectors: dict[str, bool] = field(default_factory=lambda: {c: True for c in COLLECTORS})
    cpu: CpuConfig = field(default_factory=CpuConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    intensity: dict[str, Any] = field(default_factory=dict)  # validated by carbonwatch.intensity

    def listen_host_port(self) -> tuple[str, int]:
        return parse_listen_address(self.listen_address)


def parse_listen_address(value: str, what: str = "web.listen_address") -> tuple[str, int]:
    m = _LISTEN_RE.match(value.strip())
    if not m:
        raise ConfigError(f"{what}: {value!r} is not HOST:PORT (e.g. :9860, 127.0.0.1:9860, [::1]:9860)")
    port = int(m.group("port"))
    if port > 65535:
        raise ConfigError(f"{what}: port {port} is out of range 0..65535")
    host = m.group("v6") or m.group("host") or "0.0.0.0"
    return host, port


def _check_type(key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) and kind is not bool and (kind is int or kind is float or kind == (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{key}: expected {names}, got {type(value).__name__} {value!r}")
    return value


def _positive(key: str, value: Any, allow_zero: bool = False) -> float:
    v = float(_check_type(key, value, (int, float)))
    if v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _unknown(section: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            where = f"{section}.{key}" if section else str(key)
            raise ConfigError(f"{where}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
    return value


def validate_zone(value: Any, what: str = "zone") -> str:
    if not isinstance(value, str) or not ZONE_RE.match(value):
        raise ConfigError(f"{what}: {value!r} is not a grid zone (e.g. DE, FR, US-CAL-CISO, world)")
    return value


def apply_mapping(cfg: ExporterConfig, data: Mapping[str, Any]) -> ExporterConfig:
    """Apply a parsed YAML document to `cfg` (in place) and return it."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    # `run` is the run client's section of a shared file (carbonwatch.client.settings validates it)
    top = {"zone", "sample_interval", "web", "collectors", "cpu", "memory", "gpu", "process", "intensity", "run"}
    _unknown("", data, top)
    if "zone" in data:
        cfg.zone = validate_zone(data["zone"])
    if "sample_interval" in data:
        cfg.sample_interval = parse_duration(data["sample_interval"], "sample_interval")
    web = _section(data, "web")
    _unknown("web", web, {"listen_address"})
    if "listen_address" in web:
        cfg.listen_address = str(_check_type("web.listen_address", web["listen_address"], str))
        parse_listen_address(cfg.listen_address)
    cols = _section(data, "collectors")
    _unknown("collectors", cols, set(COLLECTORS))
    for name, on in cols.items():
        cfg.collectors[name] = bool(_check_type(f"collectors.{name}", on, bool))
    cpu = _section(data, "cpu")
    _unknown("cpu", cpu, {f.name for f in fields(CpuConfig)})
    if "source" in cpu:
        cfg.cpu.source = _choice("cpu.source", cpu["source"], ("auto", "rapl", "model"))
    if "powercap_root" in cpu:
        cfg.cpu.powercap_root = str(_check_type("cpu.powercap_root", cpu["powercap_root"], str))
    for key in ("tdp_watts", "min_watts_per_cpu", "max_watts_per_cpu"):
        if cpu.get(key) is not None:
            setattr(cfg.cpu, key, _positive(f"cpu.{key}", cpu[key], allow_zero=key == "min_watts_per_cpu"))
    if (cfg.cpu.min_watts_per_cpu is None) != (cfg.cpu.max_watts_per_cpu is None):
        raise ConfigError("cpu.min_watts_per_cpu and cpu.max_watts_per_cpu: set both or neither")
    if cfg.cpu.min_watts_per_cpu is not None and cfg.cpu.max_watts_per_cpu is not None:
        if cfg.cpu.min_watts_per_cpu > cfg.cpu.max_watts_per_cpu:
            raise ConfigError("cpu.min_watts_per_cpu: must not exceed cpu.max_watts_per_cpu")
    mem = _section(data, "memory")
    _unknown("memory", mem, {f.name for f in fields(MemoryConfig)})
    if "source" in mem:
        cfg.memory.source = _choice("memory.source", mem["source"], ("auto", "rapl", "model"))
    if "watts_per_gb" in mem:
        cfg.memory.watts_per_gb = _positive("memory.watts_per_gb", mem["watts_per_gb"], allow_zero=True)
    gpu = _section(data, "gpu")
    _unknown("gpu", gpu, {f.name for f in fields(GpuConfig)})
    if "nvml_module" in gpu:
        cfg.gpu.nvml_module = str(_check_type("gpu.nvml_module", gpu["nvml_module"], str))
    proc = _section(data, "process")
    _unknown("process", proc, {f.name for f in fields(ProcessConfig)})
    if "proc_root" in proc:
        cfg.process.proc_root = str(_check_type("process.proc_root", proc["proc_root"], str))
    if "spool_dir" in proc:
        cfg.process.spool_dir = str(_check_type("process.spool_dir", proc["spool_dir"], str))
    for key in ("top_n", "max_registrations"):
        if key in proc:
            v = _check_type(f"process.{key}", proc[key], int)
            if isinstance(v, bool) or v < 0:
                raise ConfigError(f"process.{key}: must be a whole number >= 0, got {proc[key]!r}")
            setattr(cfg.process, key, int(v))
    if "run_linger" in proc:
        cfg.process.run_linger = parse_duration(proc["run_linger"], "process.run_linger")
    if "scan_interval" in proc:
        cfg.process.scan_interval = parse_duration(proc["scan_interval"], "process.scan_interval")
    if "intensity" in data:
        cfg.intensity = dict(_section(data, "intensity"))
    return cfg


def load_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config.file: cannot read {str(p)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config.file: {str(p)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config.file: {str(p)!r} must hold a mapping at the top level")
    return data


def validate(cfg: ExporterConfig) -> ExporterConfig:
    if cfg.sample_interval < 0.05:
        raise ConfigError(f"sample_interval: must be at least 50ms, got {cfg.sample_interval}s")
    if cfg.sample_interval > 300:
        raise ConfigError(f"sample_interval: must be at most 5m, got {cfg.sample_interval}s")
    validate_zone(cfg.zone)
    parse_listen_address(cfg.listen_address)
    return cfg
