"""Plain data passed between the exporter's parts: sources -> sampler -> attribution -> collector.

Every energy figure carries the `source` it came from, so nothing published hides whether it was
measured by a hardware counter or estimated by a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from carbonwatch.errors import DeviceError
from carbonwatch.intensity.providers import IntensityInUse

# Where a number came from (the `source` label).
SOURCE_NVML_COUNTER = "nvml_counter"  # GPU total-energy counter (Volta and newer)
SOURCE_NVML_POWER = "nvml_power"  # GPU power sampled by the exporter and integrated
SOURCE_RAPL = "rapl"  # Intel/AMD RAPL energy counters through powercap sysfs
SOURCE_MODEL = "model"  # a model estimate (TDP x utilisation, W/GB)


class SourceError(Exception):
    """A source could not be read. The sampler marks its collector failed and carries on."""


class SourceAbsent(SourceError):
    """The device this source measures is not on this node (no NVIDIA driver or library, no GPU, no powercap
    tree). Not a failure: the collector reports success with zero devices and says why."""


class FatalSourceError(DeviceError):
    """A source can never work again in this process (e.g. the NVML library no longer matches the loaded
    driver after an upgrade): the exporter logs the message and exits non-zero so its supervisor restarts it."""


@dataclass(frozen=True)
class GpuProcessUse:
    """One process on one GPU, as NVML reports it."""

    pid: int
    sm_util: float | None = None  # percent of SM time over the last sample window, 0..100
    mem_util: float | None = None  # percent of memory-controller time, 0..100
    used_memory_bytes: int | None = None
    # MIG: the GPU instance the process runs in, and the fraction of the whole board's energy it is due (its
    # instance's slices / the board's slices x its share within the instance). When any process of a reading
    # has a board_share, the split uses these fractions and leaves the rest of the board unattributed.
    gpu_instance_id: int | None = None
    board_share: float | None = None


@dataclass(frozen=True)
class GpuReading:
    index: int
    uuid: str
    name: str
    power_watts: float | None  # averaged power where the driver offers it, else instant
    energy_joules: float | None  # hardware counter in joules (since driver load), None without one
    utilization_ratio: float | None  # 0..1
    processes: tuple[GpuProcessUse, ...] = ()
    # Where the energy comes from: "nvml_counter" (energy_joules set), "nvml_power_average" or
    # "nvml_power_instant" (energy_joules None: power_watts is integrated); "" from sources that do not say.
    energy_source: str = ""
    # MIG mode: (MIG device UUID, fraction of the board's slices its GPU instance holds), one per MIG device.
    mig_shares: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class EnergyReading:
    """A CPU package or the memory: a cumulative energy in joules (wrap-corrected, monotonic for the
    reader's lifetime) where a counter exists, else an instantaneous modelled power."""

    key: str  # package id ("0", "1", ...) for CPU, "" for memory
    source: str
    energy_joules: float | None = None
    power_watts: float | None = None


@dataclass(frozen=True)
class ProcessReading:
    pid: int
    ppid: int
    comm: str
    cpu_seconds: float  # utime + stime, cumulative
    rss_bytes: int
    start_time: float  # process start, seconds since boot (ticks / CLK_TCK): pid + start is an identity
    run_id: str | None  # from CARBONWATCH_RUN_ID in its environment, or None (unknown / unreadable)
    # Selected variables of its environment (CARBONWATCH_*, SLURM_*), read once per process; empty if unreadable.
    environ: tuple[tuple[str, str], ...] = ()
    cgroup: str = ""  # /proc/PID/cgroup as read once per process ("" if unreadable)
    children_cpu_seconds: float = 0.0  # cutime + cstime: CPU time of the children it has waited for


@dataclass
class CpuTimes:
    """System-wide CPU time from /proc/stat, seconds, cumulative."""

    total: float
    busy: float
    ncpu: int


@dataclass
class DeviceState:
    """A device (one GPU, one CPU package, the memory) in one snapshot."""

    component: str
    key: str
    source: str
    power_watts: float
    energy_joules: float  # exporter-maintained counter
    interval_joules: float = 0.0  # energy in this sample's interval


@dataclass
class ProcessState:
    pid: int
    comm: str
    run_id: str
    power_watts: dict[str, float] = field(default_factory=dict)  # component -> W
    energy_joules: dict[str, float] = field(default_factory=dict)  # component -> J, since first seen


@dataclass
class RunState:
    run_id: str
    power_watts: dict[str, float] = field(default_factory=dict)
    energy_joules: dict[str, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # component -> source of its energy
    last_seen: float = 0.0  # monotonic time its last process was seen
    live_processes: int = 0
    emissions_grams: dict[str, float] = field(default_factory=dict)  # component -> g CO2e, sum of dE x I(t)
    origin: str = ""  # how its processes were found to belong to it: one of contracts.ORIGINS
    labels: dict[str, str] = field(default_factory=dict)  # user, project, model, team where the node knows them


@dataclass
class ContainerState:
    """A Kubernetes container on this node: its processes' energy and emissions since first seen."""

    namespace: str
    pod: str
    container: str
    energy_joules: dict[str, float] = field(default_factory=dict)
    emissions_grams: dict[str, float] = field(default_factory=dict)
    last_seen: float = 0.0  # monotonic


@dataclass
class CollectorStatus:
    success: bool
    duration_seconds: float
    error: str = ""
    absent: bool = False  # nothing to measure on this node (no GPU, no powercap tree): not a failure


@dataclass
class Snapshot:
    """Everything `/metrics` serves, built once per sample."""

    timestamp: float  # wall clock, seconds
    gpus: list[GpuReading] = field(default_factory=list)
    devices: list[DeviceState] = field(default_factory=list)
    processes: list[ProcessState] = field(default_factory=list)  # already bounded (runs + top N + other)
    runs: list[RunState] = field(default_factory=list)
    unattributed_power_watts: dict[str, float] = field(default_factory=dict)
    unattributed_energy_joules: dict[str, float] = field(default_factory=dict)
    collectors: dict[str, CollectorStatus] = field(default_factory=dict)
    node_energy_joules: dict[str, float] = field(default_factory=dict)  # component -> all the node's energy, J
    node_emissions_grams: dict[str, float] = field(default_factory=dict)  # component -> g CO2e
    intensity: IntensityInUse | None = None  # what this sample's energy was priced at
    containers: list[ContainerState] = field(default_factory=list)
