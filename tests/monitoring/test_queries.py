"""Every PromQL recipe in docs/queries.md, evaluated by promtool against the run scenario of
tests/rules/accounting.test.yml (plus sample counts and node counters), with expected values from the
counters' last values."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from carbonwatch.equivalents import FACTORS
from tests.monitoring.test_rules import counter_totals

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "queries.md"
SCENARIO = ROOT / "tests" / "rules" / "accounting.test.yml"
# Added to the scenario: the training client's sample count and the nodes' own emissions counters.
EXTRA_SERIES = [
    {"series": 'carbonwatch_run_samples_total{job="carbonwatch_run",instance="",run_id="r1"}', "values": "0+100x27"},
    {"series": 'carbonwatch_emissions_grams_total{instance="n1:9860",job="carbonwatch",component="gpu"}',
     "values": "0+2x27"},
    {"series": 'carbonwatch_emissions_grams_total{instance="n2:9860",job="carbonwatch",component="gpu"}',
     "values": "0+0.5x27"},
]


def recipes() -> dict[str, str]:
    text = DOC.read_text()
    return {
        m.group(1).strip(): m.group(2).strip()
        for m in re.finditer(r"^### (.+?)\n+```promql\n(.*?)```", text, flags=re.S | re.M)
    }


def expectations(group: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    calc = counter_totals(group, 27)
    e, g = calc["energy"], calc["grams"]
    r1, r2 = g[("r1",)], g[("r2",)]
    alice = 'user="alice",project="llm-pretrain",model="gpt-small",team="research"'
    nobody = 'user="unknown",project="unknown",model="unknown",team="unknown"'
    return {
        "Energy of a run, kWh": [('{run_id="r1"}', e[("r1",)] / 3.6e6)],
        "Emissions of a run, g CO2e (also after it ended)": [('{run_id="r2"}', r2)],
        "Emissions of a run by component, g CO2e": [
            (f'{{run_id="r1",component="{c}"}}', g[("r1", c)]) for c in ("gpu", "cpu")],
        "Energy of a run from its nodes' own counters, kWh (also for a run that moved between nodes)": [
            ('{run_id="r1"}', e[("r1",)] / 3.6e6)],
        # r1's 135/1024 kWh on n1 at 0.25 EUR/kWh (n2's zone has no price).
        "Electricity cost of a run": [('{run_id="r1",currency="EUR"}', 0.032958984375)],
        "Runs with the most emissions in the last 24 hours, with their user and project, g CO2e": [
            (f'run_id:carbonwatch_emissions_grams:increase1d{{run_id="r1",{alice}}}', r1),
            (f'run_id:carbonwatch_emissions_grams:increase1d{{run_id="r2",{nobody}}}', r2)],
        "Top users this month, g CO2e over the last 30 days": [
            ('user:carbonwatch_emissions_grams:increase30d{user="alice"}', r1),
            ('user:carbonwatch_emissions_grams:increase30d{user="unknown"}', r2)],
        "Top projects today, g CO2e over the last 24 hours": [
            ('project:carbonwatch_emissions_grams:increase1d{project="llm-pretrain"}', r1),
            ('project:carbonwatch_emissions_grams:increase1d{project="unknown"}', r2)],
        # The nodes' own counters: 27 steps of 2 g (n1, DE) and of 0.5 g (n2, FR).
        "Emissions by zone over the last day, all energy of its nodes (idle included), g CO2e": [
            ('zone:carbonwatch_emissions_grams:increase1d{zone="DE"}', 54.0),
            ('zone:carbonwatch_emissions_grams:increase1d{zone="FR"}', 13.5)],
        "Joules per sample by model (mean over its running runs)": [('{model="gpt-small"}', e[("r1",)] / 2700)],
        "Runs of one user with their emissions so far, g CO2e": [
            ('{run_id="r1",user="alice",project="llm-pretrain"}', r1)],
        "Where each run's labels come from (client, env, registration, parent, kubernetes, slurm, none)": [
            ('{origin="client"}', 1), ('{origin="none"}', 1), ('{origin="slurm"}', 1)],
        "Grid intensity in use per zone and where it comes from, g CO2e/kWh": [
            ('zone:carbonwatch_grid_intensity_grams_per_kwh:current{zone="DE",source="feed:electricitymaps"}', 100),
            ('zone:carbonwatch_grid_intensity_grams_per_kwh:current{zone="FR",source="table:owid-2023"}', 56)],
        "Everyday equivalents of a run's emissions": [
            (f'run_id:carbonwatch_emissions_equivalent:total{{run_id="r1",equivalent="{f.name}"}}',
             r1 / f.grams_per_unit) for f in FACTORS],
    }


def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
    test = yaml.safe_load(SCENARIO.read_text())
    group = test["tests"][0]
    group["input_series"] += EXTRA_SERIES
    return test, group


def test_every_recipe_has_an_expectation() -> None:
    _, group = scenario()
    assert set(recipes()) == set(expectations(group))


@pytest.mark.slow
def test_recipes_give_the_expected_answers(tmp_path: Path) -> None:
    test, group = scenario()
    want = expectations(group)
    group["promql_expr_test"] = [
        {"expr": q, "eval_time": "405s", "exp_samples": [{"labels": lb, "value": v} for lb, v in want[name]]}
        for name, q in recipes().items()
    ]
    test["tests"] = [group]
    test["rule_files"] = [str(ROOT / "prometheus" / "rules" / "carbonwatch.rules.yml")]
    (tmp_path / "q.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    res = subprocess.run(["promtool", "test", "rules", "q.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
