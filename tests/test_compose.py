"""docker-compose.yml, the GPU override and the Dockerfile: parsed by Debian's docker-compose (v1, no engine
needed for `config`) and checked for what the stack relies on."""

from __future__ import annotations

import glob
import os
import posixpath
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "deploy" / "docker-compose.gpu.yml"
LONG_RUNNING = ("exporter", "pushgateway", "prometheus", "alertmanager", "grafana")

needs_compose = pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")


def compose_config(
    *files: Path, env: dict[str, str] | None = None, profile: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    args = ["docker-compose", "--project-directory", str(ROOT)]
    for f in files or (COMPOSE,):
        args += ["-f", str(f)]
    if profile:
        args += ["--profile", profile]
    args.append("config")
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("GRAFANA_", "CARBONWATCH_", "COMPOSE_"))}
    run_env.update({"GRAFANA_ADMIN_PASSWORD": "test-secret"} if env is None else env)
    proc = subprocess.run(args, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The compose file as docker-compose resolves it (interpolated, paths absolute), demo profile on."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed")
    out: dict[str, Any] = yaml.safe_load(compose_config(profile="demo").stdout)
    return out


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    out: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return out


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume, in the short syntax docker-compose config prints."""
    out = []
    for v in service.get("volumes", []):
        parts = v.split(":")
        out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def host_path_of(service: dict[str, Any], container_path: str) -> Path | None:
    """The host file behind `container_path` through the service's bind mounts (longest prefix wins)."""
    best: tuple[int, Path] | None = None
    for src, dst, _ro in mounts(service):
        if not src.startswith("/"):
            continue  # named volume
        try:
            rel = PurePosixPath(container_path).relative_to(dst)
        except ValueError:
            continue
        if best is None or len(dst) > best[0]:
            best = (len(dst), Path(src) / rel)
    return best[1] if best else None


def flag(command: list[str], name: str) -> str:
    for arg in command:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {command}")


@needs_compose
def test_compose_file_parses_and_validates(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == {*LONG_RUNNING, "demo"}


@needs_compose
def test_compose_refuses_to_run_without_a_grafana_password() -> None:
    proc = compose_config(env={}, check=False)
    assert proc.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in proc.stderr


@needs_compose
def test_the_demo_service_is_only_in_the_demo_profile(resolved: dict[str, Any]) -> None:
    for name, svc in resolved["services"].items():
        assert svc.get("profiles", []) == (["demo"] if name == "demo" else []), name


def test_images_are_pinned_and_long_running_services_have_healthchecks(raw: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        svc = raw["services"][name]
        image = svc.get("image", "")
        assert re.fullmatch(r"[\w./-]+:(v?\d+\.\d+\.\d+|\$\{CARBONWATCH_VERSION:-\d+\.\d+\.\d+\})", image), (
            name,
            image,
        )
        assert svc["healthcheck"]["test"][0] == "CMD", name
        assert svc.get("restart") == "unless-stopped", name


def test_named_volumes_hold_all_state(raw: dict[str, Any]) -> None:
    declared = set(raw["volumes"])
    used = {
        v.split(":")[0]
        for svc in raw["services"].values()
        for v in svc.get("volumes", [])
        if not v.startswith(("/", "."))
    }
    assert used == declared
    for name, target in (
        ("prometheus", "/prometheus"),
        ("alertmanager", "/alertmanager"),
        ("grafana", "/var/lib/grafana"),
    ):
        assert any(v.split(":")[1] == target and not v.startswith(("/", ".")) for v in raw["services"][name]["volumes"])


@needs_compose
def test_exporter_sees_the_host_read_only(resolved: dict[str, Any]) -> None:
    exp = resolved["services"]["exporter"]
    assert exp["pid"] == "host"
    binds = {src: (dst, ro) for src, dst, ro in mounts(exp)}
    assert binds["/proc"] == ("/host/proc", True)
    assert binds["/sys"] == ("/host/sys", True)
    assert "build" in exp


@needs_compose
def test_exporter_config_file_is_mounted_and_valid(resolved: dict[str, Any]) -> None:
    from carbonwatch.config import ExporterConfig, apply_mapping, load_file

    exp = resolved["services"]["exporter"]
    host = host_path_of(exp, flag(exp["command"], "--config.file"))
    assert host is not None and host.is_file()
    cfg = apply_mapping(ExporterConfig(), load_file(host))
    # The paths it names are inside the read-only host mounts.
    assert host_path_of(exp, cfg.process.proc_root) == Path("/proc")
    assert host_path_of(exp, cfg.cpu.powercap_root) == Path("/sys/class/powercap")
    assert flag(exp["command"], "--web.listen-address") == ":9860"
    assert any(p["target"] == 9860 for p in exp["ports"])


@needs_compose
def test_prometheus_reads_the_repository_files_and_keeps_data(resolved: dict[str, Any]) -> None:
    prom = resolved["services"]["prometheus"]
    cmd = prom["command"]
    assert re.fullmatch(r"\d+[dwy]", flag(cmd, "--storage.tsdb.retention.time"))
    config = host_path_of(prom, flag(cmd, "--config.file"))
    assert config == ROOT / "prometheus" / "prometheus.yml"
    assert all(ro for src, _dst, ro in mounts(prom) if src.startswith("/"))
    if not config.is_file():
        pytest.fail("prometheus/prometheus.yml is missing")
    doc = yaml.safe_load(config.read_text())
    # Every rule file it names resolves, through the same mounts, to files of the repository.
    container_dir = PurePosixPath(flag(cmd, "--config.file")).parent
    for pattern in doc.get("rule_files", []):
        container = str(container_dir / pattern) if not pattern.startswith("/") else pattern
        host = host_path_of(prom, posixpath.normpath(container))
        assert host is not None, pattern
        assert glob.glob(str(host)), f"rule_files entry {pattern} matches nothing at {host}"
    # Its scrape targets and Alertmanager are the compose services on their ports.
    targets = {t for sc in doc["scrape_configs"] for s in sc.get("static_configs", []) for t in s.get("targets", [])}
    assert {"exporter:9860", "pushgateway:9091"} <= targets
    ams = {t for a in doc["alerting"]["alertmanagers"] for s in a["static_configs"] for t in s["targets"]}
    assert ams == {"alertmanager:9093"}


@needs_compose
def test_promtool_accepts_prometheus_config_in_the_container_layout(resolved: dict[str, Any], tmp_path: Path) -> None:
    """Rebuild the container's view of /etc/carbonwatch with symlinks and let promtool check it."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed")
    prom = resolved["services"]["prometheus"]
    if not (ROOT / "prometheus" / "prometheus.yml").is_file():
        pytest.fail("prometheus/prometheus.yml is missing")
    for src, dst, _ro in mounts(prom):
        if src.startswith("/"):
            link = tmp_path / dst.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
    config = tmp_path / flag(prom["command"], "--config.file").lstrip("/")
    proc = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_compose
def test_alertmanager_and_grafana_mounts_point_at_repository_files(resolved: dict[str, Any]) -> None:
    am = resolved["services"]["alertmanager"]
    assert host_path_of(am, flag(am["command"], "--config.file")) == ROOT / "alerting" / "alertmanager.yml"
    graf = resolved["services"]["grafana"]
    assert host_path_of(graf, "/etc/grafana/provisioning/datasources/prometheus.yml") == (
        ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    )
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    host_home = host_path_of(graf, home)
    assert host_home is not None and host_home.is_file()
    assert graf["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "test-secret"
    assert graf["environment"]["CARBONWATCH_PROMETHEUS_URL"] == "http://prometheus:9090"


@needs_compose
def test_demo_runs_the_sample_training_under_carbonwatch_run(resolved: dict[str, Any]) -> None:
    demo = resolved["services"]["demo"]
    cmd = demo["command"]
    assert cmd[0] == "run" and "--" in cmd
    assert flag(cmd, "--pushgateway") == "http://pushgateway:9091"
    assert float(flag(cmd, "--budget-grams")) > 0
    script = cmd[cmd.index("--") + 2]
    assert script == "/opt/carbonwatch/examples/train_mlp.py"
    assert demo["user"] != "0"


@needs_compose
def test_gpu_override_reserves_nvidia_devices_for_the_exporter() -> None:
    merged = yaml.safe_load(compose_config(COMPOSE, GPU).stdout)
    devices = merged["services"]["exporter"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and devices[0]["count"] == "all"
    assert devices[0]["capabilities"] == ["gpu"]
    # The override changes nothing else about the exporter.
    base = yaml.safe_load(compose_config(COMPOSE).stdout)["services"]["exporter"]
    assert merged["services"]["exporter"]["volumes"] == base["volumes"]


def test_dockerfile_builds_the_package_on_python_slim() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"pip install \.", text)
    assert re.search(r"^USER carbonwatch$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["carbonwatch"\]', text, re.M)
    for copied in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for src in copied.split():
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repository"


def test_dockerignore_keeps_what_the_image_needs() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv"} <= ignored
    assert not ignored & {"exporter", "examples", "pyproject.toml", "README.md"}
