"""The web configuration file (`--web.config.file`) in exporter-toolkit's format (docs/web-configuration.md in
prometheus/exporter-toolkit), so one file serves node_exporter, the Pushgateway and carbonwatch alike:

    tls_server_config:
      cert_file: server.crt              # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt
    basic_auth_users:
      prometheus: $2b$10$...             # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')
    http_server_config:
      headers: {X-Content-Type-Options: nosniff}

A bad file is a ConfigError naming the file and the key. Differences from the Go toolkit, each refused with a
message rather than accepted and ignored: client certificates are verified or not asked for
(`RequestClientCert` and `RequireAnyClientCert` accept any certificate, which Python's TLS server cannot do,
and the toolkit calls them insecure); a verifying `client_auth_type` needs a client CA. HTTP/2 is not served
(`http2` is accepted; clients use HTTP/1.1).
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from carbonwatch import yamlfile
from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError

CLIENT_AUTH_TYPES: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's names (tls.CipherSuites()) -> OpenSSL's. TLS 1.3 suites are not configurable in Go either.
CIPHER_SUITES: dict[str, str | None] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1", "CurveP521": "secp521r1", "X25519": "X25519"}
# Headers the toolkit lets a config set, with their allowed values (None: any).
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_BCRYPT = re.compile(r"^\$2[abxy]\$\d\d\$[./A-Za-z0-9]{53}$")
_TLS_KEYS = (
    "cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type", "client_ca_file",
    "client_allowed_sans", "min_version", "max_version", "cipher_suites", "prefer_server_cipher_suites",
    "curve_preferences",
)
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")


@dataclass(frozen=True)
class TLSServerConfig:
    """`tls_server_config`, with file paths made absolute."""

    cert_file: str = ""
    key_file: str = ""
    cert: str = field(default="", repr=False)  # inline PEM
    key: str = field(default="", repr=False)  # inline PEM (a secret)
    client_ca_file: str = ""
    client_ca: str = field(default="", repr=False)
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()

    def files(self) -> list[str]:
        return [f for f in (self.cert_file, self.key_file, self.client_ca_file) if f]


@dataclass(frozen=True)
class WebConfig:
    """A parsed `--web.config.file`. An empty file (or none) is plain HTTP without authentication."""

    path: str = ""
    tls: TLSServerConfig | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    http2: bool = True
    users: Mapping[str, bytes] = field(default_factory=dict, repr=False)  # bcrypt hashes
    rate_limit_interval: float = 0.0  # seconds between requests; 0: no limit
    rate_limit_burst: int = 0

    def __repr__(self) -> str:  # user names only: hashes are secrets too
        return (f"WebConfig(path={self.path!r}, tls={self.tls!r}, users={sorted(self.users)!r}, "
                f"headers={dict(self.headers)!r})")



def _type(key: str, value: object, kind: type, what: str) -> object:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{what}: {key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _str(key: str, value: object, what: str) -> str:
    return str(_type(key, value, str, what))


def _strings(key: str, value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what}: {key}: expected a list of strings, got {value!r}")
    return tuple(value)


def _unknown(section: str, data: Mapping[str, object], allowed: Iterable[str], what: str) -> None:
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            where = f"{section}.{key}" if section else str(key)
            raise ConfigError(f"{what}: {where}: unknown key (allowed: {', '.join(allowed)})")


def _mapping(key: str, value: object, what: str) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what}: {key}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _join(base: Path, value: str) -> str:
    return "" if not value else str(value if os.path.isabs(value) else base / value)


def parse_web_config(data: object, path: str = "", what: str = "web.config_file") -> WebConfig:
    """A WebConfig from a parsed YAML document; `what` (the flag or key that named the file) starts every
    error message, followed by the file and the key."""
    where = f"{what}: {path}" if path else what
    if data is None:
        return WebConfig(path=path)
    doc = _mapping("top level", data, where)
    _unknown("", doc, _TOP_KEYS, where)
    base = Path(path).resolve().parent if path else Path.cwd()
    http2, headers = _http_server_config(doc.get("http_server_config"), where)
    interval, burst = _rate_limit(doc.get("rate_limit"), where)
    raw_tls = _mapping("tls_server_config", doc.get("tls_server_config"), where)
    tls = _tls_server_config(raw_tls, base, where) if raw_tls else None
    return WebConfig(path=path, tls=tls, headers=headers, http2=http2, users=_users(doc, where),
                     rate_limit_interval=interval, rate_limit_burst=burst)  # fmt: skip


def _users(doc: Mapping[str, object], where: str) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, hashed in _mapping("basic_auth_users", doc.get("basic_auth_users"), where).items():
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(f"{where}: basic_auth_users: {user!r} is not a user name (a string without ':')")
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            raise ConfigError(
                f"{where}: basic_auth_users.{user}: not a bcrypt hash (expected $2y$10$ followed by 53 characters; "
                "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
            )
        users[user] = hashed.encode("ascii")
    return users


def _http_server_config(raw: object, where: str) -> tuple[bool, dict[str, str]]:
    http_cfg = _mapping("http_server_config", raw, where)
    _unknown("http_server_config", http_cfg, ("http2", "headers"), where)
    http2 = bool(_type("http_server_config.http2", http_cfg.get("http2", True), bool, where))
    headers: dict[str, str] = {}
    for name, raw_value in _mapping("http_server_config.headers", http_cfg.get("headers"), where).items():
        if name not in HEADERS:
            raise ConfigError(f"{where}: http_server_config.headers: HTTP header {name!r} can not be configured "
                              f"(allowed: {', '.join(HEADERS)})")  # fmt: skip
        value = _str(f"http_server_config.headers.{name}", raw_value, where)
        allowed = HEADERS[name]
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{where}: http_server_config.headers.{name}: must be one of {', '.join(allowed)}, "
                              f"got {value!r}")  # fmt: skip
        if "\n" in value or "\r" in value:
            raise ConfigError(f"{where}: http_server_config.headers.{name}: must be one line")
        if value:  # blank: unset, as in the toolkit
            headers[name] = value
    return http2, headers


def _rate_limit(raw: object, where: str) -> tuple[float, int]:
    rate = _mapping("rate_limit", raw, where)
    _unknown("rate_limit", rate, ("interval", "burst"), where)
    interval = parse_duration(rate.get("interval", 0), f"{where}: rate_limit.interval")
    burst = int(str(_type("rate_limit.burst", rate.get("burst", 0), int, where)))
    if interval > 0 and burst < 1:
        raise ConfigError(f"{where}: rate_limit.burst: must be at least 1 when rate_limit.interval is set")
    return interval, burst


def _tls_server_config(raw_tls: Mapping[str, object], base: Path, where: str) -> TLSServerConfig:
    _unknown("tls_server_config", raw_tls, _TLS_KEYS, where)

    def text(key: str, default: str = "") -> str:
        value = raw_tls.get(key)
        return default if value is None else _str(f"tls_server_config.{key}", value, where)

    def strings(key: str) -> tuple[str, ...]:
        return _strings(f"tls_server_config.{key}", raw_tls.get(key), where)

    tls = TLSServerConfig(
        cert_file=_join(base, text("cert_file")), key_file=_join(base, text("key_file")),
        client_ca_file=_join(base, text("client_ca_file")), cert=text("cert"), key=text("key"),
        client_ca=text("client_ca"), client_auth_type=text("client_auth_type", "NoClientCert"),
        min_version=text("min_version", "TLS12"), max_version=text("max_version", "TLS13"),
        client_allowed_sans=strings("client_allowed_sans"), cipher_suites=strings("cipher_suites"),
        curve_preferences=strings("curve_preferences"),
        prefer_server_cipher_suites=bool(_type("tls_server_config.prefer_server_cipher_suites",
                                               raw_tls.get("prefer_server_cipher_suites", True), bool, where)),
    )
    _check_tls(tls, where)
    return tls


def _check_tls(t: TLSServerConfig, where: str) -> None:
    key = "tls_server_config"
    if not (t.cert_file or t.cert):
        raise ConfigError(f"{where}: {key}: missing one of cert or cert_file")
    if not (t.key_file or t.key):
        raise ConfigError(f"{where}: {key}: missing one of key or key_file")
    if t.cert_file and t.cert:
        raise ConfigError(f"{where}: {key}: set cert or cert_file, not both")
    if t.key_file and t.key:
        raise ConfigError(f"{where}: {key}: set key or key_file, not both")
    if t.client_ca_file and t.client_ca:
        raise ConfigError(f"{where}: {key}: set client_ca or client_ca_file, not both")
    if t.client_auth_type in _UNVERIFIED_CLIENT_AUTH:
        raise ConfigError(
            f"{where}: {key}.client_auth_type: {t.client_auth_type} accepts unverified client certificates and is "
            "not supported; use RequireAndVerifyClientCert with client_ca_file"
        )
    if t.client_auth_type not in CLIENT_AUTH_TYPES:
        raise ConfigError(f"{where}: {key}.client_auth_type: must be one of {', '.join(CLIENT_AUTH_TYPES)}, "
                          f"got {t.client_auth_type!r}")  # fmt: skip
    has_ca = bool(t.client_ca_file or t.client_ca)
    if has_ca and t.client_auth_type == "NoClientCert":
        raise ConfigError(f"{where}: {key}.client_ca_file: a client CA is configured but client_auth_type is "
                          "NoClientCert (use RequireAndVerifyClientCert)")  # fmt: skip
    if not has_ca and t.client_auth_type != "NoClientCert":
        raise ConfigError(f"{where}: {key}.client_auth_type: {t.client_auth_type} needs client_ca_file "
                          "(the CA that signed the client certificates)")  # fmt: skip
    if t.client_allowed_sans and t.client_auth_type != "RequireAndVerifyClientCert":
        raise ConfigError(f"{where}: {key}.client_allowed_sans: requires client_auth_type "
                          "RequireAndVerifyClientCert")  # fmt: skip
    for vkey, v in (("min_version", t.min_version), ("max_version", t.max_version)):
        if v not in TLS_VERSIONS:
            raise ConfigError(f"{where}: {key}.{vkey}: must be one of {', '.join(TLS_VERSIONS)}, got {v!r}")
    if TLS_VERSIONS[t.min_version] > TLS_VERSIONS[t.max_version]:
        raise ConfigError(f"{where}: {key}.min_version: {t.min_version} is above max_version {t.max_version}")
    for c in t.cipher_suites:
        if c not in CIPHER_SUITES:
            raise ConfigError(f"{where}: {key}.cipher_suites: unknown cipher {c!r} (known: {', '.join(CIPHER_SUITES)})")
    for c in t.curve_preferences:
        if c not in CURVES:
            raise ConfigError(f"{where}: {key}.curve_preferences: unknown curve {c!r} (known: {', '.join(CURVES)})")



def load_web_config(path: str | os.PathLike[str], what: str = "web.config_file") -> WebConfig:
    """Read and check a web configuration file, including that its certificates load."""
    p = str(path)
    data = yamlfile.load(p, what, mapping=False)
    cfg = parse_web_config(data, p, what)
    if cfg.tls is not None:
        ssl_context(cfg.tls, f"{what}: {p}")  # certificates and keys load
    return cfg


def ssl_context(t: TLSServerConfig, where: str = "web.config_file") -> ssl.SSLContext:
    """The server-side SSLContext for `t`; ConfigError naming the key when a file does not load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = TLS_VERSIONS[t.min_version]
        ctx.maximum_version = TLS_VERSIONS[t.max_version]
    except ValueError as exc:  # the OpenSSL build refuses this version
        raise ConfigError(f"{where}: tls_server_config.min_version: {exc}") from None
    ctx.set_alpn_protocols(["http/1.1"])
    if t.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_cert_chain(ctx, t, where)
    tls12 = [CIPHER_SUITES[c] for c in t.cipher_suites if CIPHER_SUITES[c]]
    if tls12:
        try:
            ctx.set_ciphers(":".join(c for c in tls12 if c))
        except ssl.SSLError as exc:
            raise ConfigError(f"{where}: tls_server_config.cipher_suites: none is usable here ({exc})") from None
    if len(t.curve_preferences) == 1:  # OpenSSL's own order among the supported curves otherwise
        ctx.set_ecdh_curve(CURVES[t.curve_preferences[0]])
    ctx.verify_mode = CLIENT_AUTH_TYPES[t.client_auth_type]
    if t.client_ca_file or t.client_ca:
        key = "client_ca_file" if t.client_ca_file else "client_ca"
        try:
            if t.client_ca_file:
                ctx.load_verify_locations(cafile=t.client_ca_file)
            else:
                ctx.load_verify_locations(cadata=t.client_ca)
        except (OSError, ssl.SSLError, ValueError) as exc:
            name = t.client_ca_file or "(inline)"
            raise ConfigError(f"{where}: tls_server_config.{key}: cannot load {name}: {_reason(exc)}") from None
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _load_cert_chain(ctx: ssl.SSLContext, t: TLSServerConfig, where: str) -> None:
    for key, f in (("cert_file", t.cert_file), ("key_file", t.key_file)):
        if f:
            try:
                with open(f, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"{where}: tls_server_config.{key}: cannot read {f}: {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="carbonwatch-tls-") as tmp:  # inline PEM: load_cert_chain reads files
        cert, key = t.cert_file, t.key_file
        if not cert:
            cert = os.path.join(tmp, "cert.pem")
            Path(cert).write_text(t.cert)
        if not key:
            key = os.path.join(tmp, "key.pem")
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(t.key)
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{where}: tls_server_config.cert_file/key_file: cannot load the certificate and key "
                f"({t.cert_file or 'inline cert'}, {t.key_file or 'inline key'}): {_reason(exc)}"
            ) from None


def describe(cfg: WebConfig) -> str:
    """", TLS, client certificates verified, basic auth (1 user)" for the start-up log line; "" without."""
    parts = []
    if cfg.tls is not None:
        parts.append("TLS")
        if cfg.tls.client_auth_type != "NoClientCert":
            parts.append("client certificates " + ("required" if cfg.tls.client_auth_type ==
                                                   "RequireAndVerifyClientCert" else "verified if given"))
    if cfg.users:
        parts.append(f"basic auth ({len(cfg.users)} user{'s' if len(cfg.users) != 1 else ''})")
    return "".join(", " + p for p in parts)

