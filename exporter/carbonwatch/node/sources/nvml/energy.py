"""A GPU's energy and its gauges. Per GPU and per sample, one `nvmlDeviceGetFieldValues` call carries the
total-energy counter (mJ since the driver was loaded), the 1 s averaged power and the instant power; the energy
comes from the best of them (`GpuReading.energy_source`):

* `nvml_counter`: the counter (Volta and newer). Where the driver does not serve it as a field, the dedicated
  `nvmlDeviceGetTotalEnergyConsumption` (3.4 ms) is used instead; on the first read of each GPU both are read
  once and compared, and a field that disagrees with the dedicated call is not used. Reading the counter is
  the slow part either way (3.3 ms of CPU a read on an H200 with driver 580, where the power fields alone
  cost 0.08 ms), so it is read every `counter_seconds`; the reads in between ask for the power fields only and
  carry the counter forward by the averaged power (trapezoid). Each real read resets the carried value to the
  counter (never backwards: an estimate ahead of the counter is held until the counter passes it; a counter
  below its previous real read is a driver reload and passes through, and what was carried since the last
  real read is then counted again: at most one interval), so totals are the counter's at every real read and
  off by at most one interval's estimate in between. Nothing is carried across a failed read or a new NVML
  session: the next read is of the counter itself.
* `nvml_power_average`: no counter, the 1 s averaged power field (integrated by the sampler).
* `nvml_power_instant`: neither, the instant power field, else `nvmlDeviceGetPowerUsage` (3.5 ms).

Gauge-only reads are taken less often: `nvmlDeviceGetUtilizationRates` (2.1 ms) every `gauge_seconds`, its
last value carried in between.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from carbonwatch.node.sources.nvml.base import (
    CANNOT_TELL,
    ENERGY_COUNTER,
    FI_POWER_AVERAGE,
    FI_POWER_INSTANT,
    FI_TOTAL_ENERGY,
    NO_PERMISSION,
    POWER_AVERAGE,
    POWER_INSTANT,
    SUCCESS,
    FieldValue,
    Gpu,
    GpuState,
    Nvml,
    code,
    fatal_if_mismatch,
    field_number,
)

log = logging.getLogger("carbonwatch.nvml")

Energy = tuple[float | None, float | None, str]  # (counter in J, power in W, energy source)


class EnergyReader:
    """The counter, carried by the averaged power between its reads, or the best power figure."""

    def __init__(self, nvml: Nvml, counter_seconds: float) -> None:
        self.nvml = nvml
        self.counter_seconds = counter_seconds

    def read(self, gpu: Gpu, state: GpuState, now: float) -> Energy:
        """The counter read every `counter_seconds` and carried forward by the averaged power in between
        (where the GPU has that field)."""
        cheap = gpu.field_values and FI_POWER_AVERAGE in gpu.fields
        due = (not cheap or state.real is None or state.reported is None
               or now - state.real[1] >= self.counter_seconds - 1e-6)  # fmt: skip
        if not due and state.real is not None and state.reported is not None:
            self.fields(gpu, with_counter=False)  # the power fields only
            average = gpu.average
            if average is not None and state.power is not None:
                state.carried_joules += max(now - state.power[1], 0.0) * (average + state.power[0]) / 2.0
                state.power = (average, now)
                state.reported = max(state.reported, state.real[0] + state.carried_joules)
                return state.reported, average, ENERGY_COUNTER
            # the averaged power went missing: read the counter now
        energy, watts, source = self.fields(gpu)
        if energy is None or source != ENERGY_COUNTER:
            state.real = state.reported = state.power = None
            return energy, watts, source
        reported = energy
        if state.real is not None and state.reported is not None and energy >= state.real[0]:
            reported = max(energy, state.reported)  # an estimate ahead of the counter is held, never taken back
        # (a counter below its previous read is a driver reload: it passes through, for the sampler to see)
        state.real, state.carried_joules, state.reported = (energy, now), 0.0, reported
        state.power = (gpu.average, now) if gpu.average is not None else None
        return reported, watts, source

    def fields(self, gpu: Gpu, with_counter: bool = True) -> Energy:
        """From one field-values call where the driver has one; `with_counter=False` asks for the power
        fields only."""
        nvml = self.nvml
        got: dict[int, float] = {}
        gpu.average = None
        wanted = gpu.fields if with_counter else [f for f in gpu.fields if f != FI_TOTAL_ENERGY]
        if gpu.field_values and wanted:
            try:
                values = nvml.nvmlDeviceGetFieldValues(gpu.handle, list(wanted))
            except nvml.NVMLError as exc:
                if code(exc) not in CANNOT_TELL:
                    raise
                gpu.field_values = False
                if FI_TOTAL_ENERGY in gpu.fields:
                    gpu.energy_call = True
            else:
                got = self._field_results(gpu, values)
        energy = got.get(FI_TOTAL_ENERGY)
        if energy is not None and not gpu.energy_checked:
            energy = self._check_energy_field(gpu, energy, got)
        if energy is None and gpu.energy_call and with_counter:
            energy = self._energy_call(gpu)
        average, instant = got.get(FI_POWER_AVERAGE), got.get(FI_POWER_INSTANT)
        gpu.average = average
        if energy is not None:
            return energy, average if average is not None else instant, ENERGY_COUNTER
        if average is not None:
            return None, average, POWER_AVERAGE
        if instant is None and gpu.power_usage:
            instant = self._power_usage(gpu)
        return None, instant, POWER_INSTANT

    def _power_usage(self, gpu: Gpu) -> float | None:
        try:
            return int(self.nvml.nvmlDeviceGetPowerUsage(gpu.handle)) / 1000.0
        except self.nvml.NVMLError as exc:
            if code(exc) in CANNOT_TELL:
                gpu.power_usage = False
            elif code(exc) != NO_PERMISSION:
                raise
            return None

    def _field_results(self, gpu: Gpu, values: Sequence[FieldValue]) -> dict[int, float]:
        got: dict[int, float] = {}
        for v in values:
            fid, ret = int(v.fieldId), int(v.nvmlReturn)
            if ret == SUCCESS:
                got[fid] = field_number(v) / 1000.0  # mJ -> J, mW -> W
            elif ret in CANNOT_TELL:
                gpu.fields = [f for f in gpu.fields if f != fid]  # never asked again
                if fid == FI_TOTAL_ENERGY:
                    gpu.energy_call = True  # try the dedicated call
            elif ret != NO_PERMISSION:
                raise self.nvml.NVMLError(ret)
        return got

    def _check_energy_field(self, gpu: Gpu, energy: float, got: dict[int, float]) -> float | None:
        """First read of a GPU: the energy field against the dedicated call, read right after it. They may
        differ by the ticks in between (100 ms each); more than 0.5 s of the board's power, or 1 J, and the
        field is not trusted."""
        gpu.energy_checked = True
        try:
            direct = int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)) / 1000.0
        except self.nvml.NVMLError as exc:
            if code(exc) in CANNOT_TELL or code(exc) == NO_PERMISSION:
                return energy
            raise
        watts = got.get(FI_POWER_AVERAGE) or got.get(FI_POWER_INSTANT) or 0.0
        if abs(direct - energy) <= max(1.0, 0.5 * watts):
            return energy
        log.warning(
            "GPU %s: the energy field reads %.3f J but nvmlDeviceGetTotalEnergyConsumption %.3f J: "
            "using the dedicated call (3.4 ms a read instead of none)", gpu.uuid, energy, direct,
        )
        gpu.fields = [f for f in gpu.fields if f != FI_TOTAL_ENERGY]
        gpu.energy_call = True
        return direct

    def _energy_call(self, gpu: Gpu) -> float | None:
        try:
            return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)) / 1000.0
        except self.nvml.NVMLError as exc:
            if code(exc) in CANNOT_TELL:
                gpu.energy_call = False  # pre-Volta: no counter at all
                return None
            if code(exc) == NO_PERMISSION:
                return None
            raise


class UtilizationGauge:
    """`nvmlDeviceGetUtilizationRates` every `gauge_seconds`, the last value carried in between."""

    def __init__(self, nvml: Nvml, gauge_seconds: float) -> None:
        self.nvml = nvml
        self.gauge_seconds = gauge_seconds

    def read(self, gpu: Gpu, state: GpuState, now: float, who: str, errors: list[str]) -> float | None:
        if not gpu.utilization:
            return None
        if state.util_at is not None and now - state.util_at < self.gauge_seconds:
            return state.util
        state.util_at = now
        try:
            rates = self.nvml.nvmlDeviceGetUtilizationRates(gpu.handle)
        except self.nvml.NVMLError as exc:
            fatal_if_mismatch(exc)
            if code(exc) in CANNOT_TELL:
                gpu.utilization = False
                state.util = None
            elif code(exc) != NO_PERMISSION:
                errors.append(f"{who}: utilization: {exc}")
            return state.util
        state.util = min(max(int(rates.gpu) / 100.0, 0.0), 1.0)
        return state.util
