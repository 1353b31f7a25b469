"""carbonwatch / Fleet: power, energy and CO2e of the whole fleet, by zone, user, model and project.

Period figures (24 h, 30 days) come from the ledger where one runs (exact, `1d` and `30d` rolling) and from
the period rules otherwise; power and rates from the exporters' series.
"""

from __future__ import annotations

from carbonwatch.dashboards import links
from carbonwatch.dashboards.board import Board, Row, Var, board
from carbonwatch.dashboards.panels import (
    COUNT,
    GRAMS,
    GRAMS_PER_SECOND,
    INTENSITY,
    JOULE,
    WATT,
    Cell,
    Q,
    bargauge_panel,
    stat_panel,
    table_panel,
    timeseries_panel,
)
from carbonwatch.dashboards.series import LEDGER_RUN_EMISSIONS, RUN_EMISSIONS, RUN_INFO, ledger_scope

U, P, M, Z = 'user=~"$user"', 'project=~"$project"', 'model=~"$model"', 'zone=~"$zone"'
SEL = {"user": U, "project": P, "model": M, "zone": Z}
WINDOW = {"1d": "the last 24 h", "30d": "the last 30 days"}


def period_total(scope: str, quantity: str, window: str) -> str:
    """Sum over the selected `scope` values of the ledger's rolling figure, else of the period rule."""
    sel = SEL[scope]
    rule = f"{scope}:carbonwatch_{quantity}:increase{window}"
    return f'sum({ledger_scope(scope, quantity)}{{{sel},period="{window}"}}) or sum({rule}{{{sel}}})'


def period_by(scope: str, window: str) -> str:
    sel = SEL[scope]
    ledger = f'max by ({scope}) ({ledger_scope(scope, "emissions_grams")}{{{sel},period="{window}"}})'
    rule = f"max by ({scope}) ({scope}:carbonwatch_emissions_grams:increase{window}{{{sel}}})"
    return f"sort_desc({ledger} or {rule})"


def now_row() -> Row:
    def total(title: str, unit: str, scope: str, quantity: str, window: str, who: str) -> Cell:
        return stat_panel(title, unit, f"{who} in {WINDOW[window]} (the ledger where one runs, else the "
                          "period rules; J: 3.6 MJ = 1 kWh).", Q(period_total(scope, quantity, window)))

    return Row("Now", [
        stat_panel("Power now", WATT, "Electrical power of every measured node (GPU + CPU + memory), all zones.",
                   Q("sum(instance_component:carbonwatch_power_watts:sum)")),
        stat_panel("Emission rate now", GRAMS_PER_SECOND,
                   "CO2e per second of every measured node now (rate of the exporters' emissions counters).",
                   Q("sum(rate(carbonwatch_emissions_grams_total[$__rate_interval]))")),
        total("CO2e today", GRAMS, "zone", "emissions_grams", "1d", "CO2e emitted by the selected zones"),
        total("CO2e this month", GRAMS, "zone", "emissions_grams", "30d", "CO2e emitted by the selected zones"),
        total("Energy today", JOULE, "user", "energy_joules", "1d", "Energy of the selected users' runs"),
        total("Energy this month", JOULE, "user", "energy_joules", "30d", "Energy of the selected users' runs"),
        stat_panel("Runs tracked now", COUNT,
                   "Runs with a live process on some node (series of the exporters' run power).",
                   Q("count(count by (run_id) (carbonwatch_run_power_watts)) or vector(0)")),
        stat_panel("Grid intensity now", INTENSITY,
                   "Grid carbon intensity used for each selected zone (live > table > default).",
                   Q(f"zone:carbonwatch_grid_intensity_grams_per_kwh:current{{{Z}}}", "{{zone}}")),
    ])


def power_row() -> Row:
    return Row("Power", [
        timeseries_panel("Power by component", WATT, "Fleet power split into GPU, CPU and memory.",
                         Q("sum by (component) (instance_component:carbonwatch_power_watts:sum)", "{{component}}"),
                         stack=True),
        timeseries_panel("Power by zone", WATT,
                         "Fleet power per grid zone (the zone of each node's carbonwatch_node_info).",
                         Q(f"zone:carbonwatch_power_watts:sum{{{Z}}}", "{{zone}}"), stack=True),
        timeseries_panel("Grid carbon intensity", INTENSITY,
                         "Carbon intensity per zone and its source (live provider, bundled table, default).",
                         Q(f"zone:carbonwatch_grid_intensity_grams_per_kwh:current{{{Z}}}", "{{zone}} ({{source}})"),
                         w=24),
    ])


def who_row() -> Row:
    nouns = {"user": "each user's runs", "project": "each project's runs", "model": "the runs of each model",
             "zone": "each grid zone (all node energy, idle included)"}
    cells = [
        bargauge_panel(f"CO2e by {scope}, {'today' if window == '1d' else '30 days'}", GRAMS,
                       f"CO2e of {noun} in {WINDOW[window]} (the ledger where one runs, else the period rules).",
                       Q(period_by(scope, window), f"{{{{{scope}}}}}"), w=6)
        for window in ("1d", "30d") for scope, noun in nouns.items()
    ]
    return Row("CO2e by who and where", cells)


def top_runs() -> str:
    ledger = f"max by (run_id, user, project, model, team) ({LEDGER_RUN_EMISSIONS}{{{U},{P},{M}}})"
    recorded = (f"{RUN_EMISSIONS} * on(run_id) group_left(user, project, model, team) "
                f"max by (run_id, user, project, model, team) ({RUN_INFO}{{{U},{P},{M}}})")
    return f"topk(20, {ledger} or on(run_id) {recorded})"


def dashboard() -> Board:
    runs = Row("Runs", [
        table_panel("Top runs by CO2e", GRAMS,
                    "The 20 runs with the most CO2e (since their start; the ledger's figure where one runs) among "
                    "the selected users, projects and models. Click a run id to open it in the Run dashboard.",
                    Q(top_runs(), instant=True, table=True), w=24, h=10, sort_desc="CO2e",
                    links=(links.run_column(),), columns=(("Value", "CO2e", GRAMS),)),
    ])
    return board(
        "carbonwatch-fleet", "carbonwatch / Fleet",
        "Power, energy and CO2e of the whole fleet, by zone, user, model and project.",
        [
            Var("zone", "Zone", "label_values(zone:carbonwatch_grid_intensity_grams_per_kwh:current, zone)"),
            Var("user", "User", f"label_values({RUN_INFO}, user)"),
            Var("project", "Project", f"label_values({RUN_INFO}{{{U}}}, project)"),
            Var("model", "Model", f"label_values({RUN_INFO}{{{U},{P}}}, model)"),
        ],
        [now_row(), power_row(), who_row(), runs],
    )
