"""Grafana dashboards and provisioning: the committed JSON is the generator's output and valid against
Grafana's dashboard schema; every panel has a unit, a description and the `${datasource}` variable; every query
parses offline (promql-parser) and in promtool and names series that exist; run-level panels never wait for a
slow rule group; every link that carries a run id opens that run, whatever its characters."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import promql_parser
import pytest
import yaml

if sys.version_info < (3, 11):  # grafana-foundation-sdk (the test extra) needs 3.11
    pytest.skip("the dashboards' generator needs Python 3.11 (grafana-foundation-sdk)", allow_module_level=True)

from carbonwatch import dashboards  # noqa: E402
from carbonwatch.contracts import PUSHED, SPECS  # noqa: E402
from carbonwatch.dashboards import checks as dq  # noqa: E402
from carbonwatch.dashboards import series  # noqa: E402
from tests.support import Prometheus as RealPrometheus  # noqa: E402
from tests.support import free_ports  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DASH_DIR = ROOT / "grafana" / "dashboards"
PROVISIONING = ROOT / "grafana" / "provisioning"
SCHEMA_DIR = Path(__file__).with_name("grafana_schema")

PROMETHEUS_OWN = {"ALERTS", "ALERTS_FOR_STATE", "up"}
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "topk", "bottomk", "by", "without", "on", "ignoring", "group_left",
    "group_right", "or", "and", "unless", "increase", "rate", "last_over_time", "max_over_time", "label_replace",
    "sort_desc", "sort", "time", "vector", "group", "bool", "offset", "clamp_min",
}  # fmt: skip
# A value for every variable, as a check substitutes them.
VALUES = {"run_id": "r1", "period": "30d", **{v: ".*" for v in ("user", "project", "model", "zone", "instance", "gpu")}}
# A run id with every character that means something in a URL.
AWKWARD_RUN_ID = "sweep/lr=3e-4&bs=64#2 +é?"


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
            f"grafana/dashboards/{name} is stale: run `make dashboards`"
        )


def test_the_five_dashboards_have_fixed_unique_uids_and_tags() -> None:
    ds = committed()
    assert set(ds) == {"fleet", "run", "node", "budgets", "ledger"}
    uids = [d["uid"] for d in ds.values()]
    assert len(set(uids)) == 5 and all(re.fullmatch(r"carbonwatch-[a-z]+", u) for u in uids)
    for d in ds.values():
        assert "carbonwatch" in d["tags"] and d["editable"] is False
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
                assert v["query"].startswith("label_values("), (name, v["name"])
                assert v["datasource"]["uid"] == "${datasource}"
                # A variable uses only the variables defined before it.
                assert dashboards.variables_in(v["query"]) <= seen, (name, v["name"])
            seen.add(v["name"])
        used = set().union(*(dashboards.variables_in(t["expr"]) for p in panels(d) for t in p["targets"]))
        assert used <= seen | set(dashboards.BUILTINS), (name, used - seen)
    run = committed()["run"]
    (run_id,) = [v for v in run["templating"]["list"] if v["name"] == "run_id"]
    assert "$user" in run_id["query"] and run_id["multi"] is False
    # A run is offered as soon as the run client or an exporter names it, and as long as the ledger serves it.
    assert all(n in run_id["query"] for n in (series.RUN_RAW_INFO, series.LEDGER_RUN_ENERGY, series.RUN_INFO))


def test_substitute_replaces_variables_and_names_a_missing_one() -> None:
    expr = 'x{run_id="$run_id", user=~"${user}"}[$__rate_interval]'
    assert dashboards.substitute(expr, {"run_id": "r1", "user": ".*"}) == 'x{run_id="r1", user=~".*"}[1m]'
    with pytest.raises(KeyError, match="run_id"):
        dashboards.substitute(expr, {"user": "u"})
    assert dashboards.label_values_query('label_values(m{a="1"}, b)') == 'group by (b) (m{a="1"})'


def test_every_query_parses_offline() -> None:
    """promql-parser (the Prometheus parser, compiled) accepts each query with its variables substituted."""
    qs = dashboards.queries()
    assert len(qs) > 80
    failures = {}
    for q in qs:
        try:
            promql_parser.parse(dashboards.substitute(q.expr, VALUES))
        except ValueError as exc:
            failures[f"{q.dashboard}: {q.panel}"] = f"{exc}: {q.expr}"
    assert not failures, failures
    with pytest.raises(ValueError):  # the check can fail
        promql_parser.parse(dashboards.substitute("sum(rate(x[$__rate_interval])", VALUES))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_query_is_valid_promql_for_promtool(tmp_path: Path) -> None:
    """Each query, variables substituted, becomes a recording rule that promtool parses."""
    qs = dashboards.queries()
    rules = [{"record": f"check:query{i}:expr", "expr": dashboards.substitute(q.expr, VALUES)}
             for i, q in enumerate(qs)]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(rules)} rules found" in proc.stdout


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for f in glob.glob(str(ROOT / "prometheus" / "rules" / "*.yml")) + glob.glob(str(ROOT / "alerting" / "*.yml")):
        doc = yaml.safe_load(Path(f).read_text()) or {}
        groups += doc.get("groups", []) if isinstance(doc, dict) else []
    return groups


def seconds(duration: str) -> float:
    return promql_parser.parse_duration(duration).total_seconds()


def recorded_names(max_interval: float = float("inf")) -> set[str]:
    """Series recorded by a group evaluated at most every `max_interval` seconds (1m when it names none)."""
    return {r["record"] for g in rule_groups() if seconds(g.get("interval", "1m")) <= max_interval
            for r in g.get("rules", []) if "record" in r}


def series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers not followed by `(`, outside strings and by/on lists),
    and the names a `{__name__=~"a|b"}` selector lists."""
    listed = {n for alt in re.findall(r'__name__=~"([^"]*)"', expr) for n in alt.split("|")}
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set(re.findall(r"[A-Za-z_:][\w:]*(?!\w*\s*\()", text))
    return listed | {n for n in names if n not in PROMQL_WORDS and not re.fullmatch(r"[0-9.e]+", n)}


def test_every_series_a_panel_reads_is_recorded_exported_pushed_or_the_ledgers() -> None:
    recorded = recorded_names()
    assert recorded, "no recording rules found in prometheus/rules/"
    served = {s.exposed_name for s in SPECS + PUSHED}
    known = recorded | served | series.LEDGER | PROMETHEUS_OWN
    missing: dict[str, set[str]] = {}
    for q in dashboards.queries():
        unknown = series_names(q.expr) - known
        if unknown:
            missing.setdefault(f"{q.dashboard}: {q.panel}", set()).update(unknown)
    assert not missing, missing
    assert all(n.startswith("carbonwatch_ledger_") for n in series.LEDGER)


def test_series_names_finds_metric_names_only() -> None:
    expr = 'sum by (run_id) (rate(a:b:c{x="y z"}[5m])) * on(run_id) group_left(user) max(carbonwatch_x) or vector(0)'
    assert series_names(expr) == {"a:b:c", "carbonwatch_x"}
    assert series_names('group by (run_id) ({__name__=~"a|b:c",u=~"$u"})') == {"a", "b:c"}


def test_run_panels_answer_within_the_first_minute_of_a_run() -> None:
    """The Run dashboard reads raw series, the ledger and rules evaluated every 30 s, never a slower group
    (the 2-minute run group, the 4-minute details, the 5-minute copies)."""
    fast = recorded_names(max_interval=30)
    slow = recorded_names() - fast
    assert series.RUN_ENERGY in fast and "instance_run_id:carbonwatch_energy_joules:copy5m" in slow
    for q in dashboards.queries():
        if q.dashboard == "carbonwatch-run" and not q.panel.startswith("variable"):
            assert not series_names(q.expr) & slow, (q.panel, series_names(q.expr) & slow)
    # The variables may list a recorded run info, but not only it: a new run is offered at once.
    (run_var,) = [q for q in dashboards.queries() if q.dashboard == "carbonwatch-run" and q.panel == "variable run_id"]
    assert series_names(run_var.expr) - slow


def test_run_totals_come_from_the_ledger_else_the_contract_series() -> None:
    by_panel = {q.panel: q.expr for q in dashboards.queries() if q.dashboard == "carbonwatch-run"}
    for panel, ledger, contract in (("Energy", series.LEDGER_RUN_ENERGY, series.RUN_ENERGY),
                                    ("CO2e", series.LEDGER_RUN_EMISSIONS, series.RUN_EMISSIONS)):
        left, _, right = by_panel[panel].partition(" or ")
        assert ledger in left and contract in right, by_panel[panel]


def test_gpu_only_panels_read_gpu_series_only() -> None:
    gpu = [q for q in dashboards.queries() if q.gpu_only]
    assert {q.dashboard for q in gpu} == {"carbonwatch-node"}
    for q in gpu:
        assert series_names(q.expr) <= {s.exposed_name for s in SPECS if s.name.startswith("carbonwatch_gpu_")}


def test_ledger_only_panels_read_the_ledger_only() -> None:
    ledger = [q for q in dashboards.queries() if q.ledger_only]
    assert {q.dashboard for q in ledger} == {"carbonwatch-ledger"}
    assert len({q.panel for q in ledger}) >= 15
    for q in ledger:
        assert series_names(q.expr) <= series.LEDGER, q.panel


def run_links() -> list[tuple[str, str, str]]:
    return [(name, where, url) for name, d in committed().items() for where, url in dq.links_in(d)
            if "var-run_id" in url]


def test_every_link_with_a_run_id_percent_encodes_it() -> None:
    links = run_links()
    assert {(name, where) for name, where, _ in links} >= {
        ("fleet", "Top runs by CO2e"), ("budgets", "Run budget used"), ("budgets", "Runs forecast over budget"),
        ("ledger", "Top runs by CO2e"), ("ledger", "Runs")}
    for name, where, url in links:
        refs = re.findall(r"var-run_id=(\$\{[^}]*\})", url)
        assert refs and all(r.endswith(":percentencode}") for r in refs), (name, where, url)


@pytest.mark.parametrize("run_id", ["e2e-1a2b", "20250101-120000+node@a:b", AWKWARD_RUN_ID])
def test_a_link_opens_the_run_it_names_whatever_its_characters(run_id: str) -> None:
    """Each link rendered as Grafana interpolates it, then read back as a browser and Grafana read the URL."""
    values = {"__data.fields.run_id": run_id, "__value.raw": run_id, "__field.labels.run_id": run_id,
              "__url_time_range": "from=now-6h&to=now"}
    for name, where, url in run_links():
        rendered = urlsplit(dq.interpolate_link(url, values))
        assert rendered.path == "/d/carbonwatch-run/carbonwatch-run" and not rendered.fragment, (name, where)
        query = parse_qs(rendered.query, keep_blank_values=True)
        assert query["var-run_id"] == [run_id] and query["from"] == ["now-6h"], (name, where, rendered)


def test_the_link_check_fails_on_a_raw_run_id() -> None:
    raw = "/d/carbonwatch-run/carbonwatch-run?var-run_id=${__value.raw}&${__url_time_range}"
    rendered = urlsplit(dq.interpolate_link(raw, {"__value.raw": AWKWARD_RUN_ID, "__url_time_range": "from=a&to=b"}))
    assert parse_qs(rendered.query).get("var-run_id") != [AWKWARD_RUN_ID]
    assert dq.percentencode("a/b c!*'()") == "a%2Fb%20c%21%2A%27%28%29"  # encodeURIComponent, strict
    with pytest.raises(ValueError, match="percentencode"):
        dq.interpolate_link("?var-run_id=${__value.raw:raw}", {"__value.raw": "x"})


def schema(name: str, definition: str) -> jsonschema.Draft7Validator:
    """A validator for one definition of the SDK's JSON schema (grafana_schema/README.md says where from).
    Grafana's CUE leaves a field matcher's options and an override's value open (`_`); the generated schema
    spells that as an object, though Grafana writes a string (the field name) and a list (links) there."""
    doc = json.loads((SCHEMA_DIR / f"{name}.jsonschema.json").read_text())
    defs = doc["definitions"]
    if name == "dashboard":
        defs["MatcherConfig"]["properties"]["options"] = {}
        defs["DynamicConfigValue"]["properties"]["value"] = {}
    return jsonschema.Draft7Validator({"$ref": f"#/definitions/{definition}", "definitions": defs})


def schema_errors(d: dict[str, Any]) -> list[str]:
    out = [f"dashboard: {e.json_path}: {e.message[:200]}" for e in schema("dashboard", "Dashboard").iter_errors(d)]
    for p in panels(d):
        kind = p["type"].replace("-", "")
        checks = [(kind, "Options", p.get("options", {}))]
        if "custom" in p["fieldConfig"]["defaults"]:
            checks.append((kind, "FieldConfig", p["fieldConfig"]["defaults"]["custom"]))
        checks += [("prometheus", "dataquery", t) for t in p["targets"]]
        for name, definition, value in checks:
            out += [f"{p['title']}: {definition} {e.json_path}: {e.message[:200]}"
                    for e in schema(name, definition).iter_errors(value)]
    return out


def test_dashboards_are_valid_against_grafanas_dashboard_schema() -> None:
    for name, d in committed().items():
        assert not schema_errors(d), (name, schema_errors(d)[:10])
    broken = committed()["run"]
    first_stat = next(p for p in broken["panels"] if p["type"] == "stat")
    first_stat["gridPos"]["w"] = "12"
    first_stat["options"]["reduceOptions"]["calcs"] = "last"
    assert len(schema_errors(broken)) == 2  # the check can fail


def test_the_generator_stays_out_of_the_installed_commands() -> None:
    """Only the repository tool and the tests import the dashboards and the Grafana SDK."""
    pkg = ROOT / "exporter" / "carbonwatch"
    importers = [p for p in pkg.rglob("*.py") if "dashboards" not in p.relative_to(pkg).parts
                 and re.search(r"carbonwatch\.dashboards|carbonwatch import dashboards|grafana_foundation_sdk",
                               p.read_text(encoding="utf-8"))]
    assert not importers, importers
    code = ("import sys, carbonwatch.cli, carbonwatch.stack.launcher, carbonwatch.node.web\n"
            "assert not [m for m in sys.modules if m.startswith(('grafana_foundation_sdk', 'carbonwatch.dashboards'))]")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


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


WORKLOAD = """
import sys, time
import carbonwatch

with carbonwatch.run(model="mlp", total_epochs=1000) as run:
    deadline, epoch = time.time() + float(sys.argv[1]), 0
    while time.time() < deadline:
        epoch += 1
        run.epoch(epoch)
        run.phase("train")
        t, x = time.time(), 0
        while time.time() - t < 1.0:  # an epoch is one second of CPU
            for i in range(20000):
                x += i * i
            run.progress(samples=20000, loss=1.0 / epoch)
"""
# Run panels whose data the run itself does not produce in its first minute.
NOT_YET = {"Alerts for this run": "no alert fires for a run within its budget"}


@pytest.mark.slow
@pytest.mark.skipif(not all(shutil.which(b) for b in ("prometheus", "prometheus-pushgateway",
                                                      "prometheus-alertmanager")),
                    reason="Prometheus stack binaries not installed")
def test_on_a_fresh_stack_every_run_panel_answers_within_the_first_minute(tmp_path: Path) -> None:
    """`carbonwatch stack up` at its default intervals (15 s scrapes, the committed rule groups), no ledger;
    a run under `carbonwatch run`; 60 s after the run starts every query of every dashboard is accepted by
    the live Prometheus (through carbonwatch.promql) and every panel of the Run dashboard has data."""
    ports = free_ports(5)
    names = ("prometheus", "pushgateway", "alertmanager", "exporter", "grafana")
    state, cfg = tmp_path / "state", tmp_path / "exporter.yml"
    cfg.write_text("intensity:\n  provider: table\n  price_per_kwh: 0.25\n  currency: EUR\n")
    env = {**os.environ, "CARBONWATCH_RUNS_FILE": str(tmp_path / "runs.jsonl")}
    up = [sys.executable, "-m", "carbonwatch", "stack", "up", "--state-dir", str(state), "--no-grafana",
          "--no-settings-file", f"--exporter-arg=--config.file={cfg}"]
    up += [f"--{n}-port={p}" for n, p in zip(names, ports, strict=True)]
    prometheus, pushgateway = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    run_id = "first-minute-" + tmp_path.name[-6:].replace("_", "-")
    try:
        started = subprocess.run(up, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
        assert started.returncode == 0, started.stdout + started.stderr
        cmd = [sys.executable, "-m", "carbonwatch", "run", f"--pushgateway={pushgateway}", f"--run-id={run_id}",
               "--budget-grams=1000", "--user=alice", "--project=vision", "--model=mlp", "--team=t",
               "--", sys.executable, str(script), "90"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        time.sleep(60)
        values = {**dashboards.default_values(), "run_id": run_id, "user": "alice", "project": "vision"}
        results = dashboards.check_live(prometheus, values)
        proc.kill()
        proc.communicate()
    finally:
        subprocess.run([sys.executable, "-m", "carbonwatch", "stack", "down", "--state-dir", str(state)],
                       capture_output=True, timeout=60, env=env, cwd=ROOT)
    errors = [f"{q.dashboard} / {q.panel}: {err}" for q, err, _ in results if err]
    assert not errors, errors
    empty = sorted({q.panel for q, _, n in results if q.dashboard == "carbonwatch-run" and n == 0} - set(NOT_YET))
    assert not empty, f"Run panels without data 60 s into the run: {empty}"


def ledger_series(run_id: str, now: int) -> dict[str, list[tuple[str, float, int]]]:
    """What a ledger serves on /metrics for one run (the names and labels of the ledger contract), and the
    run's contract series at half the ledger's figure (as after a requeue the TSDB no longer sees whole)."""
    run = f'run_id="{run_id}",user="alice",project="vision",model="mlp",team="t",status="succeeded"'
    times = (now - 50, now - 20)
    fixed: dict[str, tuple[str, float]] = {
        series.LEDGER_RUN_ENERGY: (run, 2000.0), series.LEDGER_RUN_EMISSIONS: (run, 80.0),
        series.LEDGER_RUN_COST: (f'run_id="{run_id}",currency="EUR"', 0.01),
        series.LEDGER_RUN_BUDGET: (f'run_id="{run_id}"', 100.0),
        series.RUN_ENERGY: (f'run_id="{run_id}"', 1000.0),
        "carbonwatch_ledger_sync_lag_seconds": ("", 40.0), "carbonwatch_ledger_sync_duration_seconds": ("", 0.2),
        "carbonwatch_ledger_sync_errors_total": ("", 1.0), "carbonwatch_ledger_rows": ('table="buckets"', 9.0),
        "carbonwatch_ledger_counter_resets_total": ('instance="n1:9860"', 1.0),
        "carbonwatch_ledger_estimated_joules": ('instance="n1:9860"', 5.0),
    }
    out = {name: [(labels, value, t) for t in times] for name, (labels, value) in fixed.items()}
    for name in (series.LEDGER_RUN_COMPONENT_ENERGY, series.LEDGER_RUN_COMPONENT_EMISSIONS):
        out[name] = [(f'run_id="{run_id}",component="{c}"', 10.0, t) for c in ("gpu", "cpu") for t in times]
    for scope in series.LEDGER_SCOPES:
        value = {"user": "alice", "project": "vision", "team": "t", "model": "mlp", "zone": "DE"}[scope]
        for quantity in ("energy_joules", "emissions_grams"):
            out[series.ledger_scope(scope, quantity)] = [
                (f'{scope}="{value}",period="{p}"', 1.0, t) for p in ("day", "month", "1d", "30d") for t in times]
    return out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None or shutil.which("promtool") is None,
                    reason="prometheus and promtool not installed")
def test_the_ledger_panels_and_run_totals_read_the_ledgers_families(tmp_path: Path) -> None:
    """A real Prometheus holding what a ledger serves (contract names and labels): every Ledger panel and
    variable has data for every period, and the Run dashboard's totals are the ledger's, not the TSDB's."""
    run_id = "sweep-lr3e-4+bs64.2"
    prom = RealPrometheus.from_series(tmp_path, ledger_series(run_id, int(time.time())))
    try:
        client = dashboards.Prometheus(prom.url)
        for period in ("month", "day", "30d", "1d"):
            values = {**dashboards.default_values(), "period": period, "run_id": run_id}
            results = dq.check_live(client, [q for q in dashboards.queries() if q.ledger_only], values)
            assert not [r for r in results if r[1] or not r[2]], (period, [r for r in results if r[1] or not r[2]])
        run = {q.panel: dashboards.substitute(q.expr, {"run_id": run_id}) for q in dashboards.queries()
               if q.dashboard == "carbonwatch-run" and not q.panel.startswith("variable")}
        assert client.scalar(run["Energy"]) == 2000.0  # the ledger's, though the contract series says 1000
        assert client.scalar(run["CO2e"]) == 80.0 and client.scalar(run["Budget used"]) == 0.8
        assert client.by_label(run["Cost"], "currency") == {"EUR": 0.01}
        assert client.by_label(run["Status"], "status") == {"succeeded": 1.0}
    finally:
        prom.stop()
