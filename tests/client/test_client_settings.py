"""Run client settings, labels, the runs file and the summary: no servers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from carbonwatch.client import runsfile
from carbonwatch.client.labels import validate_label, validate_metric_name, validate_run_id
from carbonwatch.client.settings import default_runs_file, read_stack_file, resolve, write_stack_file
from carbonwatch.client.summary import build_record, format_summary
from carbonwatch.errors import ConfigError
from tests.support import config_error_cases


def test_precedence_is_file_then_env_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text("zone: DE\nrun:\n  pushgateway: file:9091\n  project: from-file\n  retention: 2m\n"
                   "intensity:\n  price_per_kwh: 0.3\n  currency: EUR\n")
    env = {"CARBONWATCH_PROJECT": "from-env", "CARBONWATCH_USER": "carol"}
    s = resolve({"pushgateway": "flag:9091"}, config_file=str(cfg), environ=env)
    assert (s.pushgateway, s.project, s.user, s.zone, s.retention) == ("flag:9091", "from-env", "carol", "DE", 120)
    assert (s.price_per_kwh, s.currency) == (0.3, "EUR")
    assert not s.local_mode
    assert resolve(environ={"CARBONWATCH_STACK": "none"}).local_mode


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("run:\n  pushgatway: x\n", "run.pushgatway: unknown key"),
        ("run:\n  retention: soon\n", "run.retention"),
        ("run:\n  on_budget: explode\n", "run.on_budget"),
        ("run:\n  local_meter: maybe\n", "run.local_meter"),
        ("zone: 'not a zone!'\n", "zone"),
        ("run: [1]\n", "run: expected a mapping"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, named: str) -> None:
    cfg = tmp_path / "bad.yml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        resolve(config_file=str(cfg), environ={})
    assert str(err.value).startswith(f"{cfg}: {named}")


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="^CARBONWATCH_ZONE"):
        resolve(environ={"CARBONWATCH_ZONE": "../x"})


def test_label_rules() -> None:
    assert validate_label("user", "{braces} and = , ;") == "{braces} and = , ;"
    assert validate_label("user", "ünïcode") == "ünïcode"
    # the exporter's rule too (carbonwatch.labels): quotes and backslashes break hand-written PromQL selectors
    for bad in ("a\nb", "x" * 129, "\x00", " lead", 'quote"', "back\\slash", "replaced\ufffd"):
        with pytest.raises(ConfigError, match="^user"):
            validate_label("user", bad)
    assert validate_run_id("2024-01-01T10:00_a@b+c") == "2024-01-01T10:00_a@b+c"
    for bad in ("", "-x", "a/b", "a b", "x" * 129):
        with pytest.raises(ConfigError, match="^run_id"):
            validate_run_id(bad)
    validate_metric_name("val/loss")
    with pytest.raises(ConfigError, match="^phase"):
        validate_metric_name("9lives", "phase")


def test_runs_file_appends_skips_broken_lines_and_writes_csv(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "runs.jsonl"
    rec = build_record(labels={"run_id": "a", "user": "u"}, status="succeeded", exit_code=0, start_time=10.0,
                       end_time=70.0, energy_joules={"cpu": 3.6e6, "memory": 0.0}, sources={"cpu": "rapl"},
                       zone="DE", grams_per_kwh=400.0, intensity_source="table:owid-2023", price_per_kwh=0.25,
                       currency="EUR", budget_grams=800.0)
    runsfile.append(path, rec)
    with path.open("a") as f:
        f.write('{"truncated": \n')
    runsfile.append(path, dict(rec, run_id="b"))
    got = runsfile.read(path)
    assert [r["run_id"] for r in got] == ["a", "b"]
    assert got[0]["emissions_grams"] == pytest.approx(400.0) and got[0]["cost"] == pytest.approx(0.25)
    csv_text = runsfile.to_csv(got)
    assert csv_text.splitlines()[1].startswith("a,u,")
    assert "3600000.0" in csv_text
    text = format_summary(got[0])
    assert "energy total  1 kWh" in text and "400 g CO2e" in text and "0.2500 EUR" in text and "50 % used" in text
    assert "[rapl]" in text and "EPA" in text
    json.dumps(got)  # stays JSON


def test_default_runs_file_honours_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_runs_file() == tmp_path / "carbonwatch" / "runs.jsonl"


def test_the_stack_settings_file_points_runs_at_the_stack(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "stack.json").write_text("{}")
    home = tmp_path / "config"
    write_stack_file(home / "carbonwatch" / "stack.env", {
        "CARBONWATCH_STACK_STATE_DIR": str(state),
        "CARBONWATCH_PUSHGATEWAY": "http://127.0.0.1:19091",
        "CARBONWATCH_PROMETHEUS": "http://127.0.0.1:${PROMETHEUS_PORT:-19090}",
    }, "written by a test")  # fmt: skip
    env = {"XDG_CONFIG_HOME": str(home)}
    s = resolve(environ=env)
    assert (s.pushgateway, s.prometheus) == ("http://127.0.0.1:19091", "http://127.0.0.1:19090")
    assert s.stack_file == str(home / "carbonwatch" / "stack.env") and not s.local_mode
    assert resolve(environ={**env, "PROMETHEUS_PORT": "29090"}).prometheus == "http://127.0.0.1:29090"
    # the config file, the environment and flags each win over it
    cfg = tmp_path / "c.yml"
    cfg.write_text("run:\n  pushgateway: file:9091\n")
    assert resolve(config_file=str(cfg), environ=env).pushgateway == "file:9091"
    assert resolve(environ={**env, "CARBONWATCH_PUSHGATEWAY": "env:9091"}).pushgateway == "env:9091"
    assert resolve({"pushgateway": "flag:9091"}, environ=env).pushgateway == "flag:9091"
    # CARBONWATCH_STACK=none reads no file; another path reads that one
    assert resolve(environ={**env, "CARBONWATCH_STACK": "none"}).local_mode
    other = write_stack_file(tmp_path / "other.env", {"CARBONWATCH_PUSHGATEWAY": "other:9091"})
    assert resolve(environ={**env, "CARBONWATCH_STACK": str(other)}).pushgateway == "other:9091"
    # a stopped stack's leftover file is ignored
    (state / "stack.json").unlink()
    assert resolve(environ=env).local_mode
    assert oct(other.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("CARBONWATCH_PUSHGATEWAY http://x\n", "line 1: expected NAME=value"),
        ("# ok\nCARBONWATCH_USER=alice\n", "line 2: CARBONWATCH_USER is not a stack setting"),
        ("CARBONWATCH_PUSHGATEWAY='unterminated\n", "line 1: CARBONWATCH_PUSHGATEWAY: No closing quotation"),
        ("CARBONWATCH_PUSHGATEWAY=a b\n", "line 1: CARBONWATCH_PUSHGATEWAY: quote a value with spaces"),
        ("CARBONWATCH_PUSHGATEWAY_INSECURE_SKIP_VERIFY=maybe\n", "CARBONWATCH_PUSHGATEWAY_INSECURE_SKIP_VERIFY"),
    ],
)
def test_a_bad_stack_settings_file_is_named(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "stack.env"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        resolve(environ={"CARBONWATCH_STACK": str(path)})
    assert named in str(err.value)
    assert str(err.value).startswith("CARBONWATCH_STACK") or "INSECURE" in named


def test_the_stack_settings_file_can_be_sourced_by_a_shell(tmp_path: Path) -> None:
    path = write_stack_file(tmp_path / "stack.env", {
        "CARBONWATCH_PUSHGATEWAY": "http://127.0.0.1:${PUSHGATEWAY_PORT:-9091}",
        "CARBONWATCH_PUSHGATEWAY_CA_FILE": str(tmp_path / "dir with space" / "ca.crt"),
    })  # fmt: skip
    out = subprocess.run(["sh", "-c", f'. "{path}"; echo "$CARBONWATCH_PUSHGATEWAY|$CARBONWATCH_PUSHGATEWAY_CA_FILE"'],
                         capture_output=True, text=True, timeout=10, env={"PUSHGATEWAY_PORT": "19091"})  # fmt: skip
    assert out.stdout.strip() == f"http://127.0.0.1:19091|{tmp_path / 'dir with space' / 'ca.crt'}"
    assert read_stack_file(path, {"PUSHGATEWAY_PORT": "19091"}) == {
        "CARBONWATCH_PUSHGATEWAY": "http://127.0.0.1:19091",
        "CARBONWATCH_PUSHGATEWAY_CA_FILE": str(tmp_path / "dir with space" / "ca.crt"),
    }


@pytest.mark.parametrize("path, expect", config_error_cases("client"), ids=lambda v: getattr(v, "stem", ""))
def test_every_config_mistake_names_the_key_and_the_file(path: Path, expect: str) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve(config_file=str(path), environ={"CARBONWATCH_STACK": "none"})
    assert expect in str(exc.value) and str(path) in str(exc.value)


def test_the_exporters_sections_in_a_shared_file_are_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "shared.yml"
    cfg.write_text("zone: FR\nsample_interval: 1s\ncpu: {source: model}\nrun: {pushgateway: 'gw:9091'}\n")
    s = resolve(config_file=str(cfg), environ={"CARBONWATCH_STACK": "none"})
    assert (s.zone, s.pushgateway) == ("FR", "gw:9091")
