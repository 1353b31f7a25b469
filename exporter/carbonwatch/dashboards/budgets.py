"""carbonwatch / Budgets: CO2e budgets per user and project (alerting/budgets.yml), run budgets, alerts.

Period CO2e is the ledger's rolling `1d` / `30d` figure where one runs, else the period rules'; run figures
come from the ledger or the 30 s contract series and the exporters' counters, so a new run shows at once.
"""

from __future__ import annotations

from carbonwatch.dashboards import links
from carbonwatch.dashboards.board import Board, Row, Var, board
from carbonwatch.dashboards.panels import (
    GRAMS,
    NONE,
    RATIO,
    Q,
    bargauge_panel,
    table_panel,
    timeseries_panel,
)
from carbonwatch.dashboards.series import (
    LEDGER_RUN_BUDGET,
    LEDGER_RUN_EMISSIONS,
    RUN_BUDGET,
    RUN_EMISSIONS,
    RUN_EMISSIONS_COUNTER,
    RUN_INFO,
    RUN_RAW_INFO,
    ledger_scope,
)

U, P, PER = 'user=~"$user"', 'project=~"$project"', 'period="$period"'


def period_emissions(level: str, sel: str) -> str:
    ledger = f"max by ({level}, period) ({ledger_scope(level, 'emissions_grams')}{{{sel}}})"
    return f"({ledger} or {level}_period:carbonwatch_emissions_grams:increase{{{sel}}})"


def who_row(level: str, sel: str) -> Row:
    s, noun, legend = f"{sel},{PER}", level.capitalize(), f"{{{{{level}}}}}"
    emissions, limit = period_emissions(level, s), f"{level}_period:carbonwatch_budget_grams:limit{{{s}}}"
    return Row(f"{noun} budgets", [
        bargauge_panel(f"{noun} budget used", RATIO, f"CO2e of each {level}'s runs in the budget period divided by "
                       f"the {level}'s budget (alerting/budgets.yml).",
                       Q(f"sort_desc({emissions} / on({level}, period) ({limit} > 0))", legend), w=8, lcd=True),
        timeseries_panel(f"{noun} CO2e against budget", GRAMS, f"CO2e of each {level} over the rolling budget "
                         "period (the ledger's where one runs), with the budget line.",
                         Q(emissions, legend), Q(limit, f"{legend} budget"), w=8),
        timeseries_panel(f"{noun} burn-down", GRAMS, f"Budget left for each {level} in the rolling period (budget "
                         "minus CO2e; below 0 is over).", Q(f"{limit} - on({level}, period) {emissions}", legend), w=8),
        table_panel(f"{noun} forecast", GRAMS, f"CO2e each {level} reaches in the period if the current burn goes "
                    "on, next to the budget.",
                    Q(f"{level}_period:carbonwatch_emissions_grams:forecast{{{s}}}", instant=True, table=True),
                    Q(limit, instant=True, table=True), w=24, h=6),
    ])


def run_emissions() -> str:
    """CO2e of every run: the ledger's, else the contract series."""
    return f"(max by (run_id) ({LEDGER_RUN_EMISSIONS}) or on(run_id) max by (run_id) ({RUN_EMISSIONS}))"


def run_budgets() -> str:
    return f"(max by (run_id) ({RUN_BUDGET}) or on(run_id) max by (run_id) ({LEDGER_RUN_BUDGET}))"


def run_owners() -> str:
    """One (run_id, user, project) per run among the selected users and projects, from the recorded run info,
    else what the run client or the exporters publish (a new run before the 2-minute rule group)."""
    return (f"topk by (run_id) (1, max by (run_id, user, project) ({RUN_INFO}{{{U},{P}}}) "
            f"or on(run_id) max by (run_id, user, project) ({RUN_RAW_INFO}{{{U},{P}}}))")


def run_forecast() -> str:
    rate = f"sum by (run_id) (rate({RUN_EMISSIONS_COUNTER}[$__rate_interval]))"
    left = "clamp_min(max by (run_id) (carbonwatch_run_expected_end_time_seconds) - time(), 0)"
    return f"{run_emissions()} + on(run_id) {rate} * on(run_id) {left}"


def runs_row() -> Row:
    used = f"{run_emissions()} / on(run_id) ({run_budgets()} > 0)"
    return Row("Runs", [
        bargauge_panel("Run budget used", RATIO, "Each run's CO2e divided by its own budget (the ledger's figures "
                       "where one runs). Click a bar to open the run.",
                       Q(f"sort_desc({used} * on(run_id) group_left(user, project) {run_owners()})",
                         "{{run_id}} ({{user}})"), lcd=True, links=(links.run_series(),)),
        table_panel("Runs forecast over budget", GRAMS, "Runs whose forecast CO2e at their expected end (at the "
                    "current emission rate) is above their budget.",
                    Q(f"{run_forecast()} > on(run_id) {run_budgets()}", instant=True, table=True),
                    links=(links.run_column(),)),
    ])


def dashboard() -> Board:
    alerts = Row("Alerts", [
        table_panel("Firing carbonwatch alerts", NONE, "carbonwatch alerts firing now (Alertmanager routes them "
                    "to the receivers).", Q('ALERTS{alertname=~"Carbonwatch.*", alertstate="firing"}',
                                            instant=True, table=True), w=24),
    ])
    return board(
        "carbonwatch-budgets", "carbonwatch / Budgets",
        "CO2e budgets per user and project (alerting/budgets.yml), run budgets, alerts.",
        [
            Var("period", "Budget period", "1d,30d", multi=False, include_all=False, kind="custom", default="30d"),
            Var("user", "User", f"label_values({RUN_INFO}, user)"),
            Var("project", "Project", f"label_values({RUN_INFO}{{{U}}}, project)"),
        ],
        [who_row("user", U), who_row("project", P), runs_row(), alerts],
        time_from="now-7d",
    )
