"""Grafana dashboards and provisioning: the committed JSON is the generator's output, every panel has a unit,
a description and the `${datasource}` variable, every query parses (promtool) and names series that exist."""

from __future__ import annotations

import glob
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from carbonwatch import dashboards
from carbonwatch.contracts import SPECS

ROOT = Path(__file__).resolve().parents[2]
DASH_DIR = ROOT / "grafana" / "dashboards"
PROVISIONING = ROOT / "grafana" / "provisioning"

# Series the run client pushes (contract) and Prometheus' own.
RUN_CLIENT = {
    "carbonwatch_run_info",
    "carbonwatch_run_start_time_seconds",
    "carbonwatch_run_end_time_seconds",
    "carbonwatch_run_budget_grams",
    "carbonwatch_run_expected_end_time_seconds",
    "carbonwatch_run_epoch",
    "carbonwatch_run_samples_total",
    "carbonwatch_run_phase_info",
    "carbonwatch_run_last_push_time_seconds",
    "carbonwatch_run_metric",
}
PROMETHEUS_OWN = {"ALERTS", "ALERTS_FOR_STATE", "up"}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "topk", "bottomk", "by", "without", "on", "ignoring", "group_left",
    "group_right", "or", "and", "unless", "increase", "rate", "last_over_time", "max_over_time", "label_replace",
    "sort_desc", "sort", "time", "vector", "group", "bool", "offset",
}  # fmt: skip


def committed() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASH_DIR.glob("*.json"))}


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in d["panels"] if p["type"] != "row"]


def test_committed_json_is_the_generators_output(tmp_path: Path) -> None:
    dashboards.write_all(tmp_path)
    generated = sorted(p.name for p in tmp_path.glob("*.json"))
    assert generated == sorted(p.name for p in DASH_DIR.glob("*.json"))
    for name in generated:
        assert (DASH_DIR / name).read_text(encoding="utf-8") == (tmp_path / name).read_text(encoding="utf-8"), (
            f"grafana/dashboards/{name} is stale: run `python -m carbonwatch.dashboards`"
        )


def test_the_four_dashboards_have_fixed_unique_uids_and_tags() -> None:
    ds = committed()
    assert set(ds) == {"fleet", "run", "node", "budgets"}
    uids = [d["uid"] for d in ds.values()]
    assert len(set(uids)) == 4 and all(re.fullmatch(r"carbonwatch-[a-z]+", u) for u in uids)
    for d in ds.values():
        assert "carbonwatch" in d["tags"]
        assert d["title"].startswith("carbonwatch / ")


def test_datasource_variable_defaults_to_the_provisioned_datasource() -> None:
    prov = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = prov["datasources"]
    assert source["uid"] == "carbonwatch-prometheus" and source["type"] == "prometheus"
    for name, d in committed().items():
        (var,) = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
        assert var["type"] == "datasource" and var["query"] == "prometheus", name
        assert var["current"]["value"] == source["uid"], name


def test_every_panel_has_unit_description_datasource_and_a_query() -> None:
    for name, d in committed().items():
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in panels(d):
            where = f"{name}: {p['title']}"
            assert p["fieldConfig"]["defaults"]["unit"], where
            assert len(p["description"]) > 20, where
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert p["targets"], where
            for t in p["targets"]:
                assert t["expr"].strip() and t["datasource"]["uid"] == "${datasource}", where


def test_panels_fit_the_grid_without_overlapping() -> None:
    for name, d in committed().items():
        taken: set[tuple[int, int]] = set()
        for p in d["panels"]:
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, (name, p["title"])
            cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & taken, (name, p["title"])
            taken |= cells


def test_variables_are_chained_label_values_queries() -> None:
    for name, d in committed().items():
        seen = {"datasource"}
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                assert v["definition"].startswith("label_values("), (name, v["name"])
                assert v["datasource"]["uid"] == "${datasource}"
                # A variable uses only the variables defined before it.
                assert dashboards.variables_in(v["definition"]) <= seen, (name, v["name"])
            seen.add(v["name"])
        used = set().union(*(dashboards.variables_in(t["expr"]) for p in panels(d) for t in p["targets"]))
        assert used <= seen | set(dashboards.BUILTINS), (name, used - seen)
    run = committed()["run"]
    (run_id,) = [v for v in run["templating"]["list"] if v["name"] == "run_id"]
    assert "$user" in run_id["definition"] and run_id["multi"] is False


def test_substitute_replaces_variables_and_names_a_missing_one() -> None:
    expr = 'x{run_id="$run_id", user=~"${user}"}[$__rate_interval]'
    assert dashboards.substitute(expr, {"run_id": "r1", "user": ".*"}) == 'x{run_id="r1", user=~".*"}[1m]'
    with pytest.raises(KeyError, match="run_id"):
        dashboards.substitute(expr, {"user": "u"})
    assert dashboards.label_values_query('label_values(m{a="1"}, b)') == 'group by (b) (m{a="1"})'


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query, variables substituted, becomes a recording rule that promtool parses."""
    values = {
        "run_id": "r1",
        "period": "30d",
        **{v: ".*" for v in ("user", "project", "model", "zone", "instance", "gpu")},
    }
    qs = dashboards.queries()
    assert len(qs) > 50
    rules = [
        {"record": f"check:query{i}:expr", "expr": dashboards.substitute(q.expr, values)} for i, q in enumerate(qs)
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(rules)} rules found" in proc.stdout


def recorded_names() -> set[str]:
    names: set[str] = set()
    for f in glob.glob(str(ROOT / "prometheus" / "rules" / "*.yml")) + glob.glob(str(ROOT / "alerting" / "*.yml")):
        doc = yaml.safe_load(Path(f).read_text()) or {}
        for g in doc.get("groups", []) if isinstance(doc, dict) else []:
            names |= {r["record"] for r in g.get("rules", []) if "record" in r}
    return names


def series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers not followed by `(`, outside strings and by/on lists)."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set(re.findall(r"[A-Za-z_:][\w:]*(?!\w*\s*\()", text))
    return {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"[0-9.e]+", n)}


def test_every_series_a_panel_reads_is_recorded_exported_or_pushed() -> None:
    recorded = recorded_names()
    if not recorded:
        pytest.fail("no recording rules found in prometheus/rules/")
    exported = {s.exposed_name for s in SPECS}
    known = recorded | exported | RUN_CLIENT | PROMETHEUS_OWN
    missing: dict[str, set[str]] = {}
    for q in dashboards.queries():
        unknown = series_names(q.expr) - known
        if unknown:
            missing.setdefault(f"{q.dashboard}: {q.panel}", set()).update(unknown)
    assert not missing, missing


def test_series_names_finds_metric_names_only() -> None:
    expr = 'sum by (run_id) (rate(a:b:c{x="y z"}[5m])) * on(run_id) group_left(user) max(carbonwatch_x) or vector(0)'
    assert series_names(expr) == {"a:b:c", "carbonwatch_x"}


def test_gpu_only_panels_read_gpu_series_only() -> None:
    gpu = [q for q in dashboards.queries() if q.gpu_only]
    assert {q.dashboard for q in gpu} == {"carbonwatch-node"}
    for q in gpu:
        assert series_names(q.expr) <= {s.exposed_name for s in SPECS if s.name.startswith("carbonwatch_gpu_")}


def test_dashboard_provider_loads_the_committed_directory() -> None:
    prov = yaml.safe_load((PROVISIONING / "dashboards" / "carbonwatch.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "${CARBONWATCH_DASHBOARDS_DIR}"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    graf = compose["services"]["grafana"]
    # compose mounts grafana/dashboards where the provider looks, and the datasource at Prometheus.
    target = next(v.split(":")[1] for v in graf["volumes"] if v.startswith("./grafana/dashboards:"))
    assert graf["environment"]["CARBONWATCH_DASHBOARDS_DIR"] == target
    assert graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{target}/fleet.json"
