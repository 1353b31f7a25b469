"""The series names the dashboards read, each checked against its source when this module is imported.

Recorded series come from `carbonwatch.contracts.RECORDED` (or, for the period and node rules that no code
outside the dashboards reads, from prometheus/rules/, which tests/monitoring/test_dashboards.py checks);
exporter and run-client families from `carbonwatch.contracts`; the ledger's families are those of the ledger
contract (docs/ledger.md, `/metrics` of `carbonwatch ledger serve`).
"""

from __future__ import annotations

from carbonwatch.contracts import PUSHED, RECORDED, SPECS


def _recorded(name: str) -> str:
    if name not in RECORDED:
        raise ValueError(f"{name} is not a recorded series in carbonwatch.contracts.RECORDED")
    return name


def _served(name: str) -> str:
    if name not in {s.exposed_name for s in SPECS + PUSHED}:
        raise ValueError(f"{name} is not served by the exporter or pushed by the run client (contracts.py)")
    return name


RUN_ENERGY = _recorded("run_id:carbonwatch_energy_joules:total")  # 30 s contract series
RUN_EMISSIONS = _recorded("run_id:carbonwatch_emissions_grams:total")  # 30 s contract series
RUN_INFO = _recorded("run_id:carbonwatch_run_info:last")

RUN_ENERGY_COUNTER = _served("carbonwatch_run_energy_joules_total")
RUN_EMISSIONS_COUNTER = _served("carbonwatch_run_emissions_grams_total")
RUN_POWER = _served("carbonwatch_run_power_watts")
RUN_BUDGET = _served("carbonwatch_run_budget_grams")
RUN_RAW_INFO = _served("carbonwatch_run_info")

# The ledger's /metrics (ledger contract). Gauges unless the name ends in _total.
LEDGER_RUN_ENERGY = "carbonwatch_ledger_run_energy_joules"  # {run_id,user,project,model,team,status}
LEDGER_RUN_EMISSIONS = "carbonwatch_ledger_run_emissions_grams"  # {run_id,user,project,model,team,status}
LEDGER_RUN_COST = "carbonwatch_ledger_run_cost"  # {run_id,currency}
LEDGER_RUN_BUDGET = "carbonwatch_ledger_run_budget_grams"  # {run_id}
LEDGER_RUN_COMPONENT_ENERGY = "carbonwatch_ledger_run_component_energy_joules"  # {run_id,component}
LEDGER_RUN_COMPONENT_EMISSIONS = "carbonwatch_ledger_run_component_emissions_grams"  # {run_id,component}
LEDGER_SCOPES = ("user", "project", "team", "model", "zone")


def ledger_scope(scope: str, quantity: str) -> str:
    """`carbonwatch_ledger_<scope>_<quantity>` with labels {<scope>, period}; quantity energy_joules or
    emissions_grams."""
    if scope not in LEDGER_SCOPES or quantity not in ("energy_joules", "emissions_grams"):
        raise ValueError(f"no ledger family for scope {scope!r} and quantity {quantity!r}")
    return f"carbonwatch_ledger_{scope}_{quantity}"


LEDGER_HEALTH = (
    "carbonwatch_ledger_synced_until_timestamp_seconds",
    "carbonwatch_ledger_last_sync_timestamp_seconds",
    "carbonwatch_ledger_sync_lag_seconds",
    "carbonwatch_ledger_sync_duration_seconds",
    "carbonwatch_ledger_sync_errors_total",
    "carbonwatch_ledger_rows",
    "carbonwatch_ledger_info",
    "carbonwatch_ledger_schema_version",
    "carbonwatch_ledger_counter_resets_total",
    "carbonwatch_ledger_counter_reset_timestamp_seconds",
    "carbonwatch_ledger_estimated_joules",
)
LEDGER: frozenset[str] = frozenset(
    {LEDGER_RUN_ENERGY, LEDGER_RUN_EMISSIONS, LEDGER_RUN_COST, LEDGER_RUN_BUDGET, LEDGER_RUN_COMPONENT_ENERGY,
     LEDGER_RUN_COMPONENT_EMISSIONS, *LEDGER_HEALTH}
    | {ledger_scope(s, q) for s in LEDGER_SCOPES for q in ("energy_joules", "emissions_grams")}
)
