"""`carbonwatch budgets`: alerting/budgets.yml -> alerting/budgets.rules.yml."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from carbonwatch.budgets import Budget, parse_budgets, render_file, render_rules
from carbonwatch.cli import main as cli_main
from carbonwatch.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_committed_rules_file_is_up_to_date() -> None:
    assert (ROOT / "alerting" / "budgets.rules.yml").read_text() == render_file(ROOT / "alerting" / "budgets.yml")


def test_parse_gives_one_budget_per_period() -> None:
    got = parse_budgets(
        "users:\n  alice: {daily_grams: 2000, monthly_grams: 45000.0}\nprojects:\n  p1:\n    monthly_grams: 10\n"
    )
    assert got == [
        Budget("project", "p1", "30d", 10.0),
        Budget("user", "alice", "1d", 2000.0),
        Budget("user", "alice", "30d", 45000.0),
    ]


def test_rendered_rules_carry_labels_and_values() -> None:
    text = render_rules(parse_budgets('users:\n  "o\'neil": {daily_grams: 12.5}\n'))
    rule = yaml.safe_load(text)["groups"][0]["rules"][0]
    assert rule == {"record": "user_period:carbonwatch_budget_grams:limit", "expr": "vector(12.5)",
                    "labels": {"user": "o'neil", "period": "1d"}}
    assert yaml.safe_load(render_rules([]))["groups"][0]["rules"] == []


@pytest.mark.parametrize(
    "text, key",
    [
        ("teams:\n  a: {daily_grams: 1}\n", "teams: unknown key"),
        ("users:\n  alice: {weekly_grams: 1}\n", "users.alice.weekly_grams: unknown key"),
        ("users:\n  alice: {daily_grams: lots}\n", "users.alice.daily_grams: expected a number"),
        ("users:\n  alice: {daily_grams: -5}\n", "users.alice.daily_grams: must be more than 0"),
        ("users:\n  alice: {daily_grams: true}\n", "users.alice.daily_grams: expected a number"),
        ("projects:\n  p: 100\n", "projects.p: expected daily_grams"),
        ("users: [alice]\n", "users: expected a mapping"),
        ("users:\n  'a b': {daily_grams: 1}\n", "users.a b: 'a b' is not a usable user name"),
        ("users: {alice: {daily_grams: 1}\n", "not valid YAML"),
    ],
)
def test_bad_budgets_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_budgets(text, "budgets.yml")
    assert str(exc.value).startswith("budgets.yml: ") and key in str(exc.value)


def test_cli_render_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = tmp_path / "b.yml", tmp_path / "b.rules.yml"
    src.write_text("projects:\n  vision: {monthly_grams: 100000}\n")
    assert cli_main(["budgets", "check", "--file", str(src), "--output", str(out)]) == 1
    assert cli_main(["budgets", "render", "--file", str(src), "--output", str(out)]) == 0
    assert 'project: "vision"' in out.read_text()
    assert cli_main(["budgets", "check", "--file", str(src), "--output", str(out)]) == 0
    src.write_text("projects:\n  vision: {monthly_grams: 0}\n")
    assert cli_main(["budgets", "render", "--file", str(src), "--output", str(out)]) == 2
    assert "projects.vision.monthly_grams" in capsys.readouterr().err


def test_cli_defaults_work_from_the_repo_root() -> None:
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert cli_main(["budgets", "check"]) == 0
    finally:
        os.chdir(cwd)
