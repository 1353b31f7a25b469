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

pytestmark = pytest.mark.slow  # docker-compose and promtool

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "deploy" / "docker-compose.gpu.yml"
LONG_RUNNING = ("exporter", "reaper", "pushgateway", "prometheus", "alertmanager", "ledger", "grafana")

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


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each published port, long or short syntax."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((str(p.get("host_ip", "0.0.0.0")), int(p["published"]), int(p["target"])))
        else:
            parts = str(p).split("/")[0].split(":")
            host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
            out.append((host_ip, int(parts[-2]), int(parts[-1])))
    return out


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
        ("ledger", "/var/lib/carbonwatch/ledger"),
    ):
        assert any(v.split(":")[1] == target and not v.startswith(("/", ".")) for v in raw["services"][name]["volumes"])


def test_the_ledger_reads_prometheus_keeps_its_database_on_a_volume_and_prometheus_scrapes_it(
    raw: dict[str, Any],
) -> None:
    svc = raw["services"]["ledger"]
    assert svc["command"][:2] == ["ledger", "serve"] and "--prometheus=http://prometheus:9090" in svc["command"]
    database = next(a for a in svc["command"] if a.startswith("--database="))
    mount = next(v.split(":")[1] for v in svc["volumes"] if v.startswith("carbonwatch-ledger:"))
    assert database == f"--database=sqlite:///{mount}/ledger.db"
    assert "/-/ready" in svc["healthcheck"]["test"][-1]
    prom = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = [j for j in prom["scrape_configs"] if "ledger:9863" in j["static_configs"][0]["targets"]]
    assert len(jobs) == 1 and jobs[0]["honor_labels"] is True


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
    from carbonwatch.node.config import ExporterConfig, apply_mapping, load_file

    exp = resolved["services"]["exporter"]
    host = host_path_of(exp, flag(exp["command"], "--config.file"))
    assert host is not None and host.is_file()
    cfg = apply_mapping(ExporterConfig(), load_file(host))
    # The paths it names are inside the read-only host mounts.
    assert host_path_of(exp, cfg.process.proc_root) == Path("/proc")
    assert host_path_of(exp, cfg.cpu.powercap_root) == Path("/sys/class/powercap")
    assert flag(exp["command"], "--web.listen-address") == ":9860"
    assert any(target == 9860 for _ip, _port, target in published(exp))


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
    assert graf["environment"]["CARBONWATCH_PROMETHEUS"] == "http://prometheus:9090"


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


@needs_compose
def test_ports_are_published_on_loopback_unless_asked(resolved: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        if name == "reaper":  # publishes no port
            assert not published(resolved["services"][name])
            continue
        assert [ip for ip, _port, _target in published(resolved["services"][name])] == ["127.0.0.1"], name
    env = {"GRAFANA_ADMIN_PASSWORD": "x", "CARBONWATCH_PUBLISH_ADDRESS": "0.0.0.0"}
    everywhere = yaml.safe_load(compose_config(env=env).stdout)
    assert published(everywhere["services"]["exporter"]) == [("0.0.0.0", 9860, 9860)]


@needs_compose
@pytest.mark.parametrize("ports", [{}, {"PUSHGATEWAY_PORT": "19091", "PROMETHEUS_PORT": "19090"}])
def test_the_compose_settings_file_points_runs_at_the_published_ports(ports: dict[str, str]) -> None:
    from carbonwatch.client.settings import read_stack_file, resolve

    doc = yaml.safe_load(compose_config(env={"GRAFANA_ADMIN_PASSWORD": "x", **ports}).stdout)
    gateway_port = published(doc["services"]["pushgateway"])[0][1]
    prom_port = published(doc["services"]["prometheus"])[0][1]
    stack_env = ROOT / "deploy" / "compose-stack.env"
    values = read_stack_file(stack_env, ports)
    assert values["CARBONWATCH_PUSHGATEWAY"] == f"http://127.0.0.1:{gateway_port}"
    assert values["CARBONWATCH_PROMETHEUS"] == f"http://127.0.0.1:{prom_port}"
    s = resolve(environ={"CARBONWATCH_STACK": str(stack_env), **ports})
    assert (s.pushgateway, s.prometheus) == (f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{prom_port}")


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """`carbonwatch stack secure --compose` output and the compose file with the secure override on it."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed")
    import sys

    d = tmp_path_factory.mktemp("compose-secure")
    out = subprocess.run([sys.executable, "-m", "carbonwatch", "stack", "secure", "--compose", "--dir", str(d)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "docker-compose.secure.yml" in out.stdout and f"export CARBONWATCH_STACK={d / 'stack.env'}" in out.stdout
    env = {"GRAFANA_ADMIN_PASSWORD": "x", "CARBONWATCH_SECURE_DIR": str(d)}
    doc = yaml.safe_load(compose_config(COMPOSE, ROOT / "deploy" / "docker-compose.secure.yml", env=env,
                                        profile="demo").stdout)  # fmt: skip
    return d, doc


@needs_compose
def test_secure_override_gives_the_exporter_and_gateway_their_web_configs(secure: tuple[Path, dict[str, Any]]) -> None:
    from carbonwatch.node.web import load_web_config

    d, doc = secure
    svcs = doc["services"]
    exp_cfg = host_path_of(svcs["exporter"], flag(svcs["exporter"]["command"], "--web.config.file"))
    gw_cfg = host_path_of(svcs["pushgateway"], flag(svcs["pushgateway"]["command"], "--web.config.file"))
    assert exp_cfg == d / "exporter-web.yml" and gw_cfg == d / "pushgateway-web.yml"
    exporter_web = load_web_config(exp_cfg)
    assert exporter_web.tls is not None and exporter_web.tls.client_auth_type == "RequireAndVerifyClientCert"
    assert load_web_config(gw_cfg).users.keys() == {"carbonwatch"}
    # the rest of the services' settings are those of the base file
    assert flag(svcs["exporter"]["command"], "--config.file") == "/etc/carbonwatch/exporter.yml"
    assert host_path_of(svcs["exporter"], "/host/proc") == Path("/proc")
    # the certificate names the compose services Prometheus scrapes
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((d / "server.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"exporter", "pushgateway", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    # containers run as other users: the files they read are readable
    for f in ("server.key", "client.key", "password"):
        assert (d / f).stat().st_mode & 0o004, f
    demo = svcs["demo"]
    assert flag(demo["command"], "--pushgateway") == "https://pushgateway:9091"
    assert host_path_of(demo, demo["environment"]["CARBONWATCH_PUSHGATEWAY_PASSWORD_FILE"]) == d / "password"


@needs_compose
def test_secure_prometheus_config_passes_promtool_in_the_container_layout(
    secure: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed")
    _d, doc = secure
    prom = doc["services"]["prometheus"]
    for src, dst, _ro in mounts(prom):
        if src.startswith("/"):
            link = tmp_path / dst.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
    config = tmp_path / flag(prom["command"], "--config.file").lstrip("/")
    cfg = yaml.safe_load(config.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["carbonwatch"]["scheme"] == jobs["pushgateway"]["scheme"] == "https"
    assert jobs["carbonwatch"]["tls_config"]["cert_file"] == "/etc/carbonwatch/secure/client.crt"
    assert jobs["pushgateway"]["basic_auth"] == {"username": "carbonwatch",
                                                 "password_file": "/etc/carbonwatch/secure/password"}  # fmt: skip
    # promtool resolves every file it names (rules, CA, certificates, password) inside the rebuilt layout
    text = config.read_text().replace("/etc/carbonwatch/", str(tmp_path / "etc" / "carbonwatch") + "/")
    (tmp_path / "check.yml").write_text(text)
    proc = subprocess.run(["promtool", "check", "config", str(tmp_path / "check.yml")], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_compose
def test_secure_exporter_healthcheck_passes_against_a_secure_exporter(secure: tuple[Path, dict[str, Any]]) -> None:
    """Run the healthcheck's own code, with the container paths mapped to the generated files, against a
    server with the generated web config."""
    from prometheus_client import CollectorRegistry

    from carbonwatch.node.web import serve

    d, doc = secure
    test = doc["services"]["exporter"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    srv = serve("127.0.0.1", 0, [CollectorRegistry()], web_config_file=str(d / "exporter-web.yml"))
    try:
        code = test[3].replace("/etc/carbonwatch/secure/", f"{d}/").replace(
            "https://localhost:9860", f"https://localhost:{srv.server_address[1]}")  # fmt: skip
        exec(compile(code, "healthcheck", "exec"), {})  # raises if the check fails
        with pytest.raises(Exception):  # noqa: B017 (any failure: the check must fail without the password)
            exec(compile(code.replace("open(d + 'password', 'rb').read().strip()", "b'wrong'"), "hc", "exec"), {})
    finally:
        srv.shutdown()
        srv.server_close()
