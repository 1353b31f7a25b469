"""stackconfig: the committed Prometheus config and rules, rendered for local targets and short intervals."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.stack.config import (
    load_prometheus_config,
    load_rule_file,
    render_prometheus_config,
    render_rules,
    rule_files,
    secure_scrape_settings,
    write_secure_files,
)
from tests.support import config_error_cases

ROOT = Path(__file__).resolve().parents[2]


def test_render_rules_changes_group_intervals_only(tmp_path: Path) -> None:
    paths = render_rules(ROOT, tmp_path, "5s")
    assert sorted(p.name for p in paths) == ["alerts.yml", "budgets.rules.yml", "carbonwatch.rules.yml"]
    rules = yaml.safe_load((tmp_path / "carbonwatch.rules.yml").read_text())
    committed = yaml.safe_load((ROOT / "prometheus" / "rules" / "carbonwatch.rules.yml").read_text())
    # every group keeps its committed interval scaled by 5s / 15s (the global evaluation interval)
    for g, c in zip(rules["groups"], committed["groups"], strict=True):
        assert parse_duration(g["interval"], "x") == pytest.approx(parse_duration(c["interval"], "x") / 3), g["name"]
    alerts = yaml.safe_load((tmp_path / "alerts.yml").read_text())
    assert all(r["for"] != "1s" for g in alerts["groups"] for r in g["rules"])
    # the rules do not depend on their group's interval: every expression is the committed one, at any interval
    for interval in ("1s", "5s", "1m"):
        out = tmp_path / interval
        for rendered in render_rules(ROOT, out, interval):
            src = next(p for p in rule_files(ROOT) if p.name == rendered.name)
            committed = [(r.get("record") or r.get("alert"), r["expr"]) for g in yaml.safe_load(src.read_text())[
                "groups"] for r in g["rules"]]  # fmt: skip
            got = [(r.get("record") or r.get("alert"), r["expr"]) for g in yaml.safe_load(rendered.read_text())[
                "groups"] for r in g["rules"]]  # fmt: skip
            assert got == committed, (interval, rendered.name)


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
def test_rules_rendered_at_5s_pass_the_accounting_unit_test(tmp_path: Path) -> None:
    """The committed accounting unit test passes against the rules rendered for a 5 s evaluation interval."""
    rule_dir = tmp_path / "rules"
    render_rules(ROOT, rule_dir, "5s")
    test = yaml.safe_load((ROOT / "tests" / "rules" / "accounting.test.yml").read_text())
    test["rule_files"] = [str(rule_dir / "carbonwatch.rules.yml")]
    (tmp_path / "t.yml").write_text(yaml.safe_dump(test, sort_keys=False))
    res = subprocess.run(["promtool", "test", "rules", "t.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_secure_files_are_private_reused_and_load_as_web_configs(tmp_path: Path) -> None:
    import bcrypt
    from cryptography import x509

    from carbonwatch.node.web import load_web_config

    files = write_secure_files(tmp_path / "secure")
    assert oct((tmp_path / "secure").stat().st_mode & 0o777) == "0o700"
    for secret in (files.ca_key, files.server_key, files.client_key, files.password_file):
        assert oct(secret.stat().st_mode & 0o777) == "0o600", secret
    exporter = load_web_config(files.exporter_web)  # the exporter's own loader: certificates load, hash valid
    assert exporter.tls is not None and exporter.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert exporter.tls.client_ca_file == str(files.ca_cert)
    assert bcrypt.checkpw(files.password().encode(), exporter.users["carbonwatch"])
    gateway = load_web_config(files.pushgateway_web)
    assert gateway.tls is not None and gateway.tls.client_auth_type == "NoClientCert"
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    # a second run keeps the CA, the certificates and the password (clients may trust them already)
    before = {p.name: p.read_bytes() for p in (files.ca_cert, files.server_cert, files.client_cert,
                                               files.password_file)}  # fmt: skip
    again = write_secure_files(tmp_path / "secure")
    assert {p.name: p.read_bytes() for p in (again.ca_cert, again.server_cert, again.client_cert,
                                             again.password_file)} == before  # fmt: skip
    # for containers running as other users: readable keys, and the service names in the certificate
    shared = write_secure_files(tmp_path / "shared", ["127.0.0.1", "exporter", "pushgateway"], shared=True)
    assert oct(shared.server_key.stat().st_mode & 0o777) == "0o644"
    cert = x509.load_pem_x509_certificate(shared.server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["exporter", "pushgateway"]


@pytest.mark.slow
def test_secure_scrape_config_passes_promtool(tmp_path: Path) -> None:
    files = write_secure_files(tmp_path / "secure")
    rule_dir = tmp_path / "rules"
    render_rules(ROOT, rule_dir, "15s")
    text = render_prometheus_config(
        ROOT, {"carbonwatch": ["127.0.0.1:9860"], "pushgateway": ["127.0.0.1:9091"]}, [], "15s", "15s", rule_dir,
        job_settings=secure_scrape_settings(files),
    )
    jobs = {j["job_name"]: j for j in yaml.safe_load(text)["scrape_configs"]}
    assert jobs["carbonwatch"]["scheme"] == "https"
    assert jobs["carbonwatch"]["tls_config"] == {"ca_file": str(files.ca_cert), "cert_file": str(files.client_cert),
                                                 "key_file": str(files.client_key)}  # fmt: skip
    assert jobs["carbonwatch"]["basic_auth"] == {"username": "carbonwatch", "password_file": str(files.password_file)}
    assert jobs["pushgateway"]["honor_labels"] is True and jobs["pushgateway"]["scheme"] == "https"
    assert "cert_file" not in jobs["pushgateway"]["tls_config"]
    (tmp_path / "prometheus.yml").write_text(text)
    res = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("path, expect", config_error_cases("stack"), ids=lambda v: getattr(v, "stem", ""))
def test_a_malformed_prometheus_config_or_rule_file_names_the_file_and_key(path: Path, expect: str) -> None:
    load = load_prometheus_config if path.name.startswith("prometheus-") else load_rule_file
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert expect in str(exc.value) and str(path) in str(exc.value)


def test_the_committed_config_and_rule_files_load(tmp_path: Path) -> None:
    assert load_prometheus_config(ROOT / "prometheus" / "prometheus.yml")["scrape_configs"]
    assert all(load_rule_file(p) for p in rule_files(ROOT))
    repo = tmp_path / "repo"
    (repo / "prometheus").mkdir(parents=True)
    (repo / "prometheus" / "prometheus.yml").write_text("global: {evaluation_interval: 1m}\nscrape_configs: 7\n")
    with pytest.raises(ConfigError, match=r"prometheus\.yml: scrape_configs: expected a list"):
        render_prometheus_config(repo, {"x": ["a:1"]}, [], "15s", "15s", tmp_path / "rules")
