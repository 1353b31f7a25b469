"""The Grafana dashboards, as code. `python -m carbonwatch.dashboards [DIR]` writes grafana/dashboards/*.json.

The committed JSON is this module's output (a test checks it). Every panel reads recorded series (see
prometheus/rules/) or, where no rule exists, the exporter's and the run client's raw series; every panel
has a unit and a description; every dashboard has a fixed uid, the `carbonwatch` tag and a `${datasource}`
variable that defaults to the provisioned datasource (uid `carbonwatch-prometheus`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASOURCE_UID = "carbonwatch-prometheus"
DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
TAG = "carbonwatch"
SCHEMA_VERSION = 39

# Units (Grafana unit ids).
WATT = "watt"
JOULE = "joule"
GRAMS = "massg"
RATIO = "percentunit"
SECONDS = "s"
DATETIME = "dateTimeAsIso"
INTENSITY = "suffix: gCO₂e/kWh"
GRAMS_PER_SECOND = "suffix: gCO₂e/s"
COUNT = "short"
NONE = "none"

Json = dict[str, Any]


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    fmt: str = "time_series"  # or "table"


@dataclass
class Panel:
    title: str
    kind: str  # timeseries | stat | bargauge | table | state-timeline
    unit: str
    description: str
    targets: list[Target]
    w: int = 12
    h: int = 8
    stack: bool = False
    gpu_only: bool = False  # the e2e test expects no data for these on a machine without GPUs
    options: Json = field(default_factory=dict)


@dataclass
class Variable:
    name: str
    label: str
    query: str  # label_values(...)
    multi: bool = True
    include_all: bool = True
    kind: str = "query"  # query (label_values) | custom (comma-separated values)
    default: str = ""


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    variables: list[Variable]
    rows: list[tuple[str, list[Panel]]]
    time_from: str = "now-6h"


def _target(t: Target, ref: str) -> Json:
    return {
        "datasource": DS,
        "editorMode": "code",
        "expr": t.expr,
        "format": t.fmt,
        "instant": t.instant,
        "range": not t.instant,
        "legendFormat": t.legend or "__auto",
        "refId": ref,
    }


def _panel_json(p: Panel, pid: int, x: int, y: int) -> Json:
    defaults: Json = {"unit": p.unit, "color": {"mode": "palette-classic"}}
    options: Json
    if p.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if p.stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
        }
        options = {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif p.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        }
    elif p.kind == "bargauge":
        defaults["color"] = {"mode": "continuous-GrYlRd"}
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "displayMode": "gradient",
            "orientation": "horizontal",
            "showUnfilled": True,
        }
    elif p.kind == "table":
        options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    elif p.kind == "state-timeline":
        defaults["color"] = {"mode": "palette-classic"}
        options = {"showValue": "never", "mergeValues": True, "rowHeight": 0.8}
    else:  # pragma: no cover - a programming error caught by the tests
        raise ValueError(f"unknown panel kind {p.kind}")
    options.update(p.options)
    out: Json = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"h": p.h, "w": p.w, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [_target(t, chr(ord("A") + i)) for i, t in enumerate(p.targets)],
    }
    if p.kind == "table":
        out["transformations"] = [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True}}},
        ]
    return out


def _variable_json(v: Variable) -> Json:
    if v.kind == "custom":
        values = [x.strip() for x in v.query.split(",")]
        return {
            "name": v.name,
            "label": v.label,
            "type": "custom",
            "query": v.query,
            "current": {"selected": True, "text": v.default or values[0], "value": v.default or values[0]},
            "options": [{"selected": x == (v.default or values[0]), "text": x, "value": x} for x in values],
            "multi": v.multi,
            "includeAll": v.include_all,
            "hide": 0,
        }
    return {
        "name": v.name,
        "label": v.label,
        "type": "query",
        "datasource": DS,
        "definition": v.query,
        "query": {"query": v.query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "multi": v.multi,
        "includeAll": v.include_all,
        "allValue": ".*" if v.include_all else None,
        "current": {},
        "options": [],
        "hide": 0,
    }


def render(d: Dashboard) -> Json:
    """Grafana dashboard JSON (schema 39) for `d`, panels laid out row by row on the 24-column grid."""
    panels: list[Json] = []
    pid, y = 1, 0
    for row_title, row_panels in d.rows:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        pid, y = pid + 1, y + 1
        x, line_h = 0, 0
        for p in row_panels:
            if x + p.w > 24:
                x, y, line_h = 0, y + line_h, 0
            panels.append(_panel_json(p, pid, x, y))
            pid, x, line_h = pid + 1, x + p.w, max(line_h, p.h)
        y += line_h
    datasource_var: Json = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": True, "text": "Prometheus (carbonwatch)", "value": DATASOURCE_UID},
        "regex": "",
        "hide": 0,
        "refresh": 1,
        "includeAll": False,
        "multi": False,
        "options": [],
    }
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": [TAG],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": d.time_from, "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "asDropdown": True,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "tags": [TAG],
                "targetBlank": False,
                "title": "carbonwatch",
                "type": "dashboards",
            }
        ],
        "templating": {"list": [datasource_var] + [_variable_json(v) for v in d.variables]},
        "panels": panels,
    }


# ---------------------------------------------------------------------------------------------- dashboards

RUN_INFO = "run_id:carbonwatch_run_info:last"


def fleet() -> Dashboard:
    u, p, m, z = 'user=~"$user"', 'project=~"$project"', 'model=~"$model"', 'zone=~"$zone"'
    runs_sel = f"{RUN_INFO}{{{u},{p},{m}}}"
    top_runs = (
        "topk(20, run_id:carbonwatch_emissions_grams:total"
        " * on(run_id) group_left(user, project, model, team) "
        f"max by (run_id, user, project, model, team) ({runs_sel}))"
    )
    return Dashboard(
        uid="carbonwatch-fleet",
        title="carbonwatch / Fleet",
        description="Power, energy and CO2e of the whole fleet, by zone, user, model and project.",
        variables=[
            Variable("zone", "Zone", "label_values(zone:carbonwatch_grid_intensity_grams_per_kwh:current, zone)"),
            Variable("user", "User", f"label_values({RUN_INFO}, user)"),
            Variable("project", "Project", f"label_values({RUN_INFO}{{{u}}}, project)"),
            Variable("model", "Model", f"label_values({RUN_INFO}{{{u},{p}}}, model)"),
        ],
        rows=[
            (
                "Now",
                [
                    Panel(
                        "Power now",
                        "stat",
                        WATT,
                        "Electrical power of every measured node (GPU + CPU + memory), all zones.",
                        [Target("sum(instance_component:carbonwatch_power_watts:sum)")],
                        w=6,
                        h=5,
                    ),
                    Panel(
                        "Emission rate now",
                        "stat",
                        GRAMS_PER_SECOND,
                        "CO2e per second of all tracked runs right now (energy rate x grid intensity).",
                        [Target("sum(run_id:carbonwatch_emissions_grams:rate5m)")],
                        w=6,
                        h=5,
                    ),
                    Panel(
                        "CO2e today",
                        "stat",
                        GRAMS,
                        "CO2e emitted in the last 24 h by the selected zones.",
                        [Target(f"sum(zone:carbonwatch_emissions_grams:increase1d{{{z}}})")],
                        w=6,
                        h=5,
                    ),
                    Panel(
                        "CO2e this month",
                        "stat",
                        GRAMS,
                        "CO2e emitted in the last 30 days by the selected zones.",
                        [Target(f"sum(zone:carbonwatch_emissions_grams:increase30d{{{z}}})")],
                        w=6,
                        h=5,
                    ),
                    Panel(
                        "Energy today",
                        "stat",
                        JOULE,
                        "Energy of the selected users' runs in the last 24 h (J; 3.6 MJ = 1 kWh).",
                        [Target(f"sum(user:carbonwatch_energy_joules:increase1d{{{u}}})")],
                        w=6,
                        h=5,
                    ),
                    Panel(
                        "Energy this month",
                        "stat",
                        JOULE,
                        "Energy of the selected users' runs in the last 30 days (J; 3.6 MJ = 1 kWh).",
                        [Target(f"sum(user:carbonwatch_energy_joules:increase30d{{{u}}})")],
                        w=6,
                        h=5,
                    ),
                    Panel(
                        "Runs tracked now",
                        "stat",
                        COUNT,
                        "Runs with a live process on some node (series of the exporter's run counters).",
                        [Target("count(run_id:carbonwatch_power_watts:sum) or vector(0)")],
                        w=6,
                        h=5,
                    ),
                    Panel(
                        "Grid intensity now",
                        "stat",
                        INTENSITY,
                        "Grid carbon intensity used for each selected zone (live > table > default).",
                        [Target(f"zone:carbonwatch_grid_intensity_grams_per_kwh:current{{{z}}}", "{{zone}}")],
                        w=6,
                        h=5,
                    ),
                ],
            ),
            (
                "Power",
                [
                    Panel(
                        "Power by component",
                        "timeseries",
                        WATT,
                        "Fleet power split into GPU, CPU and memory.",
                        [
                            Target(
                                "sum by (component) (instance_component:carbonwatch_power_watts:sum)",
                                "{{component}}",
                            )
                        ],
                        stack=True,
                    ),
                    Panel(
                        "Power by zone",
                        "timeseries",
                        WATT,
                        "Fleet power per grid zone (the zone of each node's carbonwatch_node_info).",
                        [Target(f"zone:carbonwatch_power_watts:sum{{{z}}}", "{{zone}}")],
                        stack=True,
                    ),
                    Panel(
                        "Grid carbon intensity",
                        "timeseries",
                        INTENSITY,
                        "Carbon intensity per zone and its source (live provider, bundled table, default).",
                        [
                            Target(
                                f"zone:carbonwatch_grid_intensity_grams_per_kwh:current{{{z}}}",
                                "{{zone}} ({{source}})",
                            )
                        ],
                        w=24,
                    ),
                ],
            ),
            (
                "CO2e by who and where",
                [
                    Panel(
                        "CO2e by user, today",
                        "bargauge",
                        GRAMS,
                        "CO2e of each user's runs in the last 24 h.",
                        [Target(f"sort_desc(user:carbonwatch_emissions_grams:increase1d{{{u}}})", "{{user}}")],
                        w=6,
                    ),
                    Panel(
                        "CO2e by project, today",
                        "bargauge",
                        GRAMS,
                        "CO2e of each project's runs in the last 24 h.",
                        [
                            Target(
                                f"sort_desc(project:carbonwatch_emissions_grams:increase1d{{{p}}})",
                                "{{project}}",
                            )
                        ],
                        w=6,
                    ),
                    Panel(
                        "CO2e by model, today",
                        "bargauge",
                        GRAMS,
                        "CO2e of the runs of each model in the last 24 h.",
                        [Target(f"sort_desc(model:carbonwatch_emissions_grams:increase1d{{{m}}})", "{{model}}")],
                        w=6,
                    ),
                    Panel(
                        "CO2e by zone, today",
                        "bargauge",
                        GRAMS,
                        "CO2e emitted in each grid zone in the last 24 h.",
                        [Target(f"sort_desc(zone:carbonwatch_emissions_grams:increase1d{{{z}}})", "{{zone}}")],
                        w=6,
                    ),
                    Panel(
                        "CO2e by user, 30 days",
                        "bargauge",
                        GRAMS,
                        "CO2e of each user's runs in the last 30 days.",
                        [Target(f"sort_desc(user:carbonwatch_emissions_grams:increase30d{{{u}}})", "{{user}}")],
                        w=6,
                    ),
                    Panel(
                        "CO2e by project, 30 days",
                        "bargauge",
                        GRAMS,
                        "CO2e of each project's runs in the last 30 days.",
                        [
                            Target(
                                f"sort_desc(project:carbonwatch_emissions_grams:increase30d{{{p}}})",
                                "{{project}}",
                            )
                        ],
                        w=6,
                    ),
                    Panel(
                        "CO2e by model, 30 days",
                        "bargauge",
                        GRAMS,
                        "CO2e of the runs of each model in the last 30 days.",
                        [
                            Target(
                                f"sort_desc(model:carbonwatch_emissions_grams:increase30d{{{m}}})",
                                "{{model}}",
                            )
                        ],
                        w=6,
                    ),
                    Panel(
                        "CO2e by zone, 30 days",
                        "bargauge",
                        GRAMS,
                        "CO2e emitted in each grid zone in the last 30 days.",
                        [Target(f"sort_desc(zone:carbonwatch_emissions_grams:increase30d{{{z}}})", "{{zone}}")],
                        w=6,
                    ),
                ],
            ),
            (
                "Runs",
                [
                    Panel(
                        "Top runs by CO2e",
                        "table",
                        GRAMS,
                        "The 20 runs with the most CO2e (cumulative since their start) among the selected "
                        "users, "
                        "projects and models. Open a run in the Run dashboard.",
                        [Target(top_runs, instant=True, fmt="table")],
                        w=24,
                        h=10,
                        options={"sortBy": [{"displayName": "Value", "desc": True}]},
                    ),
                ],
            ),
        ],
    )


def run() -> Dashboard:
    r = 'run_id="$run_id"'
    duration = (
        f"(max(last_over_time(carbonwatch_run_end_time_seconds{{{r}}}[$__range])) "
        f"- max(last_over_time(carbonwatch_run_start_time_seconds{{{r}}}[$__range]))) "
        f"or (time() - max(last_over_time(carbonwatch_run_start_time_seconds{{{r}}}[$__range])))"
    )
    return Dashboard(
        uid="carbonwatch-run",
        title="carbonwatch / Run",
        description="One training run: power, energy and CO2e against its budget, progress, efficiency.",
        variables=[
            Variable("user", "User", f"label_values({RUN_INFO}, user)"),
            Variable(
                "run_id",
                "Run",
                f'label_values({RUN_INFO}{{user=~"$user"}}, run_id)',
                multi=False,
                include_all=False,
            ),
        ],
        time_from="now-3h",
        rows=[
            (
                "Summary",
                [
                    Panel(
                        "Run",
                        "table",
                        NONE,
                        "Who ran it, which model and project, and where those labels came from (`origin`: the "
                        "run client, or what the node knew: env, registration, parent, kubernetes, slurm).",
                        [
                            Target(
                                f"max by (run_id, user, project, model, team, origin) "
                                f"(last_over_time({RUN_INFO}{{{r}}}[$__range]))",
                                instant=True,
                                fmt="table",
                            )
                        ],
                        w=12,
                        h=4,
                    ),
                    Panel(
                        "Status",
                        "stat",
                        NONE,
                        "Status the run client last pushed (running, succeeded, failed, stopped); "
                        "empty once the "
                        "finished run's Pushgateway group is deleted.",
                        [Target(f"max by (status) (carbonwatch_run_info{{{r}}})", "{{status}}")],
                        w=6,
                        h=4,
                        options={"textMode": "name", "graphMode": "none"},
                    ),
                    Panel(
                        "Duration",
                        "stat",
                        SECONDS,
                        "From the run's start to its end (or to now while it runs).",
                        [Target(duration)],
                        w=6,
                        h=4,
                        options={"graphMode": "none"},
                    ),
                    Panel(
                        "Energy",
                        "stat",
                        JOULE,
                        "Energy of the run so far, all nodes and components (3.6 MJ = 1 kWh): the largest total "
                        "in the time range (a total only grows; kept after the run ends).",
                        [Target(f"max_over_time(run_id:carbonwatch_energy_joules:total{{{r}}}[$__range])",
                                instant=True)],
                        w=4,
                        h=5,
                    ),
                    Panel(
                        "CO2e",
                        "stat",
                        GRAMS,
                        "CO2e of the run so far, from the exporters' counters: each sample's energy at its "
                        "zone's intensity at that moment.",
                        [Target(f"max_over_time(run_id:carbonwatch_emissions_grams:total{{{r}}}[$__range])",
                                instant=True)],
                        w=4,
                        h=5,
                    ),
                    Panel(
                        "Budget used",
                        "stat",
                        RATIO,
                        "CO2e so far divided by the run's budget.",
                        [Target(f"run_id:carbonwatch_budget_used:ratio{{{r}}}")],
                        w=4,
                        h=5,
                        options={"colorMode": "background"},
                    ),
                    Panel(
                        "Forecast at end",
                        "stat",
                        GRAMS,
                        "CO2e expected at the run's expected end at the current emission rate.",
                        [Target(f"run_id:carbonwatch_emissions_grams:forecast{{{r}}}")],
                        w=4,
                        h=5,
                    ),
                    Panel(
                        "Cost",
                        "stat",
                        NONE,
                        "Electricity cost of the run so far (its energy at each node's price), in the zone's "
                        "currency.",
                        [Target(f"max_over_time(run_id:carbonwatch_cost:total{{{r}}}[$__range])", "{{currency}}",
                                instant=True)],
                        w=4,
                        h=5,
                        options={"textMode": "value_and_name"},
                    ),
                    Panel(
                        "Emission rate",
                        "stat",
                        GRAMS_PER_SECOND,
                        "CO2e per second now (5-minute rate).",
                        [Target(f"run_id:carbonwatch_emissions_grams:rate5m{{{r}}}")],
                        w=4,
                        h=5,
                    ),
                ],
            ),
            (
                "Energy and CO2e",
                [
                    Panel(
                        "Power by component",
                        "timeseries",
                        WATT,
                        "Power attributed to the run on every node, split into GPU, CPU and memory.",
                        [Target(f"run_id_component:carbonwatch_power_watts:sum{{{r}}}", "{{component}}")],
                        stack=True,
                    ),
                    Panel(
                        "Cumulative energy by component",
                        "timeseries",
                        JOULE,
                        "Energy attributed to the run since its start, per component.",
                        [Target(f"run_id_component:carbonwatch_energy_joules:total{{{r}}}", "{{component}}")],
                        stack=True,
                    ),
                    Panel(
                        "CO2e against the budget",
                        "timeseries",
                        GRAMS,
                        "Cumulative CO2e of the run, its budget line and the forecast at its expected end.",
                        [
                            Target(f"run_id:carbonwatch_emissions_grams:total{{{r}}}", "CO2e"),
                            Target(f"max(carbonwatch_run_budget_grams{{{r}}})", "budget"),
                            Target(f"run_id:carbonwatch_emissions_grams:forecast{{{r}}}", "forecast"),
                        ],
                        w=24,
                        h=9,
                    ),
                ],
            ),
            (
                "Progress and efficiency",
                [
                    Panel(
                        "Phase",
                        "state-timeline",
                        NONE,
                        "The phase the run client last pushed (train, eval, ...).",
                        [Target(f"max by (phase) (carbonwatch_run_phase_info{{{r}}}) > 0", "{{phase}}")],
                        w=12,
                        h=5,
                    ),
                    Panel(
                        "Epoch",
                        "timeseries",
                        COUNT,
                        "Epoch the run last reported.",
                        [Target(f"max(carbonwatch_run_epoch{{{r}}})", "epoch")],
                        w=12,
                        h=5,
                    ),
                    Panel(
                        "Energy per sample",
                        "timeseries",
                        "suffix: J/sample",
                        "Run energy divided by the samples it processed: lower is more efficient.",
                        [Target(f"run_id:carbonwatch_joules_per_sample:ratio{{{r}}}", "J/sample")],
                        w=8,
                    ),
                    Panel(
                        "CO2e per epoch",
                        "timeseries",
                        "suffix: gCO₂e/epoch",
                        "Run CO2e divided by epochs completed.",
                        [Target(f"run_id:carbonwatch_grams_per_epoch:ratio{{{r}}}", "g/epoch")],
                        w=8,
                    ),
                    Panel(
                        "Training metrics",
                        "timeseries",
                        NONE,
                        "The run's own metrics (loss, accuracy, ...).",
                        [Target(f"carbonwatch_run_metric{{{r}}}", "{{name}}")],
                        w=8,
                    ),
                ],
            ),
            (
                "Equivalents and alerts",
                [
                    Panel(
                        "Everyday equivalents",
                        "bargauge",
                        NONE,
                        "The run's CO2e as km driven by car, smartphone charges and days of a tree's uptake "
                        "(US EPA factors, see carbonwatch.equivalents).",
                        [Target(f"run_id:carbonwatch_emissions_equivalent:total{{{r}}}", "{{equivalent}}")],
                        w=12,
                    ),
                    Panel(
                        "Alerts for this run",
                        "table",
                        NONE,
                        "Alerts firing or pending for this run.",
                        [Target(f"ALERTS{{{r}}}", instant=True, fmt="table")],
                        w=12,
                    ),
                ],
            ),
        ],
    )


def node() -> Dashboard:
    i = 'instance=~"$instance"'
    ig = f'{i},gpu=~"$gpu"'
    sources = " or ".join(
        f"label_replace(count by (instance, source) (carbonwatch_{c}_energy_joules_total{{{i}}}), "
        f'"component", "{c}", "", "")'
        for c in ("gpu", "cpu", "memory")
    )
    return Dashboard(
        uid="carbonwatch-node",
        title="carbonwatch / Node and GPU",
        description="One node: per-GPU power, utilisation and energy, per-process split, collector health.",
        variables=[
            Variable("instance", "Node", "label_values(carbonwatch_node_info, instance)"),
            Variable("gpu", "GPU", f"label_values(carbonwatch_gpu_info{{{i}}}, gpu)"),
        ],
        time_from="now-1h",
        rows=[
            (
                "Node",
                [
                    Panel(
                        "Node",
                        "table",
                        NONE,
                        "Zone, CPU model, GPU count and the source of CPU and memory figures.",
                        [Target(f"carbonwatch_node_info{{{i}}}", instant=True, fmt="table")],
                        w=24,
                        h=4,
                    ),
                    Panel(
                        "Source of each number",
                        "table",
                        NONE,
                        "Where each component's energy comes from: nvml_counter, nvml_power, rapl or model.",
                        [Target(sources, instant=True, fmt="table")],
                        w=12,
                        h=6,
                    ),
                    Panel(
                        "Collector health",
                        "table",
                        NONE,
                        "1 when the collector's last read succeeded, 0 when it failed (the scrape succeeds).",
                        [Target(f"carbonwatch_collector_success{{{i}}}", instant=True, fmt="table")],
                        w=12,
                        h=6,
                    ),
                ],
            ),
            (
                "GPUs",
                [
                    Panel(
                        "GPU power",
                        "timeseries",
                        WATT,
                        "Power of each GPU as NVML reports it.",
                        [Target(f"carbonwatch_gpu_power_watts{{{ig}}}", "{{instance}} gpu {{gpu}}")],
                        gpu_only=True,
                    ),
                    Panel(
                        "GPU utilisation",
                        "timeseries",
                        RATIO,
                        "Share of time a kernel ran on each GPU.",
                        [Target(f"carbonwatch_gpu_utilization_ratio{{{ig}}}", "{{instance}} gpu {{gpu}}")],
                        gpu_only=True,
                    ),
                    Panel(
                        "GPU energy in range",
                        "bargauge",
                        JOULE,
                        "Energy of each GPU over the dashboard's time range, with its source.",
                        [
                            Target(
                                f"increase(carbonwatch_gpu_energy_joules_total{{{ig}}}[$__range])",
                                "{{instance}} gpu {{gpu}} ({{source}})",
                            )
                        ],
                        gpu_only=True,
                    ),
                    Panel(
                        "GPUs",
                        "table",
                        NONE,
                        "Index, UUID and name of each GPU.",
                        [Target(f"carbonwatch_gpu_info{{{ig}}}", instant=True, fmt="table")],
                        gpu_only=True,
                    ),
                ],
            ),
            (
                "CPU and memory",
                [
                    Panel(
                        "CPU power",
                        "timeseries",
                        WATT,
                        "Power of each CPU package, with its source (rapl or model).",
                        [
                            Target(
                                f"carbonwatch_cpu_power_watts{{{i}}}",
                                "{{instance}} package {{package}} ({{source}})",
                            )
                        ],
                    ),
                    Panel(
                        "Memory power",
                        "timeseries",
                        WATT,
                        "Memory power, with its source (rapl dram or model).",
                        [Target(f"carbonwatch_memory_power_watts{{{i}}}", "{{instance}} ({{source}})")],
                    ),
                ],
            ),
            (
                "Who uses the power",
                [
                    Panel(
                        "Power by run and unattributed",
                        "timeseries",
                        WATT,
                        "Node power split between runs and the rest (idle, untracked processes).",
                        [
                            Target(f"sum by (run_id) (carbonwatch_run_power_watts{{{i}}})", "run {{run_id}}"),
                            Target(f"sum(carbonwatch_unattributed_power_watts{{{i}}})", "unattributed"),
                        ],
                        stack=True,
                    ),
                    Panel(
                        "Unattributed power by component",
                        "timeseries",
                        WATT,
                        "Power of each component no tracked process accounts for.",
                        [Target(f"carbonwatch_unattributed_power_watts{{{i}}}", "{{component}}")],
                        stack=True,
                    ),
                    Panel(
                        "Top processes",
                        "table",
                        WATT,
                        "Processes with the most power now, per component (pid, command, run).",
                        [Target(f"topk(20, carbonwatch_process_power_watts{{{i}}})", instant=True, fmt="table")],
                        w=24,
                    ),
                ],
            ),
            (
                "Exporter",
                [
                    Panel(
                        "Collector duration",
                        "timeseries",
                        SECONDS,
                        "How long each collector took on its last read.",
                        [Target(f"carbonwatch_collector_duration_seconds{{{i}}}", "{{instance}} {{collector}}")],
                    ),
                    Panel(
                        "Scrape up",
                        "stat",
                        NONE,
                        "1 while Prometheus scrapes the exporter successfully.",
                        [Target(f'up{{job="carbonwatch",{i}}}', "{{instance}}")],
                    ),
                ],
            ),
        ],
    )


def budgets() -> Dashboard:
    u, p, per = 'user=~"$user"', 'project=~"$project"', 'period="$period"'

    def who(level: str, sel: str) -> list[tuple[str, list[Panel]]]:
        s = f"{sel},{per}"
        noun = "user" if level == "user" else "project"
        return [
            (
                f"{noun.capitalize()} budgets",
                [
                    Panel(
                        f"{noun.capitalize()} budget used",
                        "bargauge",
                        RATIO,
                        f"CO2e of each {noun}'s runs in the budget period divided by the {noun}'s budget "
                        "(alerting/budgets.yml).",
                        [Target(f"sort_desc({level}_period:carbonwatch_budget_used:ratio{{{s}}})", f"{{{{{level}}}}}")],
                        w=8,
                        options={"displayMode": "lcd"},
                    ),
                    Panel(
                        f"{noun.capitalize()} CO2e against budget",
                        "timeseries",
                        GRAMS,
                        f"CO2e of each {noun} over the rolling budget period, with the budget line.",
                        [
                            Target(f"{level}_period:carbonwatch_emissions_grams:increase{{{s}}}", f"{{{{{level}}}}}"),
                            Target(f"{level}_period:carbonwatch_budget_grams:limit{{{s}}}", f"{{{{{level}}}}} budget"),
                        ],
                        w=8,
                    ),
                    Panel(
                        f"{noun.capitalize()} burn-down",
                        "timeseries",
                        GRAMS,
                        f"Budget left for each {noun} in the rolling period (budget minus CO2e; below 0 is over).",
                        [
                            Target(
                                f"{level}_period:carbonwatch_budget_grams:limit{{{s}}} - on({level}, period) "
                                f"{level}_period:carbonwatch_emissions_grams:increase{{{s}}}",
                                f"{{{{{level}}}}}",
                            )
                        ],
                        w=8,
                    ),
                    Panel(
                        f"{noun.capitalize()} forecast",
                        "table",
                        GRAMS,
                        f"CO2e each {noun} reaches in the period if the current burn goes on, next to the budget.",
                        [
                            Target(
                                f"{level}_period:carbonwatch_emissions_grams:forecast{{{s}}}", instant=True, fmt="table"
                            ),
                            Target(f"{level}_period:carbonwatch_budget_grams:limit{{{s}}}", instant=True, fmt="table"),
                        ],
                        w=24,
                        h=6,
                    ),
                ],
            )
        ]

    return Dashboard(
        uid="carbonwatch-budgets",
        title="carbonwatch / Budgets",
        description="CO2e budgets per user and project (alerting/budgets.yml), run budgets, alerts.",
        variables=[
            Variable("period", "Budget period", "1d,30d", multi=False, include_all=False, kind="custom", default="30d"),
            Variable("user", "User", f"label_values({RUN_INFO}, user)"),
            Variable("project", "Project", f"label_values({RUN_INFO}{{{u}}}, project)"),
        ],
        time_from="now-7d",
        rows=who("user", u)
        + who("project", p)
        + [
            (
                "Runs",
                [
                    Panel(
                        "Run budget used",
                        "bargauge",
                        RATIO,
                        "Each tracked run's CO2e divided by its own budget.",
                        [
                            Target(
                                "sort_desc(run_id:carbonwatch_budget_used:ratio"
                                " * on(run_id) group_left(user, project) "
                                f"max by (run_id, user, project) ({RUN_INFO}{{{u},{p}}}))",
                                "{{run_id}} ({{user}})",
                            )
                        ],
                        options={"displayMode": "lcd"},
                    ),
                    Panel(
                        "Runs forecast over budget",
                        "table",
                        GRAMS,
                        "Runs whose forecast CO2e at their expected end is above their budget.",
                        [
                            Target(
                                "run_id:carbonwatch_emissions_grams:forecast > on(run_id) "
                                "max by (run_id) (carbonwatch_run_budget_grams)",
                                instant=True,
                                fmt="table",
                            )
                        ],
                    ),
                ],
            ),
            (
                "Alerts",
                [
                    Panel(
                        "Firing carbonwatch alerts",
                        "table",
                        NONE,
                        "carbonwatch alerts firing now (Alertmanager routes them to the receivers).",
                        [Target('ALERTS{alertname=~"Carbonwatch.*", alertstate="firing"}', instant=True, fmt="table")],
                        w=24,
                    ),
                ],
            ),
        ],
    )


DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "fleet": fleet,
    "run": run,
    "node": node,
    "budgets": budgets,
}


def definitions() -> dict[str, Dashboard]:
    """`{file stem: Dashboard}` for every dashboard."""
    return {name: make() for name, make in DASHBOARDS.items()}


def dump(d: Dashboard) -> str:
    return json.dumps(render(d), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


def write_all(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, d in definitions().items():
        path = dest / f"{name}.json"
        path.write_text(dump(d), encoding="utf-8")
        written.append(path)
    return written


# ------------------------------------------------------------------------------ queries, for checking them

# Grafana's built-in variables, as a check substitutes them.
BUILTINS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "datasource": DATASOURCE_UID,
}
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<sel>.+),\s*)?(?P<label>\w+)\)$", re.S)


@dataclass(frozen=True)
class Query:
    dashboard: str  # uid
    panel: str  # title, or "variable NAME"
    expr: str
    gpu_only: bool = False


def variables_in(expr: str) -> set[str]:
    return {a or b for a, b in _VAR.findall(expr)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """`expr` with `$name`, `${name}` and `${name:fmt}` replaced from `values`, then Grafana's built-ins.
    Raises KeyError naming a variable that has no value."""
    merged = {**BUILTINS, **values}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in merged:
            raise KeyError(name)
        return merged[name]

    return _VAR.sub(repl, expr)


def label_values_query(definition: str) -> str:
    """The PromQL a `label_values(selector, label)` variable amounts to: one series per value."""
    m = _LABEL_VALUES.match(definition.strip())
    if not m:
        raise ValueError(f"not a label_values() query: {definition!r}")
    sel = m.group("sel") or '{__name__=~".+"}'
    return f"group by ({m.group('label')}) ({sel})"


def queries(dashboards: dict[str, Dashboard] | None = None) -> list[Query]:
    """Every panel target and every variable of every dashboard (variables as label_values_query())."""
    out: list[Query] = []
    for d in (dashboards or definitions()).values():
        for v in d.variables:
            if v.kind == "query":
                gpu = "carbonwatch_gpu_" in v.query  # values only where there are GPUs
                out.append(Query(d.uid, f"variable {v.name}", label_values_query(v.query), gpu))
        for _row, panels in d.rows:
            for p in panels:
                out.extend(Query(d.uid, p.title, t.expr, p.gpu_only) for t in p.targets)
    return out


def check_live(prometheus_url: str, values: dict[str, str], timeout: float = 10.0) -> list[tuple[Query, str, int]]:
    """Run every query, variables substituted, as an instant query: `(query, error or "", result count)`."""
    import requests

    results: list[tuple[Query, str, int]] = []
    for q in queries():
        expr = substitute(q.expr, values)
        try:
            r = requests.post(f"{prometheus_url.rstrip('/')}/api/v1/query", data={"query": expr}, timeout=timeout)
            body = r.json()
        except (requests.RequestException, ValueError) as exc:
            results.append((q, f"request failed: {exc}", 0))
            continue
        if body.get("status") != "success":
            results.append((q, f"{body.get('errorType')}: {body.get('error')}", 0))
        else:
            results.append((q, "", len(body["data"]["result"])))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carbonwatch.dashboards", description=__doc__)
    parser.add_argument("dest", nargs="?", default="grafana/dashboards", help="directory for the JSON files")
    parser.add_argument(
        "--check", metavar="PROMETHEUS_URL", help="instead of writing, run every panel's query against this Prometheus"
    )
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable's value for --check (e.g. run_id=abc); default .* for the others",
    )
    args = parser.parse_args(argv)
    if args.check:
        values = {v.name: v.default or ".*" for d in definitions().values() for v in d.variables}
        for item in args.var:
            name, _, value = item.partition("=")
            values[name] = value
        failed = 0
        for q, err, n in check_live(args.check, values):
            status = f"ERROR {err}" if err else (f"{n} series" if n else "no data")
            failed += bool(err)
            print(f"{q.dashboard:22} {q.panel[:40]:40} {status}")
        return 1 if failed else 0
    for path in write_all(Path(args.dest)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
