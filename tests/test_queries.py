"""Every PromQL recipe in docs/queries.md, evaluated by promtool against the accounting scenario of
tests/rules/accounting.test.yml (plus sample counts), with expected values from the direct calculation."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from carbonwatch.equivalents import FACTORS
from tests.test_rules import expected_accounting

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "queries.md"


def recipes() -> dict[str, str]:
    text = DOC.read_text()
    return {
        m.group(1).strip(): m.group(2).strip()
        for m in re.finditer(r"^### (.+?)\n+```promql\n(.*?)```", text, flags=re.S | re.M)
    }


def expectations(group: dict[str, Any]) -> dict[str, list[tuple[str, float]]]:
    calc = expected_accounting(group, 27)
    e, g = calc["energy"], calc["grams"]
    r1 = g[("run", "r1")]
    return {
        "Energy of a run, kWh": [('{run_id="r1"}', e[("run", "r1")] / 3.6e6)],
        "Emissions of a run, g CO2e (also after it ended)": [
            ('run_id:carbonwatch_emissions_grams:total{run_id="r2"}', g[("run", "r2")])],
        "Emissions of a run by component, g CO2e": [
            (f'run_id_component:carbonwatch_emissions_grams:total{{run_id="r1",component="{c}"}}',
             g[("run", "r1", c)]) for c in ("gpu", "cpu")],
        "Electricity cost of a run": [
            ('run_id:carbonwatch_cost:total{run_id="r1",currency="EUR"}', 0.042724609375)],
        "Top users this month, g CO2e over the last 30 days": [
            ('user:carbonwatch_emissions_grams:increase30d{user="alice"}', g[("user", "alice")]),
            ('user:carbonwatch_emissions_grams:increase30d{user="unknown"}', g[("user", "unknown")])],
        "Top projects today, g CO2e over the last 24 hours": [
            ('project:carbonwatch_emissions_grams:increase1d{project="llm-pretrain"}', r1),
            ('project:carbonwatch_emissions_grams:increase1d{project="unknown"}', g[("run", "r2")])],
        "Emissions by zone over the last day, g CO2e": [
            (f'zone:carbonwatch_emissions_grams:increase1d{{zone="{z}"}}', g[("zone", z)])
            for z in ("DE", "FR", "world")],
        "Joules per sample by model (mean over its running runs)": [
            ('{model="gpt-small"}', e[("run", "r1")] / 2700)],
        "Runs of one user with their emissions so far, g CO2e": [
            ('{run_id="r1",user="alice",project="llm-pretrain"}', r1)],
        "Grid intensity in use per zone and where it comes from, g CO2e/kWh": [
            ('zone:carbonwatch_grid_intensity_grams_per_kwh:current{zone="DE",source="electricitymaps"}', 100),
            ('zone:carbonwatch_grid_intensity_grams_per_kwh:current{zone="FR",source="table:owid-2023"}', 56),
            ('zone:carbonwatch_grid_intensity_grams_per_kwh:current{zone="XX",source="default:world-ember-2023"}',
             481)],
        "Everyday equivalents of a run's emissions": [
            (f'run_id:carbonwatch_emissions_equivalent:total{{run_id="r1",equivalent="{f.name}"}}',
             r1 / f.grams_per_unit) for f in FACTORS],
    }


def test_every_recipe_has_an_expectation() -> None:
    group = yaml.safe_load((ROOT / "tests" / "rules" / "accounting.test.yml").read_text())["tests"][0]
    assert set(recipes()) == set(expectations(group))


@pytest.mark.slow
def test_recipes_give_the_expected_answers(tmp_path: Path) -> None:
    test = yaml.safe_load((ROOT / "tests" / "rules" / "accounting.test.yml").read_text())
    group = test["tests"][0]
    want = expectations(group)
    group["input_series"].append({
        "series": 'carbonwatch_run_samples_total{job="carbonwatch_run",instance="",run_id="r1"}',
        "values": "0+100x27",
    })
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
