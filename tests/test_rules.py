"""The recording rules and alerts: promtool check and unit tests, coverage of every rule by a named test,
and an independent calculation of the accounting test's expected values."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from carbonwatch.equivalents import FACTORS
from carbonwatch.stackconfig import render_rules

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "prometheus" / "rules" / "carbonwatch.rules.yml"
ALERTS = ROOT / "alerting" / "alerts.yml"
BUDGET_RULES = ROOT / "alerting" / "budgets.rules.yml"
TESTS = sorted((ROOT / "tests" / "rules").glob("*.test.yml"))
SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>.*)\}$")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def all_rules() -> list[dict[str, Any]]:
    out = []
    for f in (RULES, ALERTS, BUDGET_RULES):
        for g in load(f)["groups"]:
            out += [dict(r, _group=g["name"], _file=f.name) for r in g["rules"] or []]
    return out


@pytest.mark.slow
def test_promtool_check_rules_is_clean() -> None:
    res = subprocess.run(["promtool", "check", "rules", str(RULES), str(ALERTS), str(BUDGET_RULES)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("test_file", TESTS, ids=[t.name for t in TESTS])
def test_promtool_unit_tests_pass(test_file: Path, tmp_path: Path) -> None:
    cwd = test_file.parent
    rendered = {m.group(1) for f in load(test_file)["rule_files"] if (m := re.match(r"rendered-(\w+)/", f))}
    if rendered:  # rules rendered for the test's interval, next to a copy of the test file
        (interval,) = rendered
        render_rules(ROOT, tmp_path / f"rendered-{interval}", interval)
        shutil.copy(test_file, tmp_path / test_file.name)
        cwd = tmp_path
    res = subprocess.run(["promtool", "test", "rules", test_file.name], cwd=cwd,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_recording_and_alerting_rule_has_a_named_test() -> None:
    exprs: list[str] = []
    alerts_tested: dict[str, set[str]] = {}
    for t in TESTS:
        for group in load(t)["tests"]:
            assert group.get("name"), f"{t.name}: every test group has a name that reads as a sentence"
            exprs += [e["expr"] for e in group.get("promql_expr_test") or []]
            for a in group.get("alert_rule_test") or []:
                alerts_tested.setdefault(a["alertname"], set()).add("firing" if a["exp_alerts"] else "quiet")
    for rule in all_rules():
        if "record" in rule:
            name = rule["record"]
            assert any(re.search(re.escape(name) + r"(?![a-z0-9_:])", e) for e in exprs), f"{name} untested"
        else:
            assert alerts_tested.get(rule["alert"]) == {"firing", "quiet"}, f"{rule['alert']} lacks a test"


def test_rules_follow_the_house_style() -> None:
    text = RULES.read_text()
    for rule in all_rules():
        if "record" in rule:
            level, metric, ops = rule["record"].split(":")
            assert level and ops and metric.startswith("carbonwatch_"), rule["record"]
            if rule["_file"] == RULES.name:  # a one-line comment right above each rule
                idx = text.index(f"- record: {rule['record']}\n")
                above = text[:idx].rstrip().splitlines()[-1].strip()
                assert above.startswith("#") or above.endswith("(contract series)."), rule["record"]
        else:
            assert rule["alert"].startswith("Carbonwatch") and rule.get("for"), rule["alert"]
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            ann = rule["annotations"]
            assert ann["summary"].endswith(".") and "{{" not in ann["summary"]
            assert "{{ $labels." in ann["description"]  # templated with the labels (and $value where useful)
            assert ann["runbook_url"] == f"docs/runbook.md#{rule['alert'].lower()}"
    runbook = (ROOT / "docs" / "runbook.md").read_text().lower()
    for rule in all_rules():
        if "alert" in rule:
            assert f"## {rule['alert'].lower()}" in runbook, f"runbook lacks {rule['alert']}"


def test_offsets_equal_their_group_interval() -> None:
    # The per-evaluation deltas telescope only when `offset` equals the group's interval.
    for g in load(RULES)["groups"]:
        for r in g["rules"]:
            for off in re.findall(r"offset\s+(\w+)", r["expr"]):
                assert off == g["interval"] or off in ("1d", "30d"), (r["record"], off)


def test_equivalent_factors_are_those_of_the_equivalents_module() -> None:
    expr = next(r["expr"] for r in all_rules() if r.get("record") == "run_id:carbonwatch_emissions_equivalent:total")
    found = dict(
        (m.group(2), float(m.group(1)))
        for m in re.finditer(r"/ ([0-9.]+),\s*\"equivalent\", \"(\w+)\"", expr)
    )
    assert found == {f.name: f.grams_per_unit for f in FACTORS}


# ---- independent calculation of tests/rules/accounting.test.yml -------------------------------------


def expand(values: str) -> list[float | None]:
    """promtool's expanding notation: `a+bxn`, `a-bxn`, `axn`, numbers, `stale` (None)."""
    out: list[float | None] = []
    for tok in values.split():
        if tok == "stale":
            out.append(None)
            continue
        m = re.fullmatch(r"(-?[0-9.e]+)(?:([+-][0-9.e]+))?x(\d+)", tok)
        if m:
            a, b, n = float(m.group(1)), float(m.group(2) or 0), int(m.group(3))
            out += [a + b * i for i in range(n + 1)]
        else:
            out.append(float(tok))
    return out


def parse_series(s: str) -> tuple[str, dict[str, str]]:
    m = SERIES.match(s)
    assert m, s
    return m.group("name"), dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))


def expected_accounting(group: dict[str, Any], step_end: int) -> dict[str, dict[tuple[str, ...], float]]:
    """Totals per (run, component), per run, per user and per zone after `step_end` steps, computed
    directly: sum over scrape intervals of counter increase (a drop is a restart: count from 0) x the
    intensity chosen for the node's zone at that step (live > table > world 481), / 3.6e6."""
    series = [(parse_series(s["series"]), expand(s["values"])) for s in group["input_series"]]
    zone_of = {lb["instance"]: lb["zone"] for (n, lb), _ in series if n == "carbonwatch_node_info"}

    def intensity(zone: str, k: int) -> float:
        ranked: list[tuple[int, float]] = []
        for (n, lb), vals in series:
            if n == "carbonwatch_grid_carbon_intensity_grams_per_kwh" and lb["zone"] == zone:
                v = vals[k] if k < len(vals) else None
                if v is not None:
                    src = lb["source"]
                    ranked.append((0 if not src.startswith(("table", "fallback")) else 1, v))
        return min(ranked)[1] if ranked else 481.0

    users = {lb["run_id"]: lb["user"] for (n, lb), _ in series if n == "carbonwatch_run_info"}
    energy: dict[tuple[str, ...], float] = {}
    grams: dict[tuple[str, ...], float] = {}
    for (n, lb), vals in series:
        if n != "carbonwatch_run_energy_joules_total":
            continue
        zone = zone_of.get(lb["instance"], "world")
        for k in range(1, min(step_end, len(vals) - 1) + 1):
            cur, prev = vals[k], vals[k - 1]
            if cur is None or prev is None:
                continue
            d = cur - prev if cur >= prev else cur
            g = d / 3.6e6 * intensity(zone, k)
            for key in (("run", lb["run_id"], lb["component"]), ("run", lb["run_id"]),
                        ("user", users.get(lb["run_id"], "unknown")), ("zone", zone)):
                energy[key] = energy.get(key, 0.0) + d
                grams[key] = grams.get(key, 0.0) + g
    return {"energy": energy, "grams": grams}


def test_accounting_test_expectations_equal_the_direct_calculation() -> None:
    group = load(ROOT / "tests" / "rules" / "accounting.test.yml")["tests"][0]
    calc = expected_accounting(group, 27)
    want: dict[str, tuple[str, dict[tuple[str, ...], float]]] = {
        "run_id_component:carbonwatch_energy_joules:total": ("run_id,component", calc["energy"]),
        "run_id_component:carbonwatch_emissions_grams:total": ("run_id,component", calc["grams"]),
        "run_id:carbonwatch_energy_joules:total": ("run_id", calc["energy"]),
        "run_id:carbonwatch_emissions_grams:total": ("run_id", calc["grams"]),
        "user:carbonwatch_emissions_grams:total": ("user", calc["grams"]),
        "zone:carbonwatch_emissions_grams:total": ("zone", calc["grams"]),
        "user:carbonwatch_energy_joules:total": ("user", calc["energy"]),
    }
    checked = 0
    for t in group["promql_expr_test"]:
        if t["expr"] not in want or t["eval_time"] != "405s":
            continue
        keys, table = want[t["expr"]]
        for s in t["exp_samples"]:
            _, lb = parse_series(s["labels"])
            kind = "run" if keys.startswith("run_id") else keys
            key = (kind, *(lb[k] for k in keys.split(",")))
            assert s["value"] == pytest.approx(table[key], rel=1e-12), (t["expr"], key)
            checked += 1
    assert checked >= 12
    # the run that ended after 75 s
    short = expected_accounting(group, 5)
    assert short["energy"][("run", "r2")] == 17578.125
    assert short["grams"][("run", "r2")] == 2.3486328125
