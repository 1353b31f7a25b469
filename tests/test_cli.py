"""The `carbonwatch` command line as a user meets it: help texts, unknown flags, environment variable names."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from carbonwatch import cli
from tests.support import run_cli

REPO = Path(__file__).resolve().parents[1]
Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`carbonwatch ARGS...` in this process, as the console script runs it: (exit status, stdout, stderr)."""

    def call(*argv: str) -> subprocess.CompletedProcess[str]:
        return run_cli(capsys, argv)

    return call


def test_the_console_script_exits_2_with_the_usage_of_its_command() -> None:
    r = subprocess.run([sys.executable, "-m", "carbonwatch", "report", "r1", "--bogus"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("usage: carbonwatch report")


def test_top_level_help_speaks_to_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "module" not in out and "imported" not in out
    assert "carbonwatch stack up" in out and "carbonwatch run" in out and "Exit codes" in out


@pytest.mark.parametrize(
    "command", ["report r1", "job 1", "intensity", "exporter", "runs", "budgets render", "stack status"])
def test_an_unknown_flag_prints_the_usage_of_its_command(command: str, run: Runner) -> None:
    r = run(*command.split(), "--no-such-flag")
    name = command.split()[0] if command != "stack status" else command
    assert r.returncode == 2
    assert f"usage: carbonwatch {name}" in r.stderr and "unrecognized arguments: --no-such-flag" in r.stderr


def test_stack_up_intervals_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["stack", "up", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--scrape-interval DURATION\s+how often Prometheus scrapes", out)
    assert re.search(r"--evaluation-interval DURATION\s+how often Prometheus evaluates", out)


def test_one_name_for_each_environment_variable(run: Runner) -> None:
    """CARBONWATCH_PROMETHEUS, CARBONWATCH_PUSHGATEWAY and CARBONWATCH_LEDGER, never a *_URL variant, in the
    code, the docs, the deploy files and the help of every command."""
    texts = [p for pattern in ("exporter/carbonwatch/**/*.py", "docs/*.md", "README.md", "deploy/**/*",
                               "docker-compose.yml", "grafana/provisioning/**/*.yml", "scripts/*")
             for p in REPO.glob(pattern) if p.is_file()]
    offenders = []
    for p in texts:
        text = p.read_text(errors="replace")
        for m in re.finditer(r"CARBONWATCH_(PROMETHEUS|PUSHGATEWAY|LEDGER)_URL", text):
            line = text[: m.start()].count("\n") + 1
            if not {"LEGACY", "ignored"} & set(re.findall(r"\w+", text.splitlines()[line - 1])):  # the old name read
                offenders.append(f"{p.relative_to(REPO)}:{line}")
    assert offenders == []
    for command in ("run", "report", "job"):
        help_text = run(command, "--help").stdout
        assert "CARBONWATCH_PROMETHEUS" in help_text and "CARBONWATCH_PROMETHEUS_" not in help_text
