"""carbonwatch / Run: one training run's power, energy and CO2e against its budget, progress and efficiency.

Every panel answers within the first minute of a run: totals come from the ledger where one runs (exact
across nodes, requeues and gaps) and else from the 30 s contract series; rates, power, forecast, cost and
efficiency are computed here from the exporters' counters and the run client's series, never from the
2- or 4-minute rule groups or the 5-minute copies.
"""

from __future__ import annotations

from grafana_foundation_sdk.models.common import BigValueTextMode

from carbonwatch.contracts import JOULES_PER_KWH, RUN_LABELS
from carbonwatch.dashboards.board import Board, Row, Var, board
from carbonwatch.dashboards.panels import (
    COUNT,
    GRAMS,
    GRAMS_PER_SECOND,
    JOULE,
    NONE,
    RATIO,
    SECONDS,
    WATT,
    Q,
    bargauge_panel,
    stat_panel,
    table_panel,
    timeline_panel,
    timeseries_panel,
)
from carbonwatch.dashboards.series import (
    LEDGER_RUN_BUDGET,
    LEDGER_RUN_COMPONENT_ENERGY,
    LEDGER_RUN_COST,
    LEDGER_RUN_EMISSIONS,
    LEDGER_RUN_ENERGY,
    RUN_BUDGET,
    RUN_EMISSIONS,
    RUN_EMISSIONS_COUNTER,
    RUN_ENERGY,
    RUN_ENERGY_COUNTER,
    RUN_INFO,
    RUN_POWER,
    RUN_RAW_INFO,
)
from carbonwatch.equivalents import FACTORS

R = 'run_id="$run_id"'
WHO = "run_id, " + ", ".join(RUN_LABELS)


def total(ledger: str, contract: str, *, instant: bool) -> str:
    """The run's total: the ledger's figure, else the contract series. Instant queries take the last ledger
    value and the largest contract value in the time range, so a finished run keeps its total."""
    if instant:
        return f"max(last_over_time({ledger}{{{R}}}[$__range])) or max(max_over_time({contract}{{{R}}}[$__range]))"
    return f"max({ledger}{{{R}}}) or max({contract}{{{R}}})"


def budget(*, instant: bool) -> str:
    if instant:
        return (f"max(last_over_time({RUN_BUDGET}{{{R}}}[$__range])) "
                f"or max(last_over_time({LEDGER_RUN_BUDGET}{{{R}}}[$__range]))")
    return f"max({RUN_BUDGET}{{{R}}}) or max({LEDGER_RUN_BUDGET}{{{R}}})"


def emission_rate() -> str:
    return f"sum(rate({RUN_EMISSIONS_COUNTER}{{{R}}}[$__rate_interval]))"


def forecast(*, instant: bool) -> str:
    left = f"clamp_min(max(carbonwatch_run_expected_end_time_seconds{{{R}}}) - time(), 0)"
    return f"({total(LEDGER_RUN_EMISSIONS, RUN_EMISSIONS, instant=instant)}) + {emission_rate()} * {left}"


def cost() -> str:
    ledger = f"max by (currency) (last_over_time({LEDGER_RUN_COST}{{{R}}}[$__range]))"
    counters = (f"sum by (currency) (sum by (instance) (last_over_time({RUN_ENERGY_COUNTER}{{{R}}}[$__range])) "
                f"/ {JOULES_PER_KWH:g} * on(instance) group_left(currency) "
                "instance:carbonwatch_electricity_price_per_kwh:current)")
    return f"{ledger} or on() {counters}"


def info() -> str:
    return (f"max by ({WHO}, origin) ({RUN_RAW_INFO}{{{R}}}) "
            f"or on(run_id) max by ({WHO}) (last_over_time({LEDGER_RUN_ENERGY}{{{R}}}[$__range]))")


def duration() -> str:
    end = f"max(last_over_time(carbonwatch_run_end_time_seconds{{{R}}}[$__range]))"
    start = f"max(last_over_time(carbonwatch_run_start_time_seconds{{{R}}}[$__range]))"
    return f"({end} - {start}) or (time() - {start})"


def equivalents() -> str:
    emissions = total(LEDGER_RUN_EMISSIONS, RUN_EMISSIONS, instant=False)
    return " or ".join(f'label_replace(({emissions}) / {f.grams_per_unit!r}, "equivalent", "{f.name}", "", "")'
                       for f in FACTORS)


def summary_row() -> Row:
    return Row("Summary", [
        table_panel("Run", NONE, "Who ran it, which model and project, and where those labels came from (`origin`: "
                    "the run client (empty), or what the node knew: env, registration, kubernetes, slurm; the "
                    "ledger's labels once the run's own series are gone).", Q(info(), instant=True, table=True), h=4),
        stat_panel("Status", NONE, "Status the run client last pushed (running, succeeded, failed, stopped), "
                   "else the one the ledger keeps.",
                   Q(f'group by (status) ({RUN_RAW_INFO}{{{R},status!=""}}) '
                     f"or on() group by (status) ({LEDGER_RUN_ENERGY}{{{R}}})", "{{status}}"),
                   h=4, text=BigValueTextMode.NAME, graph=False),
        stat_panel("Duration", SECONDS, "From the run's start to its end (or to now while it runs).",
                   Q(duration()), h=4, graph=False),
        stat_panel("Energy", JOULE, "Energy of the run, all nodes and components (3.6 MJ = 1 kWh): the ledger's "
                   "exact total where one runs, else the 30 s contract series (kept after the run ends).",
                   Q(total(LEDGER_RUN_ENERGY, RUN_ENERGY, instant=True), instant=True), w=4),
        stat_panel("CO2e", GRAMS, "CO2e of the run: each sample's energy at its zone's intensity at that moment "
                   "(the ledger's total where one runs, else the contract series).",
                   Q(total(LEDGER_RUN_EMISSIONS, RUN_EMISSIONS, instant=True), instant=True), w=4),
        stat_panel("Budget used", RATIO, "CO2e so far divided by the run's budget (as pushed, else as the ledger "
                   "keeps it).", Q(f"({total(LEDGER_RUN_EMISSIONS, RUN_EMISSIONS, instant=True)}) / "
                                   f"(({budget(instant=True)}) > 0)", instant=True), w=4, background=True,
                   thresholds=((0.8, "orange"), (1.0, "red"))),
        stat_panel("Forecast at end", GRAMS, "CO2e expected at the run's expected end if it keeps its current "
                   "emission rate.", Q(forecast(instant=True), instant=True), w=4),
        stat_panel("Cost", NONE, "Electricity cost of the run (its energy at each node's price) in the zone's "
                   "currency: the ledger's where one runs, else from the exporters' counters.",
                   Q(cost(), "{{currency}}", instant=True), w=4, text=BigValueTextMode.VALUE_AND_NAME),
        stat_panel("Emission rate", GRAMS_PER_SECOND, "CO2e per second now (rate of the exporters' emissions "
                   "counters).", Q(emission_rate()), w=4),
    ])


def energy_row() -> Row:
    by_component = (f"max by (component) ({LEDGER_RUN_COMPONENT_ENERGY}{{{R}}}) "
                    f"or sum by (component) ({RUN_ENERGY_COUNTER}{{{R}}})")
    return Row("Energy and CO2e", [
        timeseries_panel("Power by component", WATT, "Power attributed to the run on every node, split into GPU, "
                         "CPU and memory.", Q(f"sum by (component) ({RUN_POWER}{{{R}}})", "{{component}}"),
                         stack=True),
        timeseries_panel("Cumulative energy by component", JOULE, "Energy attributed to the run since its start, "
                         "per component (the ledger's where one runs, else the exporters' counters).",
                         Q(by_component, "{{component}}"), stack=True),
        timeseries_panel("CO2e against the budget", GRAMS, "Cumulative CO2e of the run, its budget line and the "
                         "forecast at its expected end.",
                         Q(total(LEDGER_RUN_EMISSIONS, RUN_EMISSIONS, instant=False), "CO2e"),
                         Q(budget(instant=False), "budget"), Q(forecast(instant=False), "forecast"), w=24, h=9),
    ])


def progress_row() -> Row:
    energy = total(LEDGER_RUN_ENERGY, RUN_ENERGY, instant=False)
    emissions = total(LEDGER_RUN_EMISSIONS, RUN_EMISSIONS, instant=False)
    return Row("Progress and efficiency", [
        timeline_panel("Phase", NONE, "The phase the run client last pushed (train, eval, ...).",
                       Q(f"max by (phase) (carbonwatch_run_phase_info{{{R}}}) > 0", "{{phase}}")),
        timeseries_panel("Epoch", COUNT, "Epoch the run last reported.",
                         Q(f"max(carbonwatch_run_epoch{{{R}}})", "epoch"), h=5),
        timeseries_panel("Energy per sample", "suffix: J/sample", "Run energy divided by the samples it "
                         "processed: lower is more efficient.",
                         Q(f"({energy}) / (max(carbonwatch_run_samples_total{{{R}}}) > 0)", "J/sample"), w=8),
        timeseries_panel("CO2e per epoch", "suffix: gCO₂e/epoch", "Run CO2e divided by the epochs completed.",
                         Q(f"({emissions}) / (max(carbonwatch_run_epoch{{{R}}}) > 0)", "g/epoch"), w=8),
        timeseries_panel("Training metrics", NONE, "The run's own metrics (loss, accuracy, ...).",
                         Q(f"carbonwatch_run_metric{{{R}}}", "{{name}}"), w=8),
    ])


def alerts_row() -> Row:
    return Row("Equivalents and alerts", [
        bargauge_panel("Everyday equivalents", NONE, "The run's CO2e as km driven by car, smartphone charges and "
                       "days of a tree's uptake (US EPA factors, see carbonwatch.equivalents).",
                       Q(equivalents(), "{{equivalent}}")),
        table_panel("Alerts for this run", NONE, "Alerts firing or pending for this run.",
                    Q(f"ALERTS{{{R}}}", instant=True, table=True)),
    ])


RUN_IDS = "|".join((RUN_INFO, RUN_RAW_INFO, LEDGER_RUN_ENERGY))


def dashboard() -> Board:
    return board(
        "carbonwatch-run", "carbonwatch / Run",
        "One training run: power, energy and CO2e against its budget, progress, efficiency.",
        [
            Var("user", "User", f'label_values({{__name__=~"{RUN_IDS}"}}, user)'),
            Var("run_id", "Run", f'label_values({{__name__=~"{RUN_IDS}",user=~"$user"}}, run_id)',
                multi=False, include_all=False),
        ],
        [summary_row(), energy_row(), progress_row(), alerts_row()],
        time_from="now-3h",
    )
