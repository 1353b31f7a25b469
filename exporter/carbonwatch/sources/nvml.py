"""NVIDIA GPUs through NVML (the `pynvml` module of nvidia-ml-py, or any module with the same API).

What is read, per GPU, on every `read()`:

* energy: `nvmlDeviceGetTotalEnergyConsumption` (mJ since the driver was loaded; Volta and newer). This is
  the truth where it exists: it is integrated by the GPU itself and updates every 100 ms. The raw counter
  is reported; the sampler works on deltas and absorbs resets (driver reload).
* power: `nvmlDeviceGetFieldValues` with `NVML_FI_DEV_POWER_AVERAGE` (1 s average, Ampere and newer except
  GA100), else `NVML_FI_DEV_POWER_INSTANT`, else `nvmlDeviceGetPowerUsage`. One field-values call costs
  about 0.12 ms on an H100 against 3.5 ms for `nvmlDeviceGetPowerUsage`, so the latter is only a fallback.
  GPUs without an energy counter are integrated from this power by the sampler (`source="nvml_power"`).
* utilisation: `nvmlDeviceGetUtilizationRates().gpu / 100`.
* processes: compute and graphics running processes (pid, used memory), merged with
  `nvmlDeviceGetProcessUtilization` since the last sample seen on that GPU (SM and memory utilisation).
  NVML returns a sample only for processes with non-zero utilisation, so a listed process without a sample
  gets 0; when the GPU does not support per-process utilisation the figures are None (unknown).

Handles, UUIDs, names and what each GPU supports are cached, so a steady-state read of one GPU is five or
six cheap NVML calls.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from carbonwatch.model import GpuProcessUse, GpuReading, SourceError

# nvmlReturn_t and field ids, as in nvml.h (stable across driver and pynvml versions).
_NVML_SUCCESS = 0
_NVML_ERROR_UNINITIALIZED = 1
_NVML_ERROR_INVALID_ARGUMENT = 2
_NVML_ERROR_NOT_SUPPORTED = 3
_NVML_ERROR_NO_PERMISSION = 4
_NVML_ERROR_NOT_FOUND = 6
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_LIBRARY_NOT_FOUND = 12
_NVML_ERROR_FUNCTION_NOT_FOUND = 13
_NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
_NVML_FI_DEV_POWER_AVERAGE = 185
_NVML_FI_DEV_POWER_INSTANT = 186

# Errors after which the NVML session itself is unusable: shut down and initialise again on the next read.
_REINIT_ERRORS = frozenset(
    {_NVML_ERROR_UNINITIALIZED, _NVML_ERROR_DRIVER_NOT_LOADED, _NVML_ERROR_LIB_RM_VERSION_MISMATCH}
)

# nvmlValueType_t -> member of the c_nvmlValue_t union
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")

_POWER_FIELDS = "fields"
_POWER_USAGE = "usage"
_POWER_NONE = "none"


@dataclass
class _Gpu:
    """What is cached about one GPU between reads."""

    handle: Any
    uuid: str
    name: str
    has_energy: bool = True
    power_method: str = _POWER_FIELDS
    has_process_util: bool = True
    has_utilization: bool = True
    last_seen_us: int = 0  # timestamp of the newest process-utilisation sample seen
    unsupported_process_lists: set[str] = field(default_factory=set)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlSource:
    """Reads every GPU NVML can see. `nvml` is a pynvml-compatible module (tests inject a fake);
    None imports `pynvml` on the first read."""

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml = nvml
        self._initialized = False
        self._gpus: dict[int, _Gpu] = {}
        self.last_errors: list[str] = []  # one message per GPU left out of the last read

    # -- module and session ------------------------------------------------------------------

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise SourceError(
                    "NVML unavailable: the pynvml module (package nvidia-ml-py) is not installed"
                ) from exc
        return self._nvml

    def _const(self, name: str, default: int) -> int:
        return int(getattr(self._module(), name, default))

    def _ensure_init(self) -> Any:
        nvml = self._module()
        if self._initialized:
            return nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            hint = ""
            if getattr(exc, "value", None) in (_NVML_ERROR_LIBRARY_NOT_FOUND, _NVML_ERROR_DRIVER_NOT_LOADED):
                hint = " (no NVIDIA driver on this node?)"
            raise SourceError(f"NVML initialisation failed: {exc}{hint}") from exc
        self._initialized = True
        self._gpus.clear()
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

    # -- reading -------------------------------------------------------------------------------

    def read(self) -> list[GpuReading]:
        """One reading per GPU that answered. GPUs that failed are left out and described in
        `last_errors`. Raises SourceError when NVML itself is missing or unusable."""
        nvml = self._ensure_init()
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            self._drop_session()
            raise SourceError(f"NVML could not count the GPUs: {exc}") from exc
        for index in [i for i in self._gpus if i >= count]:
            del self._gpus[index]

        readings: list[GpuReading] = []
        errors: list[str] = []
        reinit = False
        for index in range(count):
            try:
                readings.append(self._read_gpu(nvml, index))
            except nvml.NVMLError as exc:
                cached = self._gpus.pop(index, None)
                who = f"GPU {index}" + (f" ({cached.uuid})" if cached else "")
                errors.append(f"{who}: {exc}")
                if getattr(exc, "value", None) in _REINIT_ERRORS:
                    reinit = True
        self.last_errors = errors
        if reinit:
            self._drop_session()
        return readings

    def _gpu(self, nvml: Any, index: int) -> _Gpu:
        gpu = self._gpus.get(index)
        if gpu is None:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu = _Gpu(handle, _text(nvml.nvmlDeviceGetUUID(handle)), _text(nvml.nvmlDeviceGetName(handle)))
            self._gpus[index] = gpu
        return gpu

    def _read_gpu(self, nvml: Any, index: int) -> GpuReading:
        gpu = self._gpu(nvml, index)
        return GpuReading(
            index=index,
            uuid=gpu.uuid,
            name=gpu.name,
            power_watts=self._power(nvml, gpu),
            energy_joules=self._energy(nvml, gpu),
            utilization_ratio=self._utilization(nvml, gpu),
            processes=self._processes(nvml, gpu),
        )

    def _unsupported(self, exc: Exception) -> bool:
        """An answer meaning 'this GPU cannot tell you that' (as opposed to 'this GPU is broken')."""
        return getattr(exc, "value", None) in (_NVML_ERROR_NOT_SUPPORTED, _NVML_ERROR_FUNCTION_NOT_FOUND)

    def _no_permission(self, exc: Exception) -> bool:
        return getattr(exc, "value", None) == _NVML_ERROR_NO_PERMISSION

    def _energy(self, nvml: Any, gpu: _Gpu) -> float | None:
        if not gpu.has_energy:
            return None
        try:
            millijoules = nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)
        except nvml.NVMLError as exc:
            if self._unsupported(exc):
                gpu.has_energy = False  # pre-Volta: the sampler integrates power instead
                return None
            if self._no_permission(exc):
                return None
            raise
        return int(millijoules) / 1000.0

    def _power(self, nvml: Any, gpu: _Gpu) -> float | None:
        if gpu.power_method == _POWER_FIELDS:
            watts = self._power_from_fields(nvml, gpu)
            if watts is not None:
                return watts
        if gpu.power_method == _POWER_USAGE:
            try:
                return int(nvml.nvmlDeviceGetPowerUsage(gpu.handle)) / 1000.0
            except nvml.NVMLError as exc:
                if self._unsupported(exc):
                    gpu.power_method = _POWER_NONE
                    return None
                if self._no_permission(exc):
                    return None
                raise
        return None

    def _power_from_fields(self, nvml: Any, gpu: _Gpu) -> float | None:
        """Averaged power, else instant power, in one call. Switches the GPU to nvmlDeviceGetPowerUsage
        (and reads it) when the driver knows neither field."""
        average = self._const("NVML_FI_DEV_POWER_AVERAGE", _NVML_FI_DEV_POWER_AVERAGE)
        instant = self._const("NVML_FI_DEV_POWER_INSTANT", _NVML_FI_DEV_POWER_INSTANT)
        try:
            values = nvml.nvmlDeviceGetFieldValues(gpu.handle, [average, instant])
        except nvml.NVMLError as exc:
            if not (self._unsupported(exc) or getattr(exc, "value", None) == _NVML_ERROR_INVALID_ARGUMENT):
                raise
            gpu.power_method = _POWER_USAGE
            return None
        by_field: dict[int, Any] = {int(v.fieldId): v for v in values}
        failures: list[int] = []
        for field_id in (average, instant):
            value = by_field.get(field_id)
            if value is None:
                continue
            ret = int(value.nvmlReturn)
            if ret == _NVML_SUCCESS:
                return _field_number(value) / 1000.0  # milliwatts
            failures.append(ret)
        benign = {
            _NVML_ERROR_NOT_SUPPORTED,
            _NVML_ERROR_INVALID_ARGUMENT,
            _NVML_ERROR_FUNCTION_NOT_FOUND,
            _NVML_ERROR_NO_PERMISSION,
        }
        broken = [ret for ret in failures if ret not in benign]
        if broken:
            raise nvml.NVMLError(broken[0])
        gpu.power_method = _POWER_USAGE
        return None

    def _utilization(self, nvml: Any, gpu: _Gpu) -> float | None:
        if not gpu.has_utilization:
            return None
        try:
            rates = nvml.nvmlDeviceGetUtilizationRates(gpu.handle)
        except nvml.NVMLError as exc:
            if self._unsupported(exc):
                gpu.has_utilization = False
                return None
            if self._no_permission(exc):
                return None
            raise
        return min(max(int(rates.gpu) / 100.0, 0.0), 1.0)

    def _processes(self, nvml: Any, gpu: _Gpu) -> tuple[GpuProcessUse, ...]:
        memory: dict[int, int | None] = {}
        for fn_name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            if fn_name in gpu.unsupported_process_lists:
                continue
            try:
                infos = getattr(nvml, fn_name)(gpu.handle)
            except nvml.NVMLError as exc:
                if self._unsupported(exc):
                    gpu.unsupported_process_lists.add(fn_name)
                    continue
                if self._no_permission(exc):
                    continue
                raise
            for info in infos:
                pid = int(info.pid)
                used = info.usedGpuMemory
                used_bytes = int(used) if used is not None else None
                previous = memory.get(pid)
                if previous is None or (used_bytes is not None and used_bytes > previous):
                    memory[pid] = used_bytes  # listed as compute and graphics: keep the larger figure

        samples = self._process_samples(nvml, gpu)
        if samples is None:  # per-process utilisation unknown on this GPU
            return tuple(GpuProcessUse(pid, None, None, memory[pid]) for pid in sorted(memory))
        # A process that used the GPU in the window but has already left the lists still gets its share.
        return tuple(
            GpuProcessUse(pid, *samples.get(pid, (0.0, 0.0)), memory.get(pid))
            for pid in sorted(set(memory) | set(samples))
        )

    def _process_samples(self, nvml: Any, gpu: _Gpu) -> dict[int, tuple[float, float]] | None:
        """pid -> (SM %, memory %) averaged over the samples newer than the last one seen; None when
        this GPU cannot tell."""
        if not gpu.has_process_util:
            return None
        try:
            raw = nvml.nvmlDeviceGetProcessUtilization(gpu.handle, gpu.last_seen_us)
        except nvml.NVMLError as exc:
            value = getattr(exc, "value", None)
            # NOT_FOUND: no new samples. pynvml raises NVMLError(SUCCESS) when the sizing call finds none.
            if value in (_NVML_ERROR_NOT_FOUND, _NVML_SUCCESS):
                return {}
            if self._unsupported(exc):
                gpu.has_process_util = False
                return None
            if self._no_permission(exc):
                return None
            raise
        sums: dict[int, list[float]] = {}
        for sample in raw:
            pid = int(sample.pid)
            acc = sums.setdefault(pid, [0.0, 0.0, 0.0])
            acc[0] += float(sample.smUtil)
            acc[1] += float(sample.memUtil)
            acc[2] += 1.0
            gpu.last_seen_us = max(gpu.last_seen_us, int(sample.timeStamp))
        return {pid: (acc[0] / acc[2], acc[1] / acc[2]) for pid, acc in sums.items()}


def _field_number(value: Any) -> float:
    """The number in a c_nvmlFieldValue_t, read from the union member its valueType names."""
    kind = int(value.valueType)
    member = _VALUE_MEMBERS[kind] if 0 <= kind < len(_VALUE_MEMBERS) else "uiVal"
    return float(getattr(value.value, member))
