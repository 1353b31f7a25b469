"""carbonwatch / Ledger: what the run ledger (`carbonwatch ledger serve`) holds, from its /metrics: energy and
CO2e per calendar month (or day, or rolling 1 d / 30 d) by project, user, model and zone; the top runs; a table
of runs, each linking to the Run dashboard; and the ledger's own health (sync lag, errors, counter resets,
estimated energy). Every panel is empty where no ledger runs.
"""

from __future__ import annotations

from carbonwatch.dashboards import links
from carbonwatch.dashboards.board import Board, Row, Var, board
from carbonwatch.dashboards.panels import (
    COUNT,
    GRAMS,
    JOULE,
    NONE,
    SECONDS,
    Cell,
    Q,
    bargauge_panel,
    stat_panel,
    table_panel,
    timeseries_panel,
)
from carbonwatch.dashboards.series import (
    LEDGER_RUN_COST,
    LEDGER_RUN_EMISSIONS,
    LEDGER_RUN_ENERGY,
    ledger_scope,
)

U, P, M = 'user=~"$user"', 'project=~"$project"', 'model=~"$model"'
PER = 'period="$period"'
SEL = {"user": U, "project": P, "model": M, "zone": 'zone=~".*"'}
RUNS = f"{U},{P},{M}"
PERIODS = "month,day,30d,1d"
PERIOD_NOTE = ("in the period chosen above (month and day: calendar, UTC, so far; 30d and 1d: rolling, up to the "
               "ledger's cursor)")


def ledger(cell: Cell) -> Cell:
    cell.ledger_only = True
    return cell


def scope_sum(scope: str, quantity: str) -> str:
    return f"sum(max by ({scope}) ({ledger_scope(scope, quantity)}{{{SEL[scope]},{PER}}}))"


def overview_row() -> Row:
    return Row("Period", [
        ledger(stat_panel("CO2e", GRAMS, f"CO2e of the selected projects' runs {PERIOD_NOTE}.",
                          Q(scope_sum("project", "emissions_grams")), w=5)),
        ledger(stat_panel("Energy", JOULE, f"Energy of the selected projects' runs {PERIOD_NOTE} (3.6 MJ = 1 kWh).",
                          Q(scope_sum("project", "energy_joules")), w=5)),
        ledger(stat_panel("Fleet CO2e", GRAMS, f"CO2e of every node of every zone, idle included, {PERIOD_NOTE}.",
                          Q(scope_sum("zone", "emissions_grams")), w=5)),
        ledger(stat_panel("Runs served", COUNT, "Runs the ledger serves among the selected users, projects and models "
                          "(running, or ended within its --metrics.window, 7 days by default).",
                          Q(f"count(max by (run_id) ({LEDGER_RUN_EMISSIONS}{{{RUNS}}})) or vector(0)"), w=4)),
        ledger(stat_panel("Sync lag now", SECONDS, "How far the ledger's cursor is behind now: figures newer than "
                          "this are not in the ledger yet (normally the sync delay plus interval, 45 s).",
                          Q("max(carbonwatch_ledger_sync_lag_seconds)"), w=5)),
    ])


def by_scope(scope: str, quantity: str, unit: str, noun: str) -> Cell:
    expr = f"sort_desc(max by ({scope}) ({ledger_scope(scope, quantity)}{{{SEL[scope]},{PER}}}))"
    return ledger(bargauge_panel(f"{noun} by {scope}", unit, f"{noun} of each {scope}'s runs {PERIOD_NOTE}.",
                                 Q(expr, f"{{{{{scope}}}}}"), w=8))


def groups_row() -> Row:
    cells = [by_scope(s, "emissions_grams", GRAMS, "CO2e") for s in ("project", "user", "model")]
    cells += [by_scope(s, "energy_joules", JOULE, "Energy") for s in ("project", "user", "model")]
    cells.append(ledger(timeseries_panel(
        "CO2e by project over time", GRAMS, f"Each project's CO2e {PERIOD_NOTE}, as the ledger served it over "
        "the dashboard's time range (a calendar period starts again from 0 at its start).",
        Q(f"max by (project) ({ledger_scope('project', 'emissions_grams')}{{{P},{PER}}})", "{{project}}"), w=24)))
    return Row("By project, user and model", cells)


def runs_table() -> Cell:
    who = "run_id, user, project, model, team, status"
    return ledger(table_panel(
        "Runs", NONE, "Every run the ledger serves among the selected users, projects and models, with its "
        "energy (J), CO2e (g) and cost. Click a run id to open it in the Run dashboard.",
        Q(f"max by ({who}) ({LEDGER_RUN_ENERGY}{{{RUNS}}})", instant=True, table=True),
        Q(f"max by ({who}) ({LEDGER_RUN_EMISSIONS}{{{RUNS}}})", instant=True, table=True),
        Q(f"max by (run_id, currency) ({LEDGER_RUN_COST}) and on(run_id) {LEDGER_RUN_ENERGY}{{{RUNS}}}",
          instant=True, table=True),
        w=24, h=12, links=(links.run_column(),), sort_desc="CO2e",
        columns=(("Value #A", "Energy", JOULE), ("Value #B", "CO2e", GRAMS), ("Value #C", "Cost", NONE))))


def runs_row() -> Row:
    top = f"topk(15, max by (run_id, user) ({LEDGER_RUN_EMISSIONS}{{{RUNS}}}))"
    return Row("Runs", [
        ledger(bargauge_panel("Top runs by CO2e", GRAMS, "The 15 runs with the most CO2e among the selected "
                              "users, projects and models (exact across nodes, requeues and gaps). Click a bar "
                              "to open the run.", Q(top, "{{run_id}} ({{user}})"), w=24, h=10,
                              links=(links.run_series(),))),
        runs_table(),
    ])


def health_row() -> Row:
    return Row("Ledger health", [
        ledger(timeseries_panel("Sync lag", SECONDS, "Now minus the ledger's cursor; it grows while the ledger "
                                "cannot read Prometheus or write its database.",
                                Q("max(carbonwatch_ledger_sync_lag_seconds)", "lag"), w=8)),
        ledger(timeseries_panel("Sync errors", COUNT, "Failed syncs in each interval (they are retried: nothing "
                                "is lost, the cursor stays).",
                                Q("sum(increase(carbonwatch_ledger_sync_errors_total[$__rate_interval]))", "errors"),
                                w=8)),
        ledger(timeseries_panel("Sync duration", SECONDS, "How long the last sync took (catch-up chunks included).",
                                Q("max(carbonwatch_ledger_sync_duration_seconds)", "duration"), w=8)),
        ledger(table_panel("Counter resets", COUNT, "Exporters whose counters went down (started again from 0): "
                           "the ledger kept what they held before; look at the node's state file.",
                           Q("max by (instance) (carbonwatch_ledger_counter_resets_total)", instant=True,
                             table=True), w=8)),
        ledger(table_panel("Estimated energy", JOULE, "Energy of each exporter spread over a scrape gap "
                           "(an estimate: the gap's hours got it linearly).",
                           Q("max by (instance) (carbonwatch_ledger_estimated_joules)", instant=True,
                             table=True), w=8)),
        ledger(table_panel("Rows", COUNT, "Rows in each table of the ledger's database.",
                           Q("max by (table) (carbonwatch_ledger_rows)", instant=True, table=True), w=8)),
    ])


def dashboard() -> Board:
    return board(
        "carbonwatch-ledger", "carbonwatch / Ledger",
        "The run ledger: energy and CO2e per month by project, user and model, top runs, every run with a link "
        "to its dashboard, and the ledger's health.",
        [
            Var("period", "Period", PERIODS, multi=False, include_all=False, kind="custom", default="month"),
            Var("user", "User", f"label_values({LEDGER_RUN_EMISSIONS}, user)", ledger_only=True),
            Var("project", "Project", f"label_values({LEDGER_RUN_EMISSIONS}{{{U}}}, project)", ledger_only=True),
            Var("model", "Model", f"label_values({LEDGER_RUN_EMISSIONS}{{{U},{P}}}, model)", ledger_only=True),
        ],
        [overview_row(), groups_row(), runs_row(), health_row()],
        time_from="now-30d",
    )
