"""The recording rules and alerts: no rule depends on its own earlier output, promtool check and unit tests
(also with every other evaluation missed), coverage of every rule by a named test, the house style, and the
fault scenarios' test data checked against their hand calculation."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from carbonwatch.equivalents import FACTORS

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "rules" / "carbonwatch.rules.yml"
ALERTS = ROOT / "alerting" / "alerts.yml"
BUDGET_RULES = ROOT / "alerting" / "budgets.rules.yml"
RULE_FILES = [*sorted((ROOT / "prometheus" / "rules").glob("*.yml")), ALERTS, BUDGET_RULES]
TESTS = sorted((ROOT / "tests" / "rules").glob("*.test.yml"))
SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>.*)\}$")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def all_rules(files: Iterable[Path] = RULE_FILES) -> list[dict[str, Any]]:
    out = []
    for f in files:
        for g in load(f)["groups"]:
            out += [dict(r, _group=g["name"], _file=f.name) for r in g["rules"] or []]
    return out


# ---- no recorded series depends on its own earlier output ------------------------------------------


def dependencies(rules: list[dict[str, Any]]) -> dict[str, set[str]]:
    """For each recorded series, the recorded series its expressions read (names found anywhere in the
    expression, a `{__name__="..."}` matcher included)."""
    recorded = {r["record"] for r in rules if "record" in r}
    graph: dict[str, set[str]] = {name: set() for name in recorded}
    for r in rules:
        if "record" not in r:
            continue
        for name in recorded:
            if re.search(r"(?<![a-zA-Z0-9_:])" + re.escape(name) + r"(?![a-zA-Z0-9_:])", str(r["expr"])):
                graph[r["record"]].add(name)
    return graph


def self_dependent(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle of the dependency graph (a self-reference is a cycle of one), each as the path that
    closes it."""
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_recorded_series_depends_on_its_own_earlier_output() -> None:
    graph = dependencies(all_rules())
    assert self_dependent(graph) == []
    # and the contract series read the exporters' counters only
    assert graph["run_id:carbonwatch_energy_joules:total"] == set()
    assert graph["run_id:carbonwatch_emissions_grams:total"] == set()


def test_the_dependency_check_finds_self_references_and_cycles() -> None:
    rules = yaml.safe_load("""
groups:
  - name: g
    rules:
      - record: run_id:carbonwatch_energy_joules:total
        expr: run_id:carbonwatch_energy_joules:delta + last_over_time(run_id:carbonwatch_energy_joules:total[10m])
      - record: run_id:carbonwatch_energy_joules:delta
        expr: carbonwatch_run_energy_joules_total - carbonwatch_run_energy_joules_total offset 15s
      - record: a:carbonwatch_x:sum
        expr: sum(b:carbonwatch_x:sum)
      - record: b:carbonwatch_x:sum
        expr: sum({__name__="a:carbonwatch_x:sum"})
""")
    graph = dependencies(rules["groups"][0]["rules"])
    assert graph["run_id:carbonwatch_energy_joules:delta"] == set()
    assert sorted(map(sorted, self_dependent(graph))) == [
        ["a:carbonwatch_x:sum", "a:carbonwatch_x:sum", "b:carbonwatch_x:sum"],
        ["run_id:carbonwatch_energy_joules:total", "run_id:carbonwatch_energy_joules:total"],
    ]


# ---- promtool ---------------------------------------------------------------------------------------


def promtool_test(test_file: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "test", "rules", test_file.name], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_promtool_check_rules_is_clean() -> None:
    res = subprocess.run(["promtool", "check", "rules", *map(str, RULE_FILES)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("test_file", TESTS, ids=[t.name for t in TESTS])
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    res = promtool_test(test_file, test_file.parent)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_fault_scenarios_hold_with_every_other_rule_evaluation_missed(tmp_path: Path) -> None:
    """faults.test.yml's scenarios evaluated every 30 s over 15 s scrapes: every other evaluation is missed,
    and every total and per-day figure comes out the same (a rule that accumulated its own output would
    lose half of each run)."""
    test = load(ROOT / "tests" / "rules" / "faults.test.yml")
    test["rule_files"] = [str((ROOT / "tests" / "rules" / f).resolve()) for f in test["rule_files"]]
    test["evaluation_interval"] = "30s"
    group = test["tests"][0]
    assert group["name"].startswith("Totals come out exact")
    checked = [t for t in group["promql_expr_test"] if parse_seconds(t["eval_time"]) % 30 == 0]
    assert len(checked) == len(group["promql_expr_test"]) >= 10
    test["tests"] = [group]
    (tmp_path / "missed.test.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    res = promtool_test(tmp_path / "missed.test.yml", tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


# ---- coverage and house style -----------------------------------------------------------------------


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
    texts = {f.name: f.read_text() for f in RULE_FILES}
    for rule in all_rules():
        if "record" in rule:
            level, metric, ops = rule["record"].split(":")
            assert level and ops and metric.startswith("carbonwatch_"), rule["record"]
            if rule["_file"] != BUDGET_RULES.name:  # a one-line comment right above each rule (not generated)
                text = texts[rule["_file"]]
                idx = text.index(f"- record: {rule['record']}\n")
                above = text[:idx].rstrip().splitlines()[-1].strip()
                assert above.startswith("#"), rule["record"]
        else:
            assert rule["alert"].startswith("Carbonwatch") and rule.get("for"), rule["alert"]
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            ann = rule["annotations"]
            assert ann["summary"].endswith(".") and "{{" not in ann["summary"]
            assert "{{ $labels." in ann["description"]  # templated with the labels (and $value where useful)
            assert ann["runbook_url"] == f"docs/runbook.md#{rule['alert'].lower()}"
            # the text never states how long the condition has held: `for:` is overridden on short test stacks
            assert not re.search(r"has been [^.]*\d+ (minutes?|seconds?|hours?)", ann["description"]), rule["alert"]
    runbook = (ROOT / "docs" / "runbook.md").read_text().lower()
    for rule in all_rules():
        if "alert" in rule:
            assert f"## {rule['alert'].lower()}" in runbook, f"runbook lacks {rule['alert']}"


def test_no_group_interval_appears_in_an_expression() -> None:
    """Windows and offsets are bridging spans (15m and longer) and reporting periods, never a group's
    interval: nothing assumes that the previous evaluation happened."""
    for g in load(RULES)["groups"]:
        for r in g["rules"]:
            for window in re.findall(r"\[(\w+)\]|offset\s+(\w+)", r["expr"]):
                span = next(w for w in window if w)
                assert parse_seconds(span) >= 300 and span != g["interval"], (r["record"], span)


def test_equivalent_factors_are_those_of_the_equivalents_module() -> None:
    expr = next(r["expr"] for r in all_rules() if r.get("record") == "run_id:carbonwatch_emissions_equivalent:total")
    found = dict(
        (m.group(2), float(m.group(1)))
        for m in re.finditer(r"/ ([0-9.]+),\s*\"equivalent\", \"(\w+)\"", expr)
    )
    assert found == {f.name: f.grams_per_unit for f in FACTORS}


# ---- the test data against the hand calculation -----------------------------------------------------


def parse_seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", text)))


def expand(values: str) -> list[float | None]:
    """promtool's expanding notation: `a+bxn`, `a-bxn`, `axn`, `_xn` (missing), numbers, `stale` (None)."""
    out: list[float | None] = []
    for tok in values.split():
        if tok == "stale":
            out.append(None)
            continue
        m = re.fullmatch(r"_x(\d+)", tok)
        if m:
            out += [None] * int(m.group(1))
            continue
        m = re.fullmatch(r"(-?[0-9.e]+)(?:([+-][0-9.e]+))?x(\d+)", tok)
        if m:
            a, b, n = float(m.group(1)), float(m.group(2) or 0), int(m.group(3))
            out += [a + b * i for i in range(n + 1)]
        else:
            out.append(None if tok == "_" else float(tok))
    return out


def parse_series(s: str) -> tuple[str, dict[str, str]]:
    m = SERIES.match(s)
    assert m, s
    return m.group("name"), dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))


def counter_totals(group: dict[str, Any], step: int) -> dict[str, dict[tuple[str, ...], float]]:
    """What the run totals must be at `step`: per (run, component) and per run, the sum over nodes of each
    counter's last value at or before `step` within 15 minutes (60 steps of 15 s)."""
    out: dict[str, dict[tuple[str, ...], float]] = {"energy": {}, "grams": {}}
    kinds = {"carbonwatch_run_energy_joules_total": "energy", "carbonwatch_run_emissions_grams_total": "grams"}
    for s in group["input_series"]:
        name, lb = parse_series(s["series"])
        if name not in kinds:
            continue
        vals = expand(s["values"])[: step + 1]
        last = next((v for v in reversed(vals[-61:]) if v is not None), None)
        if last is None:
            continue
        for key in ((lb["run_id"], lb["component"]), (lb["run_id"],)):
            out[kinds[name]][key] = out[kinds[name]].get(key, 0.0) + last
    return out


def test_accounting_expectations_are_the_sums_of_the_counters_last_values() -> None:
    group = load(ROOT / "tests" / "rules" / "accounting.test.yml")["tests"][0]
    calc = counter_totals(group, 27)
    names = {
        "run_id:carbonwatch_energy_joules:total": ("energy", ("run_id",)),
        "run_id:carbonwatch_emissions_grams:total": ("grams", ("run_id",)),
        "run_id_component:carbonwatch_energy_joules:total": ("energy", ("run_id", "component")),
        "run_id_component:carbonwatch_emissions_grams:total": ("grams", ("run_id", "component")),
    }
    checked = 0
    for t in group["promql_expr_test"]:
        name = t["expr"].split("{")[0]
        if name not in names or t["eval_time"] != "405s":
            continue
        kind, keys = names[name]
        for s in t["exp_samples"]:
            _, lb = parse_series(s["labels"])
            assert s["value"] == calc[kind][tuple(lb[k] for k in keys)], (t["expr"], lb)
            checked += 1
    assert checked == 9


def test_fault_scenarios_data_match_the_hand_calculation() -> None:
    """Each run of faults.test.yml: 300 W (or 2 x 150 W) for an hour, so its counters end at 1,080,000 J in
    all, and every scraped emissions value is the sum of each 15 s step's energy at that step's intensity
    (100 g/kWh, or 500 from 1800 s for the runs that cross the step)."""
    group = load(ROOT / "tests" / "rules" / "faults.test.yml")["tests"][0]
    series = [(parse_series(s["series"]), expand(s["values"])) for s in group["input_series"]]
    energy = {(lb["instance"], lb["run_id"]): v for (n, lb), v in series if n == "carbonwatch_run_energy_joules_total"}
    grams = {(lb["instance"], lb["run_id"]): v for (n, lb), v in series if n == "carbonwatch_run_emissions_grams_total"}
    assert energy.keys() == grams.keys()
    stepped = {"outage", "step"}
    ends: dict[str, float] = {}
    for key, e in energy.items():
        assert len(e) == 241 and e[0] == 0 and e[-1] is not None
        watts = e[-1] / 3600
        exact_g = 0.0
        for k, g in enumerate(grams[key]):
            if k:
                intensity = 500 if key[1] in stepped and k > 120 else 100
                exact_g += watts * 15 / 3.6e6 * intensity
            if e[k] is not None:
                assert e[k] == pytest.approx(watts * 15 * k, rel=1e-12), (key, k)
                assert g == pytest.approx(exact_g, rel=1e-12, abs=1e-12), (key, k)
        ends[key[1]] = ends.get(key[1], 0.0) + e[-1]
    assert ends == {run: 1080000.0 for run in ("outage", "gap615", "gap12m", "pair", "restart", "step")}
