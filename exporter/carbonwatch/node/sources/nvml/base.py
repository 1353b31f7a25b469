"""What the NVML readers share: the `Nvml` Protocol (the calls of the pynvml API this source makes, so a fake
is any object that has them, passed to the constructor), NVML's return codes and field ids, the per-GPU
records, and small decoders."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from carbonwatch.node.model import FatalSourceError

ENERGY_COUNTER = "nvml_counter"
POWER_AVERAGE = "nvml_power_average"
POWER_INSTANT = "nvml_power_instant"

# nvmlReturn_t and field ids, as in nvml.h (stable across driver and pynvml versions).
SUCCESS = 0
UNINITIALIZED = 1
INVALID_ARGUMENT = 2
NOT_SUPPORTED = 3
NO_PERMISSION = 4
NOT_FOUND = 6
INSUFFICIENT_SIZE = 7
DRIVER_NOT_LOADED = 9
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
LIB_RM_VERSION_MISMATCH = 18
FI_TOTAL_ENERGY = 83
FI_POWER_AVERAGE = 185
FI_POWER_INSTANT = 186
MIG_ENABLED = 1
NOT_AVAILABLE_U64 = (1 << 64) - 1
NO_INSTANCE = 0xFFFFFFFF
MPS_SERVER = "mps_server"  # Entry.kind of the MPS server once clients are listed

CANNOT_TELL = frozenset({NOT_SUPPORTED, FUNCTION_NOT_FOUND, INVALID_ARGUMENT})  # "this GPU/driver can't"
REINIT = frozenset({UNINITIALIZED, DRIVER_NOT_LOADED})
RETRIES = 3  # Insufficient Size: processes or samples appeared between the sizing and the fill call

# nvmlValueType_t -> member of the c_nvmlValue_t union
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")

Handle = object  # an opaque device handle (a ctypes pointer in pynvml)


class FieldValue(Protocol):
    fieldId: int  # noqa: N815 (NVML's names)
    nvmlReturn: int  # noqa: N815
    valueType: int  # noqa: N815
    value: object


class ProcessInfo(Protocol):
    pid: int
    usedGpuMemory: int | None  # noqa: N815


class ProcessSample(Protocol):
    pid: int
    timeStamp: int  # noqa: N815
    smUtil: int  # noqa: N815
    memUtil: int  # noqa: N815


class MemoryInfo(Protocol):
    total: int


class Utilization(Protocol):
    gpu: int


class DeviceAttributes(Protocol):
    gpuInstanceSliceCount: int  # noqa: N815
    computeInstanceSliceCount: int  # noqa: N815


ProcessList = Callable[[Handle], Sequence[ProcessInfo]]
CFunction = Callable[..., int]


class Nvml(Protocol):
    """The pynvml calls this source makes (the `pynvml` module of nvidia-ml-py satisfies it)."""

    NVMLError: type[Exception]
    c_nvmlProcessUtilizationSample_t: type[ctypes.Structure]  # noqa: N815

    def nvmlInit(self) -> None: ...  # noqa: N802 (NVML's names, here and below)
    def nvmlShutdown(self) -> None: ...  # noqa: N802
    def nvmlDeviceGetCount(self) -> int: ...  # noqa: N802
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Handle: ...  # noqa: N802
    def nvmlDeviceGetMemoryInfo(self, handle: Handle) -> MemoryInfo: ...  # noqa: N802
    def nvmlDeviceGetUUID(self, handle: Handle) -> str | bytes: ...  # noqa: N802
    def nvmlDeviceGetName(self, handle: Handle) -> str | bytes: ...  # noqa: N802
    def nvmlDeviceGetMigMode(self, handle: Handle) -> Sequence[int]: ...  # noqa: N802
    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Handle) -> int: ...  # noqa: N802
    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Handle, index: int) -> Handle: ...  # noqa: N802
    def nvmlDeviceGetAttributes(self, handle: Handle) -> DeviceAttributes: ...  # noqa: N802
    def nvmlDeviceGetGpuInstanceId(self, handle: Handle) -> int: ...  # noqa: N802
    def nvmlDeviceGetFieldValues(self, handle: Handle, fields: list[int]) -> Sequence[FieldValue]: ...  # noqa: N802
    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Handle) -> int: ...  # noqa: N802
    def nvmlDeviceGetPowerUsage(self, handle: Handle) -> int: ...  # noqa: N802
    def nvmlDeviceGetUtilizationRates(self, handle: Handle) -> Utilization: ...  # noqa: N802
    def nvmlDeviceGetProcessUtilization(self, handle: Handle, since: int) -> Sequence[ProcessSample]: ...  # noqa: N802
    def nvmlDeviceGetComputeRunningProcesses(self, handle: Handle) -> Sequence[ProcessInfo]: ...  # noqa: N802
    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Handle) -> Sequence[ProcessInfo]: ...  # noqa: N802
    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Handle) -> Sequence[ProcessInfo]: ...  # noqa: N802
    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle: Handle) -> Sequence[ProcessInfo]: ...  # noqa: N802
    def nvmlDeviceGetMPSComputeRunningProcesses(self, handle: Handle) -> Sequence[ProcessInfo]: ...  # noqa: N802
    def nvmlDeviceGetMPSComputeRunningProcesses_v2(self, handle: Handle) -> Sequence[ProcessInfo]: ...  # noqa: N802
    def _nvmlGetFunctionPointer(self, name: str) -> CFunction: ...  # noqa: N802


@dataclass
class Entry:
    """One process from a process list."""

    pid: int
    memory: int | None
    kind: str  # compute, graphics, mps (an MPS client), mps_server
    gpu_instance: int | None = None


@dataclass
class MigDevice:
    """One MIG device (a compute instance) of a board."""

    handle: Handle
    uuid: str
    gpu_instance: int
    slices: int  # of its GPU instance
    compute_slices: int  # of its compute instance (a GPU instance can hold several)


@dataclass
class Gpu:
    """What is cached about one GPU handle (dropped and fetched again when the GPU errs)."""

    handle: Handle
    uuid: str
    name: str
    memory_total: int | None
    fields: list[int] = field(default_factory=lambda: [FI_TOTAL_ENERGY, FI_POWER_AVERAGE, FI_POWER_INSTANT])
    field_values: bool = True
    energy_call: bool = False  # the counter through nvmlDeviceGetTotalEnergyConsumption
    energy_checked: bool = False
    power_usage: bool = True
    average: float | None = None  # the averaged power field of the last read, W
    utilization: bool = True
    process_util: bool = True
    sample_capacity: int = 16  # samples the one-call utilisation read has room for
    lists_unsupported: set[str] = field(default_factory=set)
    mig: list[MigDevice] | None = None  # None: not in MIG mode
    mig_slots: int = 0
    mig_at: float = 0.0  # monotonic time the MIG devices were read
    mig_error: str = ""


@dataclass
class Carried:
    sm: float
    mem: float
    at: float  # monotonic time of its newest sample


@dataclass
class GpuState:
    """What is kept per GPU UUID across reads, handle losses and errors."""

    last_seen_us: int = 0  # newest process-utilisation sample taken (NVML timestamp, wall clock µs)
    last_read_us: int = 0  # wall clock of the previous process-utilisation read
    carried: dict[int, Carried] = field(default_factory=dict)
    listed: list[Entry] = field(default_factory=list)
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


class Refused(Exception):
    """A process list NVML refused (no permission); carries the message for `last_errors`."""


def code(exc: BaseException) -> int | None:
    """The nvmlReturn_t of an NVMLError (its `value`), None for anything else."""
    value = getattr(exc, "value", None)  # pynvml's NVMLError carries it; other exceptions do not
    return value if isinstance(value, int) else None


def fatal_if_mismatch(exc: BaseException) -> None:
    """A library that no longer matches the loaded driver: pynvml never loads it again, so the exporter exits."""
    if code(exc) == LIB_RM_VERSION_MISMATCH:
        raise FatalSourceError(mismatch_message(exc)) from exc


def mismatch_message(exc: BaseException) -> str:
    return (
        f"NVML: {exc} The loaded NVIDIA kernel driver no longer matches the NVML library this process loaded "
        "(a driver upgrade without a reboot or module reload?). pynvml cannot load the library again: exiting so "
        "that the supervisor restarts the exporter."
    )


def text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def memory(value: int | None) -> int | None:
    if value is None:
        return None
    number = int(value)
    return None if number == NOT_AVAILABLE_U64 else number


def instance(info: ProcessInfo) -> int | None:
    gi = getattr(info, "gpuInstanceId", None)  # pynvml's v1 process info has none
    return None if gi is None or int(gi) == NO_INSTANCE else int(gi)


def field_number(value: FieldValue) -> float:
    """The number in a c_nvmlFieldValue_t, read from the union member its valueType names."""
    kind = int(value.valueType)
    member = _VALUE_MEMBERS[kind] if 0 <= kind < len(_VALUE_MEMBERS) else "uiVal"
    return float(getattr(value.value, member))  # the union member is named at run time
