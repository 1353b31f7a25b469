"""carbonwatch / Node and GPU: one node's per-GPU power, utilisation and energy, the per-process split and
the exporter's own health, all from the exporter's series."""

from __future__ import annotations

from carbonwatch.contracts import COMPONENTS, EXPORTER_JOB
from carbonwatch.dashboards.board import Board, Row, Var, board
from carbonwatch.dashboards.panels import (
    JOULE,
    NONE,
    RATIO,
    SECONDS,
    WATT,
    Cell,
    Q,
    bargauge_panel,
    stat_panel,
    table_panel,
    timeseries_panel,
)
from carbonwatch.dashboards.series import RUN_POWER

I = 'instance=~"$instance"'  # noqa: E741 (a selector, not a number)
IG = f'{I},gpu=~"$gpu"'


def gpu(cell: Cell) -> Cell:
    cell.gpu_only = True
    return cell


def sources() -> str:
    return " or ".join(f"label_replace(count by (instance, source) (carbonwatch_{c}_energy_joules_total{{{I}}}), "
                       f'"component", "{c}", "", "")' for c in COMPONENTS)


def node_row() -> Row:
    return Row("Node", [
        table_panel("Node", NONE, "Zone, CPU model, GPU count and the source of CPU and memory figures.",
                    Q(f"carbonwatch_node_info{{{I}}}", instant=True, table=True), w=24, h=4),
        table_panel("Source of each number", NONE, "Where each component's energy comes from: nvml_counter, "
                    "nvml_power_average, nvml_power_instant, rapl or model.",
                    Q(sources(), instant=True, table=True), h=6),
        table_panel("Collector health", NONE, "1 when the collector's last read succeeded, 0 when it failed "
                    "(the scrape succeeds).", Q(f"carbonwatch_collector_success{{{I}}}", instant=True, table=True),
                    h=6),
    ])


def gpu_row() -> Row:
    who = "{{instance}} gpu {{gpu}}"
    return Row("GPUs", [
        gpu(timeseries_panel("GPU power", WATT, "Power of each GPU as NVML reports it.",
                             Q(f"carbonwatch_gpu_power_watts{{{IG}}}", who))),
        gpu(timeseries_panel("GPU utilisation", RATIO, "Share of time a kernel ran on each GPU.",
                             Q(f"carbonwatch_gpu_utilization_ratio{{{IG}}}", who))),
        gpu(bargauge_panel("GPU energy in range", JOULE, "Energy of each GPU over the dashboard's time range, "
                           "with its source.", Q(f"increase(carbonwatch_gpu_energy_joules_total{{{IG}}}[$__range])",
                                                 f"{who} ({{{{source}}}})"))),
        gpu(table_panel("GPUs", NONE, "Index, UUID and name of each GPU.",
                        Q(f"carbonwatch_gpu_info{{{IG}}}", instant=True, table=True))),
    ])


def cpu_row() -> Row:
    return Row("CPU and memory", [
        timeseries_panel("CPU power", WATT, "Power of each CPU package, with its source (rapl or model).",
                         Q(f"carbonwatch_cpu_power_watts{{{I}}}", "{{instance}} package {{package}} ({{source}})")),
        timeseries_panel("Memory power", WATT, "Memory power, with its source (rapl dram or model).",
                         Q(f"carbonwatch_memory_power_watts{{{I}}}", "{{instance}} ({{source}})")),
    ])


def who_row() -> Row:
    return Row("Who uses the power", [
        timeseries_panel("Power by run and unattributed", WATT, "Node power split between runs and the rest "
                         "(idle, untracked processes).", Q(f"sum by (run_id) ({RUN_POWER}{{{I}}})", "run {{run_id}}"),
                         Q(f"sum(carbonwatch_unattributed_power_watts{{{I}}})", "unattributed"), stack=True),
        timeseries_panel("Unattributed power by component", WATT, "Power of each component no tracked process "
                         "accounts for.", Q(f"carbonwatch_unattributed_power_watts{{{I}}}", "{{component}}"),
                         stack=True),
        table_panel("Top processes", WATT, "Processes with the most power now, per component (pid, command, run).",
                    Q(f"topk(20, carbonwatch_process_power_watts{{{I}}})", instant=True, table=True), w=24),
    ])


def exporter_row() -> Row:
    return Row("Exporter", [
        timeseries_panel("Collector duration", SECONDS, "How long each collector took on its last read.",
                         Q(f"carbonwatch_collector_duration_seconds{{{I}}}", "{{instance}} {{collector}}")),
        stat_panel("Scrape up", NONE, "1 while Prometheus scrapes the exporter successfully.",
                   Q(f'up{{job="{EXPORTER_JOB}",{I}}}', "{{instance}}"), w=12, h=8),
    ])


def dashboard() -> Board:
    return board(
        "carbonwatch-node", "carbonwatch / Node and GPU",
        "One node: per-GPU power, utilisation and energy, per-process split, collector health.",
        [
            Var("instance", "Node", "label_values(carbonwatch_node_info, instance)"),
            Var("gpu", "GPU", f"label_values(carbonwatch_gpu_info{{{I}}}, gpu)"),
        ],
        [node_row(), gpu_row(), cpu_row(), who_row(), exporter_row()],
        time_from="now-1h",
    )
