"""Exporter configuration: defaults < YAML file < environment < flags, validated.

Every error names the key (or flag / variable) and what is wrong; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

from carbonwatch import yamlfile
from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.intensity.providers import check_section, validate_zone

COLLECTORS = ("gpu", "cpu", "memory", "process", "intensity")
# The top-level keys of a configuration file, shared by the exporter and the run client (section `run`).
TOP_KEYS = ("zone", "sample_interval", "web", "collectors", "cpu", "memory", "gpu", "process", "intensity", "run",
            "storage", "kubernetes", "slurm")
DEFAULT_SPOOL_DIR = "/tmp/carbonwatch-runs"
_T = TypeVar("_T")
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
    counter_interval: float = 5.0  # seconds between reads of the energy counter (carried by averaged power between)
    process_interval: float = 5.0  # seconds between reads of the per-process utilisation samples


@dataclass
class ProcessConfig:
    proc_root: str = "/proc"
    top_n: int = 20  # per-process series for run processes plus the top N by power; the rest fold into pid="other"
    run_linger: float = 300.0  # seconds a run's series stay after its last process ended
    scan_interval: float = 10.0  # full /proc scans; between them only run, top-N and GPU processes are read
    spool_dir: str = DEFAULT_SPOOL_DIR  # run root pids registered by the in-code run client
    max_registrations: int = 1024


@dataclass
class StorageConfig:
    path: str = "/var/lib/carbonwatch"  # directory of the state file that keeps the counters across restarts
    interval: float = 2.0  # how often the state file is written: a kill -9 loses at most this much counting


SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_POD_LABELS: dict[str, tuple[str, ...]] = {
    "run_id": ("carbonwatch.dev/run-id",),
    "user": ("carbonwatch.dev/user",),
    "project": ("carbonwatch.dev/project",),
    "model": ("carbonwatch.dev/model",),
    "team": ("carbonwatch.dev/team",),
}
# A Kubernetes label key: optional DNS-subdomain prefix and '/', then a name of 1-63 characters.
_LABEL_KEY_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*/)?"
    r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
)
SLURM_CLUSTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class KubernetesConfig:
    """Pods on this node, from the kubelet's read-only pod list (see docs/kubernetes.md)."""

    enabled: str = "auto"  # true | false | auto: on inside a cluster (KUBERNETES_SERVICE_HOST or an SA token)
    kubelet_url: str = ""  # "" = CARBONWATCH_KUBELET_URL, else https://$NODE_IP:10250
    token_file: str = f"{SA_DIR}/token"
    ca_file: str = f"{SA_DIR}/ca.crt"
    insecure_skip_verify: bool = False  # kubelets with self-signed serving certificates (kubeadm's default)
    refresh_interval: float = 30.0
    timeout: float = 10.0
    # pod label keys tried in order for each run label; the run id falls back to the training job, then the pod
    pod_labels: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_POD_LABELS))
    pod_runs: bool = True  # a pod without a run-id label or a training job is a run of its own
    exclude_namespaces: tuple[str, ...] = ("kube-system",)  # never runs (their containers are still measured)


@dataclass
class SlurmConfig:
    enabled: bool = True  # jobs found by SLURM_JOB_ID or their /slurm/uid_N/job_M cgroup
    cluster: str = ""  # "" = SLURM_CLUSTER_NAME of the exporter's environment, else "default"


@dataclass
class ExporterConfig:
    listen_address: str = ":9860"
    web_config_file: str = ""  # exporter-toolkit web configuration (TLS, basic auth); see carbonwatch.node.web
    sample_interval: float = 1.0
    zone: str = "world"
    collectors: dict[str, bool] = field(default_factory=lambda: {c: True for c in COLLECTORS})
    cpu: CpuConfig = field(default_factory=CpuConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    intensity: dict[str, object] = field(default_factory=dict)  # validated by carbonwatch.intensity.providers
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

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


def _check_type(key: str, value: object, kind: type[_T]) -> _T:
    if isinstance(value, bool) and kind is not bool and (kind is int or kind is float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _number(key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        raise ConfigError(f"{key}: expected int or float, got {type(value).__name__} {value!r}")
    return float(value)


def _positive(key: str, value: object, allow_zero: bool = False) -> float:
    v = _number(key, value)
    if v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _unknown(section: str, data: Mapping[str, object], allowed: set[str]) -> None:
    for key in data:
        if key not in allowed:
            where = f"{section}.{key}" if section else str(key)
            raise ConfigError(f"{where}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _section(data: Mapping[str, object], name: str) -> Mapping[str, object]:
    value = data.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
    return value


def apply_mapping(cfg: ExporterConfig, data: Mapping[str, object]) -> ExporterConfig:
    """Apply a parsed YAML document to `cfg` (in place) and return it."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    # `run` is the run client's section of a shared file (carbonwatch.client.settings validates it)
    _unknown("", data, set(TOP_KEYS))
    if "zone" in data:
        cfg.zone = validate_zone(data["zone"])
    if "sample_interval" in data:
        cfg.sample_interval = parse_duration(data["sample_interval"], "sample_interval")
    _apply_web(cfg, _section(data, "web"))
    _apply_collectors(cfg, _section(data, "collectors"))
    _apply_cpu(cfg.cpu, _section(data, "cpu"))
    _apply_memory_gpu(cfg, _section(data, "memory"), _section(data, "gpu"))
    _apply_process(cfg.process, _section(data, "process"))
    _apply_storage(cfg.storage, _section(data, "storage"))
    if "intensity" in data:
        cfg.intensity = dict(_section(data, "intensity"))
        check_section(cfg.intensity)  # every key and type, where the file is read
    _section(data, "run")  # the run client checks its keys; here it must at least be a mapping
    _apply_kubernetes(cfg.kubernetes, _section(data, "kubernetes"))
    _apply_slurm(cfg.slurm, _section(data, "slurm"))
    return cfg


def _apply_web(cfg: ExporterConfig, web: Mapping[str, object]) -> None:
    _unknown("web", web, {"listen_address", "config_file"})
    if "listen_address" in web:
        cfg.listen_address = str(_check_type("web.listen_address", web["listen_address"], str))
        parse_listen_address(cfg.listen_address)
    if web.get("config_file") is not None:
        cfg.web_config_file = str(_check_type("web.config_file", web["config_file"], str))


def _apply_collectors(cfg: ExporterConfig, cols: Mapping[str, object]) -> None:
    _unknown("collectors", cols, set(COLLECTORS))
    for name, on in cols.items():
        cfg.collectors[name] = bool(_check_type(f"collectors.{name}", on, bool))


def _apply_cpu(c: CpuConfig, cpu: Mapping[str, object]) -> None:
    _unknown("cpu", cpu, {f.name for f in fields(CpuConfig)})
    if "source" in cpu:
        c.source = _choice("cpu.source", cpu["source"], ("auto", "rapl", "model"))
    if "powercap_root" in cpu:
        c.powercap_root = str(_check_type("cpu.powercap_root", cpu["powercap_root"], str))
    for key in ("tdp_watts", "min_watts_per_cpu", "max_watts_per_cpu"):
        if cpu.get(key) is not None:
            setattr(c, key, _positive(f"cpu.{key}", cpu[key], allow_zero=key == "min_watts_per_cpu"))
    if (c.min_watts_per_cpu is None) != (c.max_watts_per_cpu is None):
        raise ConfigError("cpu.min_watts_per_cpu and cpu.max_watts_per_cpu: set both or neither")
    if c.min_watts_per_cpu is not None and c.max_watts_per_cpu is not None:
        if c.min_watts_per_cpu > c.max_watts_per_cpu:
            raise ConfigError("cpu.min_watts_per_cpu: must not exceed cpu.max_watts_per_cpu")


def _apply_memory_gpu(cfg: ExporterConfig, mem: Mapping[str, object], gpu: Mapping[str, object]) -> None:
    _unknown("memory", mem, {f.name for f in fields(MemoryConfig)})
    if "source" in mem:
        cfg.memory.source = _choice("memory.source", mem["source"], ("auto", "rapl", "model"))
    if "watts_per_gb" in mem:
        cfg.memory.watts_per_gb = _positive("memory.watts_per_gb", mem["watts_per_gb"], allow_zero=True)
    if "nvml_module" in gpu:
        raise ConfigError("gpu.nvml_module: no longer a setting: the exporter always loads pynvml (a test injects "
                          "a fake NVML through NvmlSource's constructor); remove the key")
    _unknown("gpu", gpu, {f.name for f in fields(GpuConfig)})
    for key in ("counter_interval", "process_interval"):
        if key in gpu:
            setattr(cfg.gpu, key, parse_duration(gpu[key], f"gpu.{key}"))


def _apply_process(process: ProcessConfig, proc: Mapping[str, object]) -> None:
    _unknown("process", proc, {f.name for f in fields(ProcessConfig)})
    if "proc_root" in proc:
        process.proc_root = str(_check_type("process.proc_root", proc["proc_root"], str))
    if "spool_dir" in proc:
        process.spool_dir = str(_check_type("process.spool_dir", proc["spool_dir"], str))
    for key in ("top_n", "max_registrations"):
        if key in proc:
            v = _check_type(f"process.{key}", proc[key], int)
            if isinstance(v, bool) or v < 0:
                raise ConfigError(f"process.{key}: must be a whole number >= 0, got {proc[key]!r}")
            setattr(process, key, int(v))
    if "run_linger" in proc:
        process.run_linger = parse_duration(proc["run_linger"], "process.run_linger")
    if "scan_interval" in proc:
        process.scan_interval = parse_duration(proc["scan_interval"], "process.scan_interval")


def _apply_storage(st: StorageConfig, storage: Mapping[str, object]) -> None:
    _unknown("storage", storage, {f.name for f in fields(StorageConfig)})
    if "path" in storage:
        st.path = check_storage_path(str(_check_type("storage.path", storage["path"], str)))
    if "interval" in storage:
        st.interval = parse_duration(storage["interval"], "storage.interval")
        if not 0.1 <= st.interval <= 60:
            raise ConfigError(f"storage.interval: must be between 100ms and 60s, got {storage['interval']!r}")


def _label_keys(key: str, value: object) -> tuple[str, ...]:
    keys = [value] if isinstance(value, str) else value
    if not isinstance(keys, list) or not keys:
        raise ConfigError(f"{key}: expected a pod label key or a non-empty list of them, got {value!r}")
    for k in keys:
        if not isinstance(k, str) or len(k) > 317 or not _LABEL_KEY_RE.match(k):
            raise ConfigError(f"{key}: {k!r} is not a Kubernetes label key (e.g. carbonwatch.dev/user)")
    return tuple(keys)


def _apply_kubernetes(k8s: KubernetesConfig, data: Mapping[str, object]) -> None:
    _unknown("kubernetes", data, {f.name for f in fields(KubernetesConfig)})
    if "enabled" in data:
        v = data["enabled"]
        k8s.enabled = ("true" if v else "false") if isinstance(v, bool) else _choice(
            "kubernetes.enabled", v, ("auto", "true", "false"))
    for key in ("kubelet_url", "token_file", "ca_file"):
        if key in data:
            setattr(k8s, key, str(_check_type(f"kubernetes.{key}", data[key], str)))
    if k8s.kubelet_url and not re.match(r"^https?://[^/\s]+/?$", k8s.kubelet_url):
        raise ConfigError(
            f"kubernetes.kubelet_url: {k8s.kubelet_url!r} is not http(s)://HOST:PORT (e.g. https://10.0.0.5:10250)")
    if "insecure_skip_verify" in data:
        k8s.insecure_skip_verify = bool(
            _check_type("kubernetes.insecure_skip_verify", data["insecure_skip_verify"], bool))
    for key in ("refresh_interval", "timeout"):
        if key in data:
            v = parse_duration(data[key], f"kubernetes.{key}")
            if not 0.1 <= v <= 3600:
                raise ConfigError(f"kubernetes.{key}: must be between 100ms and 1h, got {data[key]!r}")
            setattr(k8s, key, v)
    labels = data.get("pod_labels") or {}
    if not isinstance(labels, Mapping):
        raise ConfigError(f"kubernetes.pod_labels: expected a mapping, got {type(labels).__name__}")
    if labels:
        _unknown("kubernetes.pod_labels", labels, set(DEFAULT_POD_LABELS))
        for name, value in labels.items():
            k8s.pod_labels[name] = _label_keys(f"kubernetes.pod_labels.{name}", value)
    if "pod_runs" in data:
        k8s.pod_runs = bool(_check_type("kubernetes.pod_runs", data["pod_runs"], bool))
    if "exclude_namespaces" in data:
        v = _check_type("kubernetes.exclude_namespaces", data["exclude_namespaces"], list)
        for ns in v:
            if not isinstance(ns, str) or not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", ns):
                raise ConfigError(f"kubernetes.exclude_namespaces: {ns!r} is not a namespace name")
        k8s.exclude_namespaces = tuple(v)


def _apply_slurm(slurm: SlurmConfig, data: Mapping[str, object]) -> None:
    _unknown("slurm", data, {f.name for f in fields(SlurmConfig)})
    if "enabled" in data:
        slurm.enabled = bool(_check_type("slurm.enabled", data["enabled"], bool))
    if "cluster" in data:
        slurm.cluster = validate_slurm_cluster(data["cluster"])


def validate_slurm_cluster(value: object, what: str = "slurm.cluster") -> str:
    if not isinstance(value, str) or not SLURM_CLUSTER_RE.match(value):
        raise ConfigError(
            f"{what}: {value!r} is not a cluster name (1-64 letters, digits, '_', '.', '-'; part of run ids)")
    return value


def check_storage_path(path: str, what: str = "storage.path") -> str:
    """The directory of the state file: not empty, and not a file (nor below one), so the exporter does not
    start only to fail every write of its counters."""
    if not path.strip():
        raise ConfigError(f"{what}: must not be empty")
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise ConfigError(f"{what}: {path!r} cannot be the state directory: {str(q)!r} is a file")
            break
    return path


def load_file(path: str | os.PathLike[str]) -> dict[str, object]:
    data: dict[str, object] = yamlfile.load(path, "config.file")
    return data


def validate(cfg: ExporterConfig) -> ExporterConfig:
    if cfg.sample_interval < 0.05:
        raise ConfigError(f"sample_interval: must be at least 50ms, got {cfg.sample_interval}s")
    if cfg.sample_interval > 300:
        raise ConfigError(f"sample_interval: must be at most 5m, got {cfg.sample_interval}s")
    validate_zone(cfg.zone)
    parse_listen_address(cfg.listen_address)
    return cfg
