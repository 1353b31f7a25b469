"""Every name one part of carbonwatch relies on another part for, in one place: the metric families the
exporter serves, those the run client pushes, the intensity collector's, the recorded series that the
report, `carbonwatch job`, the run summary, the dashboards and the alerts read, and the shared constants.

The collectors and the pusher build their families from these specs, docs/metrics.md is generated from them
(`make docs`), and tests check the rules record every series listed in RECORDED.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

COMPONENTS = ("gpu", "cpu", "memory")
JOULES_PER_KWH = 3.6e6
RUN_LABELS = ("user", "project", "model", "team")  # what a run's info series names besides run_id
# One schema for carbonwatch_run_info, whoever publishes it: the exporters (origin: how the run's processes were
# found; host and status "") and the run client (origin "client"; host and status its own).
RUN_INFO_LABELS = ("run_id", "origin", *RUN_LABELS, "host", "status")
ORIGIN_CLIENT = "client"
ORIGINS = ("env", "registration", "kubernetes", "slurm")  # the exporters' origins
PUSH_JOB = "carbonwatch_run"  # the Pushgateway job of the run client's groups (grouping key run_id)
EXPORTER_JOB = "carbonwatch"  # the scrape job of the node exporters


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

    def family(self) -> GaugeMetricFamily | CounterMetricFamily:
        """An empty prometheus-client family with this name, help and labels, for a collector to fill."""
        if self.type == "counter":
            return CounterMetricFamily(self.name, self.help, labels=list(self.labels))
        return GaugeMetricFamily(self.name, self.help, labels=list(self.labels))


SOURCES = ("`nvml_counter` (GPU total-energy counter), `nvml_power_average` / `nvml_power_instant` (GPU averaged or "
           "instant power integrated by the exporter), `rapl`, `model`")
SOURCE_NOTE = (
    "Device energy series carry it as a label; a run's energy names its weakest source per component in "
    "`carbonwatch_run_source_info`; process, container and unattributed energy are parts of the device energy "
    "of the same sample, whose sources the device series and `carbonwatch_node_info` (`cpu_source`, "
    "`memory_source`) name."
)

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
         "life, removed `process.run_linger` after its last process ended, once a scrape has served its final "
         "value.", "attribution"),
    Spec("carbonwatch_run_emissions_grams", "counter", ("run_id", "component"),
         "Emissions of a training run on this node, g CO2e: each sample's energy priced at the node zone's "
         "intensity at that sample (sum of dE x I(t)). Same life as the run's energy counter.",
         "attribution x `carbonwatch_node_intensity_grams_per_kwh`"),
    Spec("carbonwatch_run_info", "gauge", RUN_INFO_LABELS,
         "A run this node measures, value 1, with the labels the node knows (\"\" where unknown) and how its "
         "processes were found (`origin`: env, registration, kubernetes, slurm); host and status are the run "
         "client's (\"\" here).",
         "process environment, registrations, pod labels, SLURM"),
    Spec("carbonwatch_run_source_info", "gauge", ("run_id", "component", "source"),
         "Where a run's energy on this node came from, per component, value 1: the weakest source any of its "
         "samples had (one modelled or power-integrated sample makes the total so).", "the sources in use"),
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

# What the run client pushes to the Pushgateway (job carbonwatch_run, grouping key run_id).
PUSHED: tuple[Spec, ...] = (
    Spec("carbonwatch_run_info", "gauge", RUN_INFO_LABELS,
         "Training run metadata and status (running, succeeded, failed, stopped), origin \"client\"; value 1.",
         "the run client"),
    Spec("carbonwatch_run_start_time_seconds", "gauge", ("run_id",),
         "Run start (of its first segment when resumed), Unix time in seconds.", "the run client"),
    Spec("carbonwatch_run_end_time_seconds", "gauge", ("run_id",), "Run end, Unix time in seconds.",
         "the run client"),
    Spec("carbonwatch_run_segment", "gauge", ("run_id",),
         "Current segment of the run: 1, plus one per `--resume` / resume=True.", "the run client"),
    Spec("carbonwatch_run_segment_start_time_seconds", "gauge", ("run_id",),
         "Start of the run's current segment, Unix time in seconds.", "the run client"),
    Spec("carbonwatch_run_budget_grams", "gauge", ("run_id",), "Carbon budget of the run, grams CO2e.",
         "the run client"),
    Spec("carbonwatch_run_last_push_time_seconds", "gauge", ("run_id",),
         "Time of this push, Unix seconds (heartbeat).", "the run client"),
    Spec("carbonwatch_run_retention_seconds", "gauge", ("run_id",),
         "How long the finished run's group stays on the gateway before a sweep deletes it.", "the run client"),
    Spec("carbonwatch_run_expected_end_time_seconds", "gauge", ("run_id",),
         "Expected end of the run, Unix time in seconds.", "the run client"),
    Spec("carbonwatch_run_epoch", "gauge", ("run_id",), "Training epochs started, counted from 1.",
         "the run client"),
    Spec("carbonwatch_run_samples", "counter", ("run_id",), "Training samples processed by the run.",
         "the run client"),
    Spec("carbonwatch_run_phase_info", "gauge", ("run_id", "phase"),
         "Current phase of the run (train, eval, ...); value 1.", "the run client"),
    Spec("carbonwatch_run_metric", "gauge", ("run_id", "name"),
         "Training metric reported by the run (loss, accuracy, ...).", "the run client"),
)

# What the exporter's intensity collector serves (every zone the instance refreshes).
INTENSITY: tuple[Spec, ...] = (
    Spec("carbonwatch_grid_carbon_intensity_grams_per_kwh", "gauge", ("zone", "source"),
         "Carbon intensity of grid electricity in the zone, g CO2e per kWh, and where it came from.",
         "the intensity feed (table, a live provider, or a central instance)"),
    Spec("carbonwatch_electricity_price_per_kwh", "gauge", ("zone", "currency"),
         "Configured electricity price in the zone per kWh, in the currency of the label.", "config"),
    Spec("carbonwatch_intensity_refresh_success", "gauge", ("zone",),
         "1 if the last background refresh of the zone's intensity gave a live value, else 0 (the value served "
         "is then the last good one or the table, as `source` says).", "the intensity feed"),
    Spec("carbonwatch_intensity_last_success_timestamp_seconds", "gauge", ("zone",),
         "Wall-clock time of the zone's last successful intensity refresh.", "the intensity feed"),
    Spec("carbonwatch_intensity_refresh_failures", "counter", ("zone",),
         "Background intensity refreshes of the zone that failed.", "the intensity feed"),
    Spec("carbonwatch_intensity_refresh_duration_seconds", "gauge", (),
         "Time the last background refresh of every zone took.", "the intensity feed"),
)

# What `carbonwatch ledger serve` serves on /metrics (docs/ledger.md).
_RUN = ("run_id", "user", "project", "model", "team", "status")
LEDGER: tuple[Spec, ...] = (
    Spec("carbonwatch_ledger_run_energy_joules", "gauge", _RUN,
         "A run's energy, J, all nodes and components, for runs running or ended within --metrics.window.",
         "the ledger's buckets"),
    Spec("carbonwatch_ledger_run_emissions_grams", "gauge", _RUN, "A run's emissions, g CO2e, all nodes.",
         "the ledger's buckets"),
    Spec("carbonwatch_ledger_run_cost", "gauge", ("run_id", "currency"),
         "A run's electricity cost: each hour's energy at its zone's price.", "the ledger's buckets x price"),
    Spec("carbonwatch_ledger_run_budget_grams", "gauge", ("run_id",),
         "The run's carbon budget as last pushed (outlives the Pushgateway group).", "the run client"),
    Spec("carbonwatch_ledger_run_component_energy_joules", "gauge", ("run_id", "component"),
         "A run's energy per component, J, all nodes.", "the ledger's buckets"),
    Spec("carbonwatch_ledger_run_component_emissions_grams", "gauge", ("run_id", "component"),
         "A run's emissions per component, g CO2e, all nodes.", "the ledger's buckets"),
    Spec("carbonwatch_ledger_user_energy_joules", "gauge", ("user", "period"),
         "Energy per user, J, per period: day and month (calendar UTC so far), 1d and 30d (rolling, ending at the "
         "cursor); run energy.", "the ledger's buckets"),
    Spec("carbonwatch_ledger_user_emissions_grams", "gauge", ("user", "period"),
         "Emissions per user, g CO2e, per period (as the energy family).", "the ledger's buckets"),
    Spec("carbonwatch_ledger_project_energy_joules", "gauge", ("project", "period"),
         "Energy per project, J, per period: day and month (calendar UTC so far), 1d and 30d (rolling, ending at the "
         "cursor); run energy.", "the ledger's buckets"),
    Spec("carbonwatch_ledger_project_emissions_grams", "gauge", ("project", "period"),
         "Emissions per project, g CO2e, per period (as the energy family).", "the ledger's buckets"),
    Spec("carbonwatch_ledger_team_energy_joules", "gauge", ("team", "period"),
         "Energy per team, J, per period: day and month (calendar UTC so far), 1d and 30d (rolling, ending at the "
         "cursor); run energy.", "the ledger's buckets"),
    Spec("carbonwatch_ledger_team_emissions_grams", "gauge", ("team", "period"),
         "Emissions per team, g CO2e, per period (as the energy family).", "the ledger's buckets"),
    Spec("carbonwatch_ledger_model_energy_joules", "gauge", ("model", "period"),
         "Energy per model, J, per period: day and month (calendar UTC so far), 1d and 30d (rolling, ending at the "
         "cursor); run energy.", "the ledger's buckets"),
    Spec("carbonwatch_ledger_model_emissions_grams", "gauge", ("model", "period"),
         "Emissions per model, g CO2e, per period (as the energy family).", "the ledger's buckets"),
    Spec("carbonwatch_ledger_zone_energy_joules", "gauge", ("zone", "period"),
         "Energy per zone, J, per period: day and month (calendar UTC so far), 1d and 30d (rolling, ending at the "
         "cursor); all energy of the zone's nodes (node counters, idle included).", "the ledger's buckets"),
    Spec("carbonwatch_ledger_zone_emissions_grams", "gauge", ("zone", "period"),
         "Emissions per zone, g CO2e, per period (as the energy family).", "the ledger's buckets"),
    Spec("carbonwatch_ledger_synced_until_timestamp_seconds", "gauge", (),
         "The cursor: every raw sample up to it is in the database.", "the ledger"),
    Spec("carbonwatch_ledger_last_sync_timestamp_seconds", "gauge", (),
         "Wall-clock time of the last successful sync.", "the ledger"),
    Spec("carbonwatch_ledger_sync_lag_seconds", "gauge", (), "Now minus the cursor.", "the ledger"),
    Spec("carbonwatch_ledger_sync_duration_seconds", "gauge", (), "Time the last successful sync took.",
         "the ledger"),
    Spec("carbonwatch_ledger_sync_errors", "counter", (),
         "Syncs that failed (server unreachable or answering garbage, database errors); each is retried and "
         "nothing is lost.", "the ledger"),
    Spec("carbonwatch_ledger_rows", "gauge", ("table",), "Rows per table of the ledger's database.", "the ledger"),
    Spec("carbonwatch_ledger_info", "gauge", ("database", "version"),
         "The ledger's database kind (sqlite, postgresql) and carbonwatch version, value 1.", "the ledger"),
    Spec("carbonwatch_ledger_schema_version", "gauge", (), "The database's schema version.", "the ledger"),
    Spec("carbonwatch_ledger_counter_resets", "counter", ("instance",),
         "Times an exporter's run or node counter went down (started again from 0); what it held before stays "
         "counted.", "the ledger's resets log"),
    Spec("carbonwatch_ledger_counter_reset_timestamp_seconds", "gauge", ("instance",),
         "Sample time of the instance's latest counter reset.", "the ledger's resets log"),
    Spec("carbonwatch_ledger_estimated_joules", "gauge", ("instance",),
         "Energy spread linearly over scrape gaps (longer than max(2 x scrape interval, 60 s)), J.",
         "the ledger's buckets"),
)

# Recorded series (prometheus/rules/) that code outside the rules reads: report, job, run summary, demo.
RECORDED: tuple[str, ...] = (
    "run_id:carbonwatch_energy_joules:total",
    "run_id:carbonwatch_emissions_grams:total",
    "run_id_component:carbonwatch_energy_joules:total",
    "run_id_component:carbonwatch_emissions_grams:total",
    "run_id:carbonwatch_cost:total",
    "run_id:carbonwatch_run_info:last",
    "run_id:carbonwatch_power_watts:sum",
    "run_id:carbonwatch_emissions_grams:forecast",
    "run_id:carbonwatch_grams_per_epoch:ratio",
)

BY_NAME = {s.name: s for s in SPECS}
PUSHED_BY_NAME = {s.name: s for s in PUSHED}
INTENSITY_BY_NAME = {s.name: s for s in INTENSITY}
LEDGER_BY_NAME = {s.name: s for s in LEDGER}


def markdown() -> str:
    lines = [
        "# Metrics",
        "",
        "Generated from `exporter/carbonwatch/contracts.py` (`make docs`); do not edit by hand.",
        "",
        f"Every energy figure says where it came from (`source`): {SOURCES}. {SOURCE_NOTE} `component` is "
        "`gpu`, `cpu` or `memory`. Units are base units (watts, joules, seconds, ratios 0..1). No series carries a "
        "host label: the scrape adds `instance`.",
        "",
        "| metric | type | labels | meaning | source |",
        "|---|---|---|---|---|",
    ]
    lines += _table(SPECS)
    lines += ["", "## The intensity collector", "",
              "Every instance serves its own zone; one configured with a live provider and `intensity.zones` serves "
              "them all to Prometheus and, on `/intensity`, to the other nodes (docs/rules.md).", "",
              "| metric | type | labels | meaning | source |", "|---|---|---|---|---|"]
    lines += _table(INTENSITY)
    lines += ["", "## The run client (Pushgateway, job `carbonwatch_run`, grouping key `run_id`)", "",
              "| metric | type | labels | meaning | source |", "|---|---|---|---|---|"]
    lines += _table(PUSHED)
    lines += ["", "## The ledger (`carbonwatch ledger serve`, docs/ledger.md)", "",
              "| metric | type | labels | meaning | source |", "|---|---|---|---|---|"]
    lines += _table(LEDGER)
    lines += ["", "## Recorded series other parts read", "",
              "Defined in `prometheus/rules/` (docs/rules.md); read by `carbonwatch report`, `carbonwatch job`, the "
              "run summary and the demo:", ""]
    lines += [f"- `{name}`" for name in RECORDED]
    lines.append("")
    return "\n".join(lines)



def _table(specs: tuple[Spec, ...]) -> list[str]:
    out = []
    for s in specs:
        labels = ", ".join(f"`{label}`" for label in s.labels) or "-"
        out.append(f"| `{s.exposed_name}` | {s.type} | {labels} | {s.help} | {s.source} |")
    return out
