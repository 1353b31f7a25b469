"""SLURM: cluster names, jobs from environment and cgroup, and `carbonwatch job` against a real Prometheus serving a
TSDB built with promtool from known series."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from carbonwatch import cli
from carbonwatch.errors import ConfigError
from carbonwatch.node.config import ExporterConfig, SlurmConfig, apply_mapping
from carbonwatch.node.identity.cgroups import parse_cgroup
from carbonwatch.node.identity.slurm import cluster_name, job_of, raw_labels, run_id
from carbonwatch.stack.job import JobRow, fmt_elapsed, parse_fields, parse_job_ids, render
from tests import support
from tests.fleetfakes import v1, v2

# -- jobs and clusters ----------------------------------------------------------------------------------------


def test_cluster_name_from_config_else_environment_else_default():
    assert cluster_name(SlurmConfig(cluster="hpc1"), {"SLURM_CLUSTER_NAME": "other"}) == "hpc1"
    assert cluster_name(SlurmConfig(), {"SLURM_CLUSTER_NAME": "perlmutter"}) == "perlmutter"
    assert cluster_name(SlurmConfig(), {}) == "default"
    with pytest.raises(ConfigError, match="SLURM_CLUSTER_NAME: 'a b'"):
        cluster_name(SlurmConfig(), {"SLURM_CLUSTER_NAME": "a b"})
    assert run_id("hpc1", "4242") == "slurm-hpc1-4242"


@pytest.mark.parametrize("value", ["a b", "", "x" * 65, "-lead", 'q"'])
def test_slurm_cluster_config_errors_name_the_key(value):
    with pytest.raises(ConfigError, match=r"slurm\.cluster: "):
        apply_mapping(ExporterConfig(), {"slurm": {"cluster": value}})
    with pytest.raises(ConfigError, match=r"slurm\.enabled: expected bool"):
        apply_mapping(ExporterConfig(), {"slurm": {"enabled": "yes"}})
    with pytest.raises(ConfigError, match=r"slurm\.partition: unknown key"):
        apply_mapping(ExporterConfig(), {"slurm": {"partition": "gpu"}})


def test_job_from_environment_or_cgroup_the_cgroup_first():
    none = parse_cgroup("")
    assert job_of({"SLURM_JOB_ID": "17", "SLURM_JOB_UID": "1000"}, none) == ("17", 1000)
    assert job_of({"SLURM_JOBID": "18"}, none) == ("18", None)  # the older spelling
    assert job_of({"SLURM_JOB_ID": "17; rm -rf"}, none) is None
    assert job_of({}, none) is None
    cg = parse_cgroup(v1("/slurm/uid_1001/job_99/step_0/task_0"))
    assert job_of({"SLURM_JOB_ID": "17"}, cg) == ("99", 1001)
    assert job_of({}, parse_cgroup(v2("/system.slice/slurmstepd.scope/job_5/step_0/user/task_0"))) == ("5", None)
    assert raw_labels({"SLURM_JOB_USER": "alice", "SLURM_JOB_ACCOUNT": "physics", "SLURM_JOB_NAME": "gpt",
                       "SLURM_JOB_PARTITION": "gpu"}) == {"user": "alice", "project": "physics", "model": "gpt"}


# -- carbonwatch job: formatting ------------------------------------------------------------------------------


def test_job_ids_like_sacct_j():
    assert parse_job_ids(["42,43", "44", "42"]) == ["42", "43", "44"]
    with pytest.raises(ConfigError, match=r"'42_3' .*array task"):
        parse_job_ids(["42_3"])
    with pytest.raises(ConfigError, match="'x' is not a SLURM job id"):
        parse_job_ids(["x"])
    with pytest.raises(ConfigError, match="at least one"):
        parse_job_ids([","])


def test_elapsed_fields_and_parsable_output():
    assert fmt_elapsed(3723) == "01:02:03" and fmt_elapsed(2 * 86400 + 5) == "2-00:00:05" and fmt_elapsed(None) == ""
    assert parse_fields("jobid,energykwh,COST") == ("JobID", "EnergyKWh", "Cost")
    with pytest.raises(ConfigError, match="--format: 'Watts' is not a field"):
        parse_fields("JobID,Watts")
    row = JobRow("7", "hpc1", "slurm-hpc1-7", user="ada", energy_joules=7.2e6, emissions_grams=1234.56,
                 cost={"EUR": 1.5})
    assert render([row], ("JobID", "User", "EnergyKWh", "CO2eGrams", "Cost"), parsable=True).splitlines() == [
        "JobID|User|EnergyKWh|CO2eGrams|Cost", "7|ada|2.00|1230|1.50 EUR"]
    # a 14 s job: small figures keep three significant figures, never 0.000 kWh or 0.0 g
    small = JobRow("8", "hpc1", "slurm-hpc1-8", start=1000.0, end=1014.0, energy_joules=412.0,
                   emissions_grams=0.0473, cost={"EUR": 0.0000343})
    assert render([small], ("Elapsed", "Energy", "CO2e", "EnergyKWh", "CO2eGrams", "Cost"), parsable=True,
                  header=False) == "00:00:14|412 J|47.3 mg|0.000114|0.0473|0.0000343 EUR"
    table = render([row], ("JobID", "User", "Account"), header=True).splitlines()
    assert table == ["JobID User Account", "----- ---- -------", "7     ada"]


# -- carbonwatch job against Prometheus -------------------------------------------------------------------------

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None, reason="prometheus/promtool not installed")
BASE = (int(time.time()) // 60) * 60 - 3 * 3600
STEP = 60


def fixture_series() -> dict[str, list[tuple[str, float, int]]]:
    """Job 4242 on hpc1 ran 30 minutes with the recording rules in place; 4242 on hpc2 too (another cluster's
    job of the same number); job 4243 on hpc1 ran on two nodes of a stack without the rules."""
    series: dict[str, list[tuple[str, float, int]]] = {}

    def add(name: str, labels: str, value: float, t: int) -> None:
        series.setdefault(name, []).append((labels, value, t))

    for t in range(BASE, BASE + 2401, STEP):
        k = min(t - BASE, 1800) / 1800
        alive = t - BASE <= 1800
        a = 'run_id="slurm-hpc1-4242"'
        add("run_id:carbonwatch_energy_joules:total", a, 3.6e6 * k, t)
        add("run_id:carbonwatch_emissions_grams:total", a, 400 * k, t)
        add("run_id:carbonwatch_cost:total", a + ',currency="EUR"', 0.25 * k, t)
        add("run_id:carbonwatch_run_info:last", a + ',user="alice",project="physics",model="train-gpt",team=""', 1, t)
        add("carbonwatch_run_energy_joules_total", a + ',instance="n1:9860",component="cpu"', 3.6e6 * k, t)
        for comp, w in (("cpu", 1500.0), ("memory", 500.0)):
            add("carbonwatch_run_power_watts", a + f',instance="n1:9860",component="{comp}"', w if alive else 0, t)
        b = 'run_id="slurm-hpc2-4242"'
        add("run_id:carbonwatch_energy_joules:total", b, 7.2e5 * k, t)
        add("run_id:carbonwatch_run_info:last", b + ',user="bob",project="chem",model="md",team=""', 1, t)
        if t - BASE >= 600:
            c = 'run_id="slurm-hpc1-4243"'
            k2 = min(t - BASE - 600, 1200) / 1200
            for node in ("n1:9860", "n2:9860"):
                add("carbonwatch_run_energy_joules_total", c + f',instance="{node}",component="gpu"', 9e5 * k2, t)
                add("carbonwatch_run_emissions_grams_total", c + f',instance="{node}",component="gpu"', 50 * k2, t)
                add("carbonwatch_run_power_watts", c + f',instance="{node}",component="gpu"',
                    750.0 if t - BASE <= 1800 else 0.0, t)
            add("carbonwatch_run_info", c + ',instance="n1:9860",origin="slurm",user="carol",project="bio",'
                'model="fold",team=""', 1, t)
    return series




@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    prom = support.Prometheus.from_series(tmp_path_factory.mktemp("prom"), fixture_series())
    try:
        yield prom.url
    finally:
        prom.stop()


@needs_prometheus
@pytest.mark.slow
def test_job_prints_energy_emissions_and_cost_like_sacct(prometheus_url, capsys):
    rc = cli.main(["job", "4242", "--cluster", "hpc1", "--prometheus", prometheus_url])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].split() == ["JobID", "Cluster", "User", "Account", "JobName", "Elapsed", "Energy", "CO2e", "Cost"]
    assert set(out[1]) == {"-", " "}
    assert out[2].split() == ["4242", "hpc1", "alice", "physics", "train-gpt", "00:30:00", "1.00", "kWh", "400", "g",
                              "0.25", "EUR"]


@needs_prometheus
@pytest.mark.slow
def test_job_without_cluster_finds_every_clusters_job_and_without_rules_sums_the_nodes(prometheus_url, capsys):
    rc = cli.main(["job", "4242,4243", "-P", "-o", "JobID,Cluster,User,Account,Elapsed,EnergyKWh,CO2eGrams,Origin",
                   "--prometheus", prometheus_url])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out == [
        "JobID|Cluster|User|Account|Elapsed|EnergyKWh|CO2eGrams|Origin",
        "4242|hpc1|alice|physics|00:30:00|1.00|400|",
        "4242|hpc2|bob|chem||0.200||",
        "4243|hpc1|carol|bio|00:20:00|0.500|100|slurm",  # 2 nodes x 9e5 J, 2 x 50 g
    ]


@needs_prometheus
@pytest.mark.slow
def test_job_json_and_unknown_jobs(prometheus_url, capsys):
    rc = cli.main(["job", "4243", "999", "--json", "--prometheus", prometheus_url])
    cap = capsys.readouterr()
    assert rc == 2  # as `carbonwatch report` for an unknown run
    assert "job 999 is unknown to Prometheus" in cap.err
    rows = json.loads(cap.out)
    assert [(r["job_id"], r["run_id"], r["elapsed_seconds"]) for r in rows] == [("4243", "slurm-hpc1-4243", 1200.0)]
    assert rows[0]["energy_joules"] == pytest.approx(1.8e6)
    assert cli.main(["job", "12_3", "--prometheus", prometheus_url]) == 2
    assert "array task" in capsys.readouterr().err


# -- deploy/systemd and deploy/slurm ----------------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_node_config_and_environment_file_are_what_the_exporter_accepts():
    cfg = apply_mapping(ExporterConfig(), yaml.safe_load((DEPLOY / "systemd" / "exporter.yml").read_text()))
    assert cfg.slurm.enabled and cfg.kubernetes.enabled == "false"
    env = dict(line.split("=", 1) for line in (DEPLOY / "systemd" / "carbonwatch-exporter.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert cluster_name(cfg.slurm, env) == env["SLURM_CLUSTER_NAME"]
    from carbonwatch.node import exporter

    args = argparse.Namespace(**{a.dest: a.default for a in _exporter_parser(exporter)._actions if a.dest != "help"})
    env["CARBONWATCH_CONFIG_FILE"] = str(DEPLOY / "systemd" / "exporter.yml")  # installed at /etc/carbonwatch/
    full = exporter.config_from_args(args, env)
    assert (full.zone, full.slurm.enabled) == (env["CARBONWATCH_ZONE"], True)


def _exporter_parser(exporter_mod):
    p = argparse.ArgumentParser()
    exporter_mod.add_arguments(p)
    return p


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
    unit = (DEPLOY / "systemd" / "carbonwatch-exporter.service").read_text()
    assert "ExecStart=/opt/carbonwatch/bin/carbonwatch exporter" in unit
    exe = Path(sys.executable).parent / "carbonwatch"
    path = tmp_path / "carbonwatch-exporter.service"
    path.write_text(unit.replace("/opt/carbonwatch/bin/carbonwatch", str(exe)))
    out = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_task_prolog_adds_team_and_model_and_nothing_hostile(tmp_path):
    teams = tmp_path / "teams"
    teams.write_text("physics ml-research\nevil a;b\n")
    script = DEPLOY / "slurm" / "task-prolog.sh"

    def run(**env: str) -> list[str]:
        out = subprocess.run(["sh", str(script)], env={"PATH": "/usr/bin:/bin", "CARBONWATCH_ACCOUNT_TEAMS": str(teams),
                                                       **env}, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    assert run(SLURM_JOB_ACCOUNT="physics", SLURM_JOB_COMMENT="model=llama-7b") == [
        "export CARBONWATCH_TEAM=ml-research", "export CARBONWATCH_MODEL=llama-7b"]
    assert run(SLURM_JOB_ACCOUNT="evil", SLURM_JOB_COMMENT="model=x;reboot") == []
    assert run(SLURM_JOB_ACCOUNT="physics", CARBONWATCH_TEAM="mine") == []  # the job's own value wins
    assert run() == []


def test_epilog_stores_the_jobs_figures_in_the_admin_comment_in_the_background(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "carbonwatch").write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "1.000|400.0|0.2500 EUR"\n')
    (bin_dir / "sacctmgr").write_text(f'#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done >> {calls}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "4242", "SLURM_CLUSTER_NAME": "hpc1",
           "CARBONWATCH_EPILOG_DELAY": "0"}
    t0 = time.monotonic()
    out = subprocess.run(["sh", str(DEPLOY / "slurm" / "epilog-slurmctld.sh")], env=env, timeout=30)
    assert out.returncode == 0 and time.monotonic() - t0 < 5
    deadline = time.monotonic() + 10
    while "AdminComment" not in (calls.read_text() if calls.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    text = calls.read_text()
    assert "job 4242 --cluster hpc1 --noheader --parsable2 --format EnergyKWh,CO2eGrams,Cost" in text
    assert "[set]\n[AdminComment=carbonwatch energy=1.000kWh co2e=400.0g cost=0.2500 EUR]" in text
    assert "[jobid=4242]" in text
    bad = subprocess.run(["sh", str(DEPLOY / "slurm" / "epilog-slurmctld.sh")],
                         env=dict(env, SLURM_JOB_ID="1;x"), timeout=30)
    assert bad.returncode == 0
