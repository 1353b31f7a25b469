"""stackconfig: the committed Prometheus config and rules, rendered for local targets and short intervals."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from carbonwatch.durations import format_duration, parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.stackconfig import render_prometheus_config, render_rules

ROOT = Path(__file__).resolve().parents[1]


def test_render_rules_rewrites_intervals_and_offsets_together(tmp_path: Path) -> None:
    paths = render_rules(ROOT, tmp_path, "5s")
    assert sorted(p.name for p in paths) == ["alerts.yml", "budgets.rules.yml", "carbonwatch.rules.yml"]
    rules = yaml.safe_load((tmp_path / "carbonwatch.rules.yml").read_text())
    intervals = {g["name"]: g.get("interval") for g in rules["groups"]}
    assert intervals["carbonwatch-accounting"] == "5s"
    assert intervals["carbonwatch-periods"] == "20s"  # 1m scaled by 5s/15s
    text = (tmp_path / "carbonwatch.rules.yml").read_text()
    assert "offset 5s" in text and "offset 15s" not in text
    assert "offset 1d" in text and "offset 30d" in text  # not interval-dependent: kept
    alerts = yaml.safe_load((tmp_path / "alerts.yml").read_text())
    assert all(r["for"] != "1s" for g in alerts["groups"] for r in g["rules"])


def test_for_override_for_fast_integration_tests(tmp_path: Path) -> None:
    render_rules(ROOT, tmp_path, "1s", for_override="2s")
    alerts = yaml.safe_load((tmp_path / "alerts.yml").read_text())
    assert {r["for"] for g in alerts["groups"] for r in g["rules"]} == {"2s"}


def test_bad_interval_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="evaluation_interval"):
        render_rules(ROOT, tmp_path, "fast")
    with pytest.raises(ConfigError, match="scrape_interval"):
        render_prometheus_config(ROOT, {}, [], "often", "5s", tmp_path)


@pytest.mark.slow
def test_rendered_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    rule_dir = tmp_path / "rules"
    render_rules(ROOT, rule_dir, "5s")
    text = render_prometheus_config(
        ROOT, {"carbonwatch": ["127.0.0.1:19860", "127.0.0.1:19861"], "pushgateway": ["127.0.0.1:19091"]},
        ["127.0.0.1:19093"], "1s", "5s", rule_dir,
    )
    cfg = yaml.safe_load(text)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"carbonwatch", "pushgateway"}
    assert jobs["pushgateway"]["honor_labels"] is True
    assert jobs["carbonwatch"]["static_configs"] == [{"targets": ["127.0.0.1:19860", "127.0.0.1:19861"]}]
    assert cfg["global"] == {"scrape_interval": "1s", "evaluation_interval": "5s"}
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19093"]
    (tmp_path / "prometheus.yml").write_text(text)
    res = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_committed_compose_config_passes_promtool() -> None:
    res = subprocess.run(["promtool", "check", "config", "--syntax-only", str(ROOT / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_rules_rendered_at_5s_give_the_same_totals(tmp_path: Path) -> None:
    """The accounting unit test, with every time divided by 3, passes against the rules rendered for a
    5 s evaluation interval: the same rules are exact at the test interval."""
    rule_dir = tmp_path / "rules"
    render_rules(ROOT, rule_dir, "5s")
    test = yaml.safe_load((ROOT / "tests" / "rules" / "accounting.test.yml").read_text())
    test["rule_files"] = [str(rule_dir / "carbonwatch.rules.yml")]
    test["evaluation_interval"] = "5s"
    for group in test["tests"]:
        group["interval"] = "5s"
        for t in group["promql_expr_test"]:
            t["eval_time"] = format_duration(parse_duration(t["eval_time"]) / 3)
            t["expr"] = re.sub(r"\[10m\]", "[4m]", t["expr"])
    (tmp_path / "t.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    res = subprocess.run(["promtool", "test", "rules", "t.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
