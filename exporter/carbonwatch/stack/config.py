"""Prometheus configuration and rule files for other targets and intervals, from the one committed copy.

The native launcher and the tests run the same prometheus/prometheus.yml, prometheus/rules/*.yml,
alerting/alerts.yml and alerting/budgets.rules.yml as docker-compose, with local targets and (for tests)
a short evaluation interval. Only each group's `interval` changes: the rules are pure functions of the
exporters' counters, none depends on its group's interval (prometheus/rules/carbonwatch.rules.yml), so the
expressions are copied as they are. It also writes the TLS and basic-auth files of a secure stack.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import posixpath
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from carbonwatch import yamlfile
from carbonwatch.durations import format_duration, parse_duration
from carbonwatch.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PrivateKeyTypes

RULE_SOURCES = ("prometheus/rules/*.yml", "alerting/alerts.yml", "alerting/budgets.rules.yml")


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def _dump(data: object) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def _load(path: Path) -> object:
    return yamlfile.load(path, str(path), mapping=False)


def _expect(value: object, kind: type, where: str, what: str) -> Any:
    """`value` (parsed YAML) checked to be a `kind`: the one place it becomes untyped again, for its callers."""
    if not isinstance(value, kind) or isinstance(value, bool):
        names: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string"}
        raise ConfigError(f"{where}: {what}: expected {names.get(kind, kind.__name__)}, got {value!r}"[:300])
    return value


def load_prometheus_config(path: Path) -> dict[str, Any]:
    """prometheus.yml, its sections this module reads checked: ConfigError names the file and the key."""
    cfg = _expect(_load(path), dict, str(path), "top level")
    glob = _expect(cfg.setdefault("global", {}) or {}, dict, str(path), "global")
    for key in ("scrape_interval", "evaluation_interval"):
        if key in glob:
            parse_duration(_expect(glob[key], str, str(path), f"global.{key}"), f"{path}: global.{key}")
    for i, job in enumerate(_expect(cfg.get("scrape_configs") or [], list, str(path), "scrape_configs")):
        _expect(job, dict, str(path), f"scrape_configs[{i}]")
        _expect(job.get("job_name"), str, str(path), f"scrape_configs[{i}].job_name")
    return dict(cfg)


def load_rule_file(path: Path) -> dict[str, Any] | None:
    """A rule file with its groups checked (name, interval, rules with record or alert and expr); None when
    it is empty."""
    data = _load(path)
    if not data:
        return None
    data = _expect(data, dict, str(path), "top level")
    for key in data:
        if key != "groups":
            raise ConfigError(f"{path}: {key}: unknown key (a rule file holds `groups`)")
    for i, group in enumerate(_expect(data.get("groups") or [], list, str(path), "groups")):
        where = f"groups[{i}]"
        _expect(group, dict, str(path), where)
        _expect(group.get("name"), str, str(path), f"{where}.name")
        if "interval" in group:
            parse_duration(_expect(group["interval"], str, str(path), f"{where}.interval"), f"{path}: {where}.interval")
        for j, rule in enumerate(_expect(group.get("rules") or [], list, str(path), f"{where}.rules")):
            _expect(rule, dict, str(path), f"{where}.rules[{j}]")
            name = rule.get("record", rule.get("alert"))
            _expect(name, str, str(path), f"{where}.rules[{j}].record or alert")
            _expect(rule.get("expr"), str, str(path), f"{where}.rules[{j}] ({name}).expr")
    return dict(data)


def render_prometheus_config(
    repo_root: Path,
    targets: dict[str, list[str]],
    alertmanagers: list[str],
    scrape_interval: str,
    evaluation_interval: str,
    rule_dir: Path,
    job_settings: Mapping[str, Mapping[str, object]] | None = None,
) -> str:
    """prometheus/prometheus.yml with `targets` per scrape job: jobs of the file keep their settings
    (honor_labels for the Pushgateway), jobs `targets` does not name are left out (their compose hostnames
    do not resolve locally), new names become plain jobs. Plus the given Alertmanagers (none: no alerting
    section), intervals, and rule files `rule_dir/*.yml` (what render_rules wrote). `job_settings` adds
    settings to jobs by name (scheme, tls_config, basic_auth of a secure stack: secure_scrape_settings)."""
    parse_duration(scrape_interval, "scrape_interval")
    parse_duration(evaluation_interval, "evaluation_interval")
    cfg = load_prometheus_config(Path(repo_root) / "prometheus" / "prometheus.yml")
    cfg["global"]["scrape_interval"] = scrape_interval
    cfg["global"]["evaluation_interval"] = evaluation_interval
    cfg["rule_files"] = [str(Path(rule_dir).resolve() / "*.yml")]
    if alertmanagers:
        cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    else:
        cfg.pop("alerting", None)
    jobs = [job for job in cfg.get("scrape_configs") or [] if job.get("job_name") in targets]
    seen = set()
    for job in jobs:
        job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
        seen.add(job["job_name"])
    for name, tgts in targets.items():
        if name not in seen:
            jobs.append({"job_name": name, "static_configs": [{"targets": list(tgts)}]})
    for job in jobs:
        job.update(dict((job_settings or {}).get(job["job_name"], {})))
    cfg["scrape_configs"] = jobs
    return _dump(cfg)


def rule_files(repo_root: Path) -> list[Path]:
    root = Path(repo_root)
    out: list[Path] = []
    for pattern in RULE_SOURCES:
        out += sorted(root.glob(pattern))
    return out


def rewrite_group(group: dict[str, Any], evaluation_interval: float, base_interval: float,
                  for_override: str | None = None) -> dict[str, Any]:
    """One rule group for `evaluation_interval` (seconds). Groups at the base interval move to the new one,
    longer groups are scaled by the same factor (never below it). Expressions are kept as they are."""
    old_text = group.get("interval")
    old = parse_duration(old_text, f"group {group.get('name')} interval") if old_text else base_interval
    if old == base_interval:
        new = evaluation_interval
    else:
        new = max(evaluation_interval, old * evaluation_interval / base_interval)
    out = dict(group)
    out["interval"] = format_duration(new)
    rules = []
    for rule in group.get("rules") or []:
        r = dict(rule)
        if for_override is not None and "alert" in r:
            r["for"] = for_override
        rules.append(r)
    out["rules"] = rules
    return out


def render_rules(repo_root: Path, dest_dir: Path, evaluation_interval: str,
                 for_override: str | None = None) -> list[Path]:
    """Copies every rule file (prometheus/rules/*.yml, alerting/alerts.yml, alerting/budgets.rules.yml)
    into `dest_dir`, rewritten for `evaluation_interval`; `for_override` (tests) replaces each alert's
    `for:`. Returns the written paths."""
    new = parse_duration(evaluation_interval, "evaluation_interval")
    if new <= 0:
        raise ConfigError("evaluation_interval: must be more than 0")
    cfg = load_prometheus_config(Path(repo_root) / "prometheus" / "prometheus.yml")
    base = parse_duration(cfg["global"].get("evaluation_interval", "1m"), "global.evaluation_interval")
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for src in rule_files(repo_root):
        data = load_rule_file(src)
        if not data or not data.get("groups"):
            continue
        data["groups"] = [rewrite_group(g, new, base, for_override) for g in data["groups"]]
        out = dest / src.name
        out.write_text(f"# Rendered from {src.relative_to(repo_root)} for evaluation_interval {evaluation_interval}.\n"
                       + _dump(data))
        written.append(out)
    return written


# --------------------------------------------------------------------------- TLS and basic auth (secure stack)

SECURE_USER = "carbonwatch"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
CLIENT_CERT, CLIENT_KEY = "client.crt", "client.key"  # Prometheus' client certificate for the exporter (mTLS)
PASSWORD = "password"  # basic-auth password of SECURE_USER, for Prometheus and the run clients
EXPORTER_WEB = "exporter-web.yml"  # TLS + client certificates + basic auth
PUSHGATEWAY_WEB = "pushgateway-web.yml"  # TLS + basic auth (run clients have no client certificate)
DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")
COMPOSE_HOSTS = ("exporter", "pushgateway", "prometheus")  # compose service names, for the same certificate
COMPOSE_SECURE_DIR = "/etc/carbonwatch/secure"  # where deploy/docker-compose.secure.yml mounts the files


@dataclass(frozen=True)
class SecureFiles:
    """The files of a stack with TLS and basic auth on the exporter and the Pushgateway (all in `dir`)."""

    dir: Path
    username: str = SECURE_USER

    @property
    def ca_cert(self) -> Path:
        return Path(self.dir) / CA_CERT

    @property
    def ca_key(self) -> Path:
        return Path(self.dir) / CA_KEY

    @property
    def server_cert(self) -> Path:
        return Path(self.dir) / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return Path(self.dir) / SERVER_KEY

    @property
    def client_cert(self) -> Path:
        return Path(self.dir) / CLIENT_CERT

    @property
    def client_key(self) -> Path:
        return Path(self.dir) / CLIENT_KEY

    @property
    def password_file(self) -> Path:
        return Path(self.dir) / PASSWORD

    @property
    def exporter_web(self) -> Path:
        return Path(self.dir) / EXPORTER_WEB

    @property
    def pushgateway_web(self) -> Path:
        return Path(self.dir) / PUSHGATEWAY_WEB

    def password(self) -> str:
        return self.password_file.read_text().strip()


def _key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: PrivateKeyTypes, mode: int) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip
    _write(path, data, mode)


def _load_ca_key(path: Path) -> CertificateIssuerPrivateKeyTypes:
    """The CA's private key in `path` (PEM, unencrypted), of a kind that can sign certificates."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, dsa.DSAPrivateKey,
                            ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):  # fmt: skip
        raise ConfigError(f"{path}: a {type(key).__name__} cannot sign certificates (use an EC, RSA, DSA or EdDSA key)")
    return key


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def issue_certificate(
    ca_cert: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes, key: ec.EllipticCurvePrivateKey,
    common_name: str, hosts: Sequence[str] = (), *, server: bool = True, days: int = 825,
) -> x509.Certificate:
    """A leaf certificate for `key` signed by the CA: SANs from `hosts` (IPs and DNS names), for TLS servers
    (`server`) or clients."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                              else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)  # fmt: skip
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def new_ca(
    common_name: str = "carbonwatch stack CA", days: int = 3650
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """(certificate, key) of a new self-signed CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = _key()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False),
                       critical=True)  # fmt: skip
        .sign(key, hashes.SHA256())
    )
    return cert, key


def write_secure_files(dest: Path, hosts: Sequence[str] = DEFAULT_HOSTS, *, shared: bool = False,
                       username: str = SECURE_USER) -> SecureFiles:  # fmt: skip
    """TLS and basic-auth material for the stack in `dest`: a CA, a server certificate for `hosts`, a client
    certificate for Prometheus, a random password with its bcrypt hash, and the exporter-toolkit web
    configurations of the exporter (TLS, client certificates required, basic auth) and the Pushgateway (TLS,
    basic auth). Files already in `dest` are kept (bring your own certificates by putting them there), the
    web configurations are rewritten. Keys and the password are 0600, or 0644 with `shared` (containers that
    run as another user must read them: keep `dest` itself private then)."""
    import bcrypt
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755 if shared else 0o700)
    files = SecureFiles(dest, username)
    secret_mode = 0o644 if shared else 0o600
    ca_key: CertificateIssuerPrivateKeyTypes
    if not (files.ca_cert.is_file() and files.ca_key.is_file()):
        ca_cert, ca_key = new_ca()
        _write_key(files.ca_key, ca_key, 0o600)
        _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        for stale in (files.server_cert, files.client_cert):  # signed by an old CA: issue again
            stale.unlink(missing_ok=True)
    else:
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        ca_key = _load_ca_key(files.ca_key)
    for cert_path, key_path, name, leaf_hosts, server in (
        (files.server_cert, files.server_key, "carbonwatch stack", list(hosts), True),
        (files.client_cert, files.client_key, "prometheus", ["prometheus"], False),
    ):
        if cert_path.is_file() and key_path.is_file():
            os.chmod(key_path, secret_mode)
            continue
        key = _key()
        cert = issue_certificate(ca_cert, ca_key, key, name, leaf_hosts, server=server)
        _write_key(key_path, key, secret_mode)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    if not files.password_file.is_file():
        _write(files.password_file, (secrets.token_urlsafe(24) + "\n").encode(), secret_mode)
    os.chmod(files.password_file, secret_mode)
    hashed = bcrypt.hashpw(files.password().encode(), bcrypt.gensalt(10)).decode()
    head = "# Generated by `carbonwatch stack`: exporter-toolkit web configuration (docs/stack.md).\n"
    tls = {"cert_file": SERVER_CERT, "key_file": SERVER_KEY}
    exporter = {
        "tls_server_config": {**tls, "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": CA_CERT},
        "basic_auth_users": {username: hashed},
    }
    gateway = {"tls_server_config": tls, "basic_auth_users": {username: hashed}}
    _write(files.exporter_web, (head + _dump(exporter)).encode(), 0o644)
    _write(files.pushgateway_web, (head + _dump(gateway)).encode(), 0o644)
    return files


def secure_scrape_settings(files: SecureFiles, base: str | None = None) -> dict[str, dict[str, object]]:
    """Scrape settings of the `carbonwatch` and `pushgateway` jobs for a secure stack (for
    render_prometheus_config's `job_settings`); file paths under `base` (a container path) if given."""

    def path(p: Path) -> str:
        return str(Path(base) / p.name) if base else str(Path(p).resolve())

    auth = {"username": files.username, "password_file": path(files.password_file)}
    return {
        "carbonwatch": {
            "scheme": "https",
            "basic_auth": auth,
            "tls_config": {"ca_file": path(files.ca_cert), "cert_file": path(files.client_cert),
                           "key_file": path(files.client_key)},  # fmt: skip
        },
        "pushgateway": {"scheme": "https", "basic_auth": dict(auth), "tls_config": {"ca_file": path(files.ca_cert)}},
    }


def render_compose_secure_prometheus(repo_root: Path, files: SecureFiles, base: str = COMPOSE_SECURE_DIR) -> str:
    """prometheus/prometheus.yml for deploy/docker-compose.secure.yml: mounted at `base`/prometheus.yml, so its
    rule files are the container's absolute paths; the exporter and Pushgateway jobs scrape over TLS with
    basic auth (and Prometheus' client certificate for the exporter)."""
    cfg = load_prometheus_config(Path(repo_root) / "prometheus" / "prometheus.yml")
    container_dir = "/etc/carbonwatch/prometheus"  # where docker-compose.yml mounts prometheus/
    cfg["rule_files"] = [posixpath.normpath(posixpath.join(container_dir, r)) for r in cfg.get("rule_files") or []]
    settings = secure_scrape_settings(files, base)
    for job in cfg.get("scrape_configs") or []:
        job.update(settings.get(job.get("job_name"), {}))
    return "# Generated by `carbonwatch stack secure --compose` for deploy/docker-compose.secure.yml.\n" + _dump(cfg)
