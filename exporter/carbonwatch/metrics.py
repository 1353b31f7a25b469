"""The one list of metric families the exporter serves. The collector builds families from it and
docs/metrics.md is generated from it (`python -m carbonwatch.metrics > docs/metrics.md`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    name: str  # without the `_total` suffix for counters (prometheus-client adds it)
    type: str  # gauge | counter | info
    labels: tuple[str, ...]
    help: str
    source: str  # where the number comes from, for the docs

    @property
    def exposed_name(self) -> str:
        return self.name + "_total" if self.type == "counter" else self.name


SOURCES = ("`nvml_counter` (GPU total-energy counter), `nvml_power_average` / `nvml_power_instant` (GPU averaged or "
           "instant power integrated by the exporter), `rapl`, `model`")

SPECS: tuple[Spec, ...] = (
    Spec("carbonwatch_node_info", "gauge",
         ("zone", "cpu_model", "hostname", "gpus", "cpu_source", "memory_source", "version"),
         "Node metadata, value 1: grid zone, CPU model and where CPU and memory numbers come from.",
         "config (`zone`), /proc/cpuinfo, the sources in use"),
    Spec("carbonwatch_gpu_info", "gauge", ("gpu", "uuid", "name"), "GPU metadata, value 1.", "NVML"),
    Spec("carbonwatch_gpu_power_watts", "gauge", ("gpu", "uuid"),
         "GPU power draw (NVML averaged power field, else instant power).", "NVML field values"),
    Spec("carbonwatch_gpu_energy_joules", "counter", ("gpu", "uuid", "source"),
         "GPU energy measured by the exporter; durable across restarts (`storage.path`).",
         "`nvml_counter`: total-energy counter (Volta+); `nvml_power_average` / `nvml_power_instant`: the averaged "
         "or instant power field integrated (trapezoid) where there is no counter"),
    Spec("carbonwatch_gpu_utilization_ratio", "gauge", ("gpu", "uuid"),
         "GPU utilisation (fraction of time a kernel ran), 0..1.", "NVML utilization rates"),
    Spec("carbonwatch_cpu_power_watts", "gauge", ("package", "source"),
         "CPU package power over the last sample interval (`package=\"all\"` for the model estimate).",
         "`rapl` package zones, else `model` (TDP table x utilisation from /proc/stat)"),
    Spec("carbonwatch_cpu_energy_joules", "counter", ("package", "source"),
         "CPU package energy measured by the exporter; durable across restarts.", "`rapl` or `model`"),
    Spec("carbonwatch_memory_power_watts", "gauge", ("source",),
         "Memory (DRAM) power over the last sample interval.", "`rapl` dram zones, else `model` (W/GB installed)"),
    Spec("carbonwatch_memory_energy_joules", "counter", ("source",),
         "Memory (DRAM) energy measured by the exporter; durable across restarts.", "`rapl` or `model`"),
    Spec("carbonwatch_process_power_watts", "gauge", ("pid", "comm", "run_id", "component"),
         "Power attributed to a process over the last sample (`pid=\"other\"` folds processes outside runs "
         "and the top N).", "attribution of the component's device energy (docs/attribution.md)"),
    Spec("carbonwatch_process_energy_joules", "counter", ("pid", "comm", "run_id", "component"),
         "Energy attributed to a process since the exporter first saw it.", "attribution"),
    Spec("carbonwatch_run_power_watts", "gauge", ("run_id", "component"),
         "Power of a training run on this node: the sum of its processes.", "attribution"),
    Spec("carbonwatch_run_energy_joules", "counter", ("run_id", "component"),
         "Energy of a training run on this node since its first process was seen; monotonic for the run's "
         "life, removed `process.run_linger` after its last process ended.", "attribution"),
    Spec("carbonwatch_run_emissions_grams", "counter", ("run_id", "component"),
         "Emissions of a training run on this node, g CO2e: each sample's energy priced at the node zone's "
         "intensity at that sample (sum of dE x I(t)). Same life as the run's energy counter.",
         "attribution x `carbonwatch_node_intensity_grams_per_kwh`"),
    Spec("carbonwatch_run_info", "gauge", ("run_id", "origin", "user", "project", "model", "team"),
         "A run this node measures, value 1, with the labels the node knows (\"\" where unknown) and how its "
         "processes were found (`origin`: env, registration, parent, kubernetes, slurm).",
         "process environment, registrations, pod labels, SLURM"),
    Spec("carbonwatch_container_energy_joules", "counter", ("namespace", "pod", "container", "component"),
         "Energy of a Kubernetes container's processes on this node since first seen; removed "
         "`process.run_linger` after its last process ended.", "attribution"),
    Spec("carbonwatch_container_emissions_grams", "counter", ("namespace", "pod", "container", "component"),
         "Emissions of a Kubernetes container's processes on this node, g CO2e (sum of dE x I(t)).",
         "attribution x intensity"),
    Spec("carbonwatch_energy_joules", "counter", ("component",),
         "All energy of the node per component (attributed and unattributed), J; durable across restarts.",
         "the device counters"),
    Spec("carbonwatch_emissions_grams", "counter", ("component",),
         "All emissions of the node per component, g CO2e: each sample's energy at that sample's intensity.",
         "the device counters x `carbonwatch_node_intensity_grams_per_kwh`"),
    Spec("carbonwatch_node_intensity_grams_per_kwh", "gauge", ("zone", "source"),
         "Grid carbon intensity this node prices its energy at now, g CO2e/kWh, and where it came from "
         "(`feed:<upstream>` from a central instance, a provider name, `last:<source>` when the refresh fails, "
         "`table:...` or `default:...`).", "the intensity feed (docs/rules.md)"),
    Spec("carbonwatch_state_restore_status", "gauge", ("status",),
         "How the durable counters were restored at start, value 1: restored, missing (first start), corrupt "
         "or unreadable (counters started again from 0).", "`storage.path`"),
    Spec("carbonwatch_state_write_failures", "counter", (),
         "State file writes that failed (the counters keep counting in memory).", "`storage.path`"),
    Spec("carbonwatch_state_last_write_timestamp_seconds", "gauge", (),
         "Wall-clock time of the last successful state file write.", "`storage.path`"),
    Spec("carbonwatch_label_rejections", "counter", ("source", "label", "reason"),
         "Label values the node refused (control characters, invalid UTF-8, quotes, over 128 characters) from "
         "process environments, registrations, pod labels or SLURM, by where they came from and why.",
         "the identity resolver"),
    Spec("carbonwatch_kubelet_pods", "gauge", (),
         "Pods in the kubelet's pod list at the last refresh (Kubernetes mode only).", "the kubelet's /pods"),
    Spec("carbonwatch_kubelet_refresh_errors", "counter", (),
         "Background refreshes of the kubelet's pod list that failed.", "the kubelet's /pods"),
    Spec("carbonwatch_kubelet_last_success_timestamp_seconds", "gauge", (),
         "Wall-clock time of the last successful refresh of the kubelet's pod list.", "the kubelet's /pods"),
    Spec("carbonwatch_unattributed_power_watts", "gauge", ("component",),
         "Device power no process took in the last sample (idle, kernel, processes that ended).", "attribution"),
    Spec("carbonwatch_unattributed_energy_joules", "counter", ("component",),
         "Device energy no process took; durable across restarts.", "attribution"),
    Spec("carbonwatch_collector_success", "gauge", ("collector",),
         "1 if the collector's last read succeeded, else 0 (`rapl` appears only where a powercap tree exists).",
         "the exporter"),
    Spec("carbonwatch_collector_info", "gauge", ("collector", "status", "reason"),
         "Why a collector reports what it does, value 1: status ok, absent (nothing to measure on this node, "
         "e.g. no GPU: not a failure), failed or disabled, with the reason.", "the exporter"),
    Spec("carbonwatch_collector_devices", "gauge", ("collector",),
         "Devices the collector read at the last sample (GPUs for `gpu`).", "the exporter"),
    Spec("carbonwatch_collector_duration_seconds", "gauge", ("collector",),
         "Time the collector's last read took.", "the exporter"),
    Spec("carbonwatch_sample_timestamp_seconds", "gauge", (),
         "Wall-clock time of the sample this scrape serves.", "the exporter"),
    Spec("carbonwatch_sample_interval_seconds", "gauge", (),
         "Configured sampling interval.", "config"),
    Spec("carbonwatch_process_environ_unreadable", "gauge", (),
         "Processes whose environment (CARBONWATCH_RUN_ID) the exporter may not read: without root, same "
         "uid or CAP_SYS_PTRACE they join runs only through their parent or a registration.", "/proc"),
)

BY_NAME = {s.name: s for s in SPECS}


def markdown() -> str:
    lines = [
        "# Metrics",
        "",
        "Generated from `exporter/carbonwatch/metrics.py` (`make docs`); do not edit by hand.",
        "",
        f"Every energy series says where it came from in `source`: {SOURCES}. `component` is `gpu`, `cpu` or "
        "`memory`. Units are base units (watts, joules, seconds, ratios 0..1). No series carries a host label: "
        "the scrape adds `instance`.",
        "",
        "| metric | type | labels | meaning | source |",
        "|---|---|---|---|---|",
    ]
    for s in SPECS:
        labels = ", ".join(f"`{label}`" for label in s.labels) or "-"
        lines.append(f"| `{s.exposed_name}` | {s.type} | {labels} | {s.help} | {s.source} |")
    lines += [
        "",
        "The intensity collector adds `carbonwatch_grid_carbon_intensity_grams_per_kwh{zone,source}` and "
        "`carbonwatch_electricity_price_per_kwh{zone,currency}` (see [rules.md](rules.md)).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
