"""The exporter's HTTP side, the exporter-toolkit way: `--web.config.file` (TLS with an optional client CA,
bcrypt basic-auth users, response headers, a rate limit), gzip and OpenMetrics by content negotiation, HEAD,
a landing page, and extra GET routes.

The web configuration file has exporter-toolkit's format (docs/web-configuration.md in
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

A bad file is a ConfigError naming the file and the key. The file and the certificates it names are checked
for changes (at most once a second, a few stat calls) and reloaded, so certificates can be rotated without a
restart; a file that turns bad while running fails closed (500) until it is fixed.

Differences from the Go toolkit, each refused with a message rather than accepted and ignored: client
certificates are verified or not asked for (`RequestClientCert` and `RequireAnyClientCert` accept any
certificate, which Python's TLS server cannot do, and the toolkit calls them insecure); a verifying
`client_auth_type` needs a client CA. HTTP/2 is not served (`http2` is accepted; clients use HTTP/1.1).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import html
import inspect
import ipaddress
import logging
import os
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _float_to_go_string

from carbonwatch import yamlfile
from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError

log = logging.getLogger("carbonwatch.node.web")

# An extra GET route: `() -> (body, content type)`, or `(query) -> (status, body, content type)` where query is
# urllib.parse.parse_qs of the request's query string. A path ending in `/*` serves every path below it
# (the rest of the path, percent-encoded, is the query's `*`).
Route = Callable[[], tuple[bytes, str]] | Callable[[Mapping[str, list[str]]], tuple[int, bytes, str]]

# --------------------------------------------------------------------------------------- configuration

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


def _type(key: str, value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{what}: {key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _strings(key: str, value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{what}: {key}: expected a list of strings, got {value!r}")
    return tuple(value)


def _unknown(section: str, data: Mapping[str, Any], allowed: Iterable[str], what: str) -> None:
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            where = f"{section}.{key}" if section else str(key)
            raise ConfigError(f"{what}: {where}: unknown key (allowed: {', '.join(allowed)})")


def _mapping(key: str, value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what}: {key}: expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _join(base: Path, value: str) -> str:
    return "" if not value else str(value if os.path.isabs(value) else base / value)


def parse_web_config(data: Any, path: str = "", what: str = "web.config_file") -> WebConfig:
    """A WebConfig from a parsed YAML document; `what` (the flag or key that named the file) starts every
    error message, followed by the file and the key."""
    where = f"{what}: {path}" if path else what
    if data is None:
        return WebConfig(path=path)
    doc = _mapping("top level", data, where)
    _unknown("", doc, _TOP_KEYS, where)
    base = Path(path).resolve().parent if path else Path.cwd()

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

    http_cfg = _mapping("http_server_config", doc.get("http_server_config"), where)
    _unknown("http_server_config", http_cfg, ("http2", "headers"), where)
    http2 = bool(_type("http_server_config.http2", http_cfg.get("http2", True), bool, where))
    headers: dict[str, str] = {}
    for name, value in _mapping("http_server_config.headers", http_cfg.get("headers"), where).items():
        if name not in HEADERS:
            raise ConfigError(f"{where}: http_server_config.headers: HTTP header {name!r} can not be configured "
                              f"(allowed: {', '.join(HEADERS)})")  # fmt: skip
        value = _type(f"http_server_config.headers.{name}", value, str, where)
        allowed = HEADERS[name]
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{where}: http_server_config.headers.{name}: must be one of {', '.join(allowed)}, "
                              f"got {value!r}")  # fmt: skip
        if "\n" in value or "\r" in value:
            raise ConfigError(f"{where}: http_server_config.headers.{name}: must be one line")
        if value:  # blank: unset, as in the toolkit
            headers[name] = value

    rate = _mapping("rate_limit", doc.get("rate_limit"), where)
    _unknown("rate_limit", rate, ("interval", "burst"), where)
    interval = parse_duration(rate.get("interval", 0), f"{where}: rate_limit.interval")
    burst = int(_type("rate_limit.burst", rate.get("burst", 0), int, where))
    if interval > 0 and burst < 1:
        raise ConfigError(f"{where}: rate_limit.burst: must be at least 1 when rate_limit.interval is set")

    tls: TLSServerConfig | None = None
    raw_tls = _mapping("tls_server_config", doc.get("tls_server_config"), where)
    _unknown("tls_server_config", raw_tls, _TLS_KEYS, where)
    if raw_tls:
        s: dict[str, Any] = {}
        for key in ("cert", "key", "client_ca", "cert_file", "key_file", "client_ca_file", "client_auth_type",
                    "min_version", "max_version"):
            if raw_tls.get(key) is not None:
                s[key] = _type(f"tls_server_config.{key}", raw_tls[key], str, where)
        for key in ("cert_file", "key_file", "client_ca_file"):
            if key in s:
                s[key] = _join(base, s[key])
        for key in ("client_allowed_sans", "cipher_suites", "curve_preferences"):
            s[key] = _strings(f"tls_server_config.{key}", raw_tls.get(key), where)
        if "prefer_server_cipher_suites" in raw_tls:
            s["prefer_server_cipher_suites"] = _type(
                "tls_server_config.prefer_server_cipher_suites", raw_tls["prefer_server_cipher_suites"], bool, where
            )
        tls = TLSServerConfig(**s)
        _check_tls(tls, where)
    return WebConfig(path=path, tls=tls, headers=headers, http2=http2, users=users,
                     rate_limit_interval=interval, rate_limit_burst=burst)  # fmt: skip


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
    for vkey in ("min_version", "max_version"):
        v = getattr(t, vkey)
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
    for key in ("cert_file", "key_file"):
        f = getattr(t, key)
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
            with os.fdopen(fd, "w") as f:
                f.write(t.key)
        try:
            ctx.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{where}: tls_server_config.cert_file/key_file: cannot load the certificate and key "
                f"({t.cert_file or 'inline cert'}, {t.key_file or 'inline key'}): {_reason(exc)}"
            ) from None


# --------------------------------------------------------------------------------------- authentication

# bcrypt of a random string: an unknown user costs the same time as a wrong password (no user enumeration).
_DUMMY_HASH = b"$2b$10$6aIzKmStl.dk2YsIqxKcJeD5eFreoAp6F/XXk0Ys/qBaPmFLH6fZ."


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes. A bcrypt check costs tens of milliseconds, so
    results are cached by a digest of (user, hash, password); checks run one at a time."""

    MAX_CACHE = 1024

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self.users = dict(users)
        self._cache: dict[bytes, bool] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BasicAuth(users={sorted(self.users)!r})"

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def check(self, header: str | None) -> bool:
        if not self.users:
            return True
        if not header:
            return False
        scheme, _, encoded = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user_b, sep, password = decoded.partition(b":")
        if not sep:
            return False
        user = user_b.decode("utf-8", "replace")
        hashed = self.users.get(user)
        known = hashed is not None
        hashed = hashed or _DUMMY_HASH
        key = hashlib.sha256(b"\0".join((user_b, hashed, password))).digest()
        ok = self._cache.get(key)
        if ok is None:
            import bcrypt

            with self._lock:
                try:
                    ok = bool(bcrypt.checkpw(password, hashed)) and known
                except ValueError:  # longer than 72 bytes, or a hash bcrypt refuses
                    ok = False
                if len(self._cache) >= self.MAX_CACHE:
                    self._cache.clear()
                self._cache[key] = ok
        return ok and known


class RateLimiter:
    """Token bucket: `burst` requests at once, then one per `interval` seconds (the toolkit's rate_limit)."""

    def __init__(self, interval: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) / self.interval)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class WebState:
    """The live web configuration: TLS context, users, headers, rate limit; reloaded when the file or the
    certificates it names change. A file that turns bad while running fails closed until it is fixed."""

    CHECK_EVERY = 1.0  # seconds between change checks

    def __init__(self, path: str | None, what: str = "web.config_file") -> None:
        self.path = path or ""
        self.what = what
        self.error = ""  # set while a reloaded file is bad: every request answers 500
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._apply(load_web_config(self.path, what) if self.path else WebConfig())
        self._stamp = self._files_stamp(self.config)

    def _apply(self, cfg: WebConfig) -> None:
        self.config = cfg
        self.ssl = ssl_context(cfg.tls, f"{self.what}: {cfg.path}") if cfg.tls is not None else None
        self.auth = BasicAuth(cfg.users)
        self.limiter = (RateLimiter(cfg.rate_limit_interval, cfg.rate_limit_burst)
                        if cfg.rate_limit_interval > 0 else None)  # fmt: skip

    @property
    def tls(self) -> bool:
        return self.config.tls is not None

    def _files_stamp(self, cfg: WebConfig) -> tuple[tuple[int, int], ...]:
        files = [self.path] + (cfg.tls.files() if cfg.tls is not None else [])
        out = []
        for f in files:
            try:
                st = os.stat(f)
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((-1, -1))
        return tuple(out)

    def refresh(self) -> None:
        """Reload if the file or a certificate changed (checked at most once per CHECK_EVERY)."""
        if not self.path:
            return
        now = time.monotonic()
        if now - self._checked < self.CHECK_EVERY:
            return
        with self._lock:
            if now - self._checked < self.CHECK_EVERY:
                return
            self._checked = now
            stamp = self._files_stamp(self.config)
            if stamp == self._stamp:
                return
            try:
                cfg = load_web_config(self.path, self.what)
                if (cfg.tls is not None) != self.tls:
                    raise ConfigError(f"{self.what}: {self.path}: turning TLS on or off needs a restart")
                self._apply(cfg)
                self._stamp = self._files_stamp(cfg)
                if self.error:
                    log.info("web configuration %s is valid again", self.path)
                else:
                    log.info("web configuration %s reloaded", self.path)
                self.error = ""
            except ConfigError as exc:
                self._stamp = stamp
                self.error = str(exc)
                log.error("%s; answering 500 until it is fixed", exc)


# -------------------------------------------------------------------------------------------- rendering


def render_text(collectors: Iterable[Collector]) -> bytes:
    """The Prometheus text format (0.0.4) for our families, byte for byte what prometheus-client's
    `generate_latest` writes for them, in about a third of the time: label names here are fixed and
    valid, so only values need escaping. Families of other types are handed to the library."""
    out: list[str] = []
    for collector in collectors:
        for metric in collector.collect():
            if metric.type not in ("gauge", "counter"):
                out.append(_library_text(metric))
                continue
            name = metric.name + "_total" if metric.type == "counter" else metric.name
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            out.append(f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n")
            for s in metric.samples:
                if s.labels:
                    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
                    out.append(f"{s.name}{{{labels}}} {floatToGoString(s.value)}\n")
                else:
                    out.append(f"{s.name} {floatToGoString(s.value)}\n")
    return "".join(out).encode("utf-8")


def render_openmetrics(collectors: Iterable[Collector]) -> bytes:
    """OpenMetrics 1.0.0 text, byte for byte what prometheus-client's openmetrics `generate_latest` writes, at
    a fraction of its cost for plain gauges and counters; other families are handed to the library."""
    out: list[str] = []
    for collector in collectors:
        for metric in collector.collect():
            if not _simple(metric):
                out.append(_library_openmetrics(metric))
                continue
            doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
            out.append(f"# HELP {metric.name} {doc}\n# TYPE {metric.name} {metric.type}\n")
            for s in metric.samples:
                if s.labels:
                    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
                    out.append(f"{s.name}{{{labels}}} {floatToGoString(s.value)}\n")
                else:
                    out.append(f"{s.name} {floatToGoString(s.value)}\n")
    out.append("# EOF\n")
    return "".join(out).encode("utf-8")


_LEGACY_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def floatToGoString(value: float) -> str:  # noqa: N802 (the library's name)
    out: str = _float_to_go_string(value)  # type: ignore[no-untyped-call]
    return out


def _simple(metric: Metric) -> bool:
    if metric.type not in ("gauge", "counter") or metric.unit or not _LEGACY_NAME.match(metric.name):
        return False
    for s in metric.samples:
        if s.timestamp is not None or s.exemplar is not None or s.native_histogram is not None:
            return False
        if not _LEGACY_NAME.match(s.name) or not all(_LEGACY_NAME.match(k) for k in s.labels):
            return False
    return True


def _escape(v: str) -> str:
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


class _One(Collector):
    def __init__(self, metric: Metric) -> None:
        self.metric = metric

    def collect(self) -> Iterator[Metric]:
        yield self.metric


def _library_text(metric: Metric) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_One(metric))
    return generate_latest(registry).decode("utf-8")


def _library_openmetrics(metric: Metric) -> str:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_One(metric))
    text: bytes = om.generate_latest(registry)  # type: ignore[no-untyped-call]
    return text.decode("utf-8").removesuffix("# EOF\n")


class _Many(Collector):
    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for c in self.collectors:
            yield from c.collect()


def render_metrics(collectors: Iterable[Collector], accept: str | None) -> tuple[bytes, str]:
    """(body, content type) for an `Accept` header, as prometheus-client negotiates it: OpenMetrics when
    asked for, else the text format 0.0.4."""
    collectors = list(collectors)
    encoder, ctype = choose_encoder(accept or "")
    if ctype.startswith("application/openmetrics-text"):
        escaping = _param(ctype, "escaping") or om.UNDERSCORES
        version = _param(ctype, "version") or "1.0.0"
        if escaping in (om.UNDERSCORES, om.ALLOWUTF8) and version == "1.0.0":
            return render_openmetrics(collectors), om.CONTENT_TYPE_LATEST
        return encoder(_Many(collectors)), ctype
    if ctype == CONTENT_TYPE_PLAIN_0_0_4:
        return render_text(collectors), ctype
    return encoder(_Many(collectors)), ctype


def _param(ctype: str, name: str) -> str:
    for part in ctype.split(";")[1:]:
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return ""


def accepts_gzip(header: str | None) -> bool:
    """Accept-Encoding names gzip (or *) with a q-value above 0."""
    for item in (header or "").split(","):
        coding, *params = (p.strip() for p in item.split(";"))
        if coding.lower() not in ("gzip", "*"):
            continue
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


# ----------------------------------------------------------------------------------------------- server

LANDING_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{name}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:50em}}code{{background:#eee;padding:0 .2em}}</style>
</head>
<body>
<h1>{name}</h1>
<p>{description}</p>
<ul>
{links}
</ul>
<p>Version {version}</p>
</body>
</html>
"""


@dataclass(frozen=True)
class Landing:
    name: str = "carbonwatch exporter"
    description: str = "Energy and CO2 of this node's processes and training runs, for Prometheus."
    version: str = ""
    links: tuple[tuple[str, str], ...] = (("/metrics", "Metrics"),)

    def render(self) -> bytes:
        links = "\n".join(f'<li><a href="{html.escape(href)}">{html.escape(text)}</a></li>'
                          for href, text in self.links)  # fmt: skip
        return LANDING_TEMPLATE.format(
            name=html.escape(self.name), description=html.escape(self.description), links=links,
            version=html.escape(self.version or "unknown"),
        ).encode("utf-8")


IDLE_TIMEOUT = 30.0  # seconds a kept-alive connection (or a TLS handshake) may stay silent
MAX_CONNECTIONS = 256  # open connections (one thread each); more are refused at once
GZIP_LEVEL = 1  # fastest: a scrape's text compresses ~10x already at level 1


class WebServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that speaks TLS (per `WebState`), authenticates, negotiates and limits."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        collectors: Iterable[Collector],
        web: WebState,
        routes: Mapping[str, Route] | None = None,
        landing: Landing | None = None,
        max_requests: int = 40,
        request_wait: float = 10.0,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.collectors = list(collectors)
        self.web = web
        self.routes = {path: as_query_route(r) for path, r in (routes or {}).items()}
        for path in self.routes:
            if not path.startswith("/") or path in ("/", "/metrics"):
                raise ValueError(f"route {path!r}: must start with / and not be / or /metrics")
        self.landing = landing or Landing(links=(("/metrics", "Metrics"),) + tuple((p, p) for p in self.routes))
        self.landing_body = self.landing.render()
        self.max_requests = max_requests
        self.request_wait = request_wait  # how long a request waits for a rendering slot before its 503
        self._in_flight = threading.BoundedSemaphore(max_requests) if max_requests > 0 else None
        self._connections = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.refused = 0  # connections refused over MAX_CONNECTIONS
        super().__init__(address, _Handler)

    def route_for(self, path: str) -> tuple[QueryRoute | None, str | None]:
        """The route serving `path`: an exact one, else a prefix route (`/a/b/*`) with the rest of the path,
        still percent-encoded, which the route finds in its query under `*`."""
        route = self.routes.get(path)
        if route is not None:
            return route, None
        for key, r in self.routes.items():
            if key.endswith("/*") and path.startswith(key[:-1]) and len(path) > len(key) - 1:
                return r, path[len(key) - 1:]
        return None, None

    @property
    def scheme(self) -> str:
        return "https" if self.web.tls else "http"

    @property
    def url(self) -> str:
        addr = self.server_address
        host, port = str(addr[0]), int(addr[1])
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        shown = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{shown}:{port}"

    # Connections: a TLS handshake runs in the connection's own thread, never in the accept loop.
    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        try:  # headers and body leave at once, no Nagle wait on a kept-alive connection (as Go's servers)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.web.refresh()
        ctx = self.web.ssl
        if ctx is not None:
            try:
                sock = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError) as exc:  # serve_forever skips a connection that fails with OSError
                sock.close()
                raise OSError(f"TLS setup failed: {exc}") from None
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            self.refused += 1
            log.warning("refusing a connection from %s: %d connections open", client_address[0], MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(IDLE_TIMEOUT)
                request.do_handshake()
            except (OSError, ValueError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
            problem = self._san_problem(request)
            if problem:
                log.warning("refusing the client certificate of %s: %s", client_address[0], problem)
                return
        super().finish_request(request, client_address)

    def _san_problem(self, request: ssl.SSLSocket) -> str:
        tls = self.web.config.tls
        if tls is None or not tls.client_allowed_sans:
            return ""
        cert: Any = request.getpeercert() or {}
        sans = [str(pair[1]) for pair in cert.get("subjectAltName", ())]
        for v in sans:
            if v in tls.client_allowed_sans or _same_ip(v, tls.client_allowed_sans):
                return ""
        return f"none of its SANs {sans} is in client_allowed_sans"

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("error serving %s", client_address[0] if client_address else "?", exc_info=True)

    def acquire_request(self) -> bool:
        """A rendering slot: at most `max_requests` render at once (memory stays bounded; under the GIL more
        would not be faster), the others queue for up to `request_wait` seconds, then get a 503."""
        return self._in_flight is None or self._in_flight.acquire(timeout=self.request_wait)

    def release_request(self) -> None:
        if self._in_flight is not None:
            self._in_flight.release()


def _same_ip(value: str, allowed: Iterable[str]) -> bool:
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return False
    for a in allowed:
        try:
            if ipaddress.ip_address(a) == ip:
                return True
        except ValueError:
            continue
    return False


QueryRoute = Callable[[Mapping[str, list[str]]], tuple[int, bytes, str]]


def as_query_route(route: Route) -> QueryRoute:
    """Either route shape as `(query) -> (status, body, content type)`."""
    takes_query = _takes_query(route)

    def call(query: Mapping[str, list[str]]) -> tuple[int, bytes, str]:
        out: tuple[Any, ...] = route(query) if takes_query else route()  # type: ignore[call-arg]
        if len(out) == 2:
            return 200, bytes(out[0]), str(out[1])
        return int(out[0]), bytes(out[1]), str(out[2])

    return call


def _takes_query(route: Route) -> bool:
    try:
        params = inspect.signature(route).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


class _Handler(BaseHTTPRequestHandler):
    server: WebServer
    protocol_version = "HTTP/1.1"  # keep-alive: a TLS scrape does not pay a handshake each time
    timeout = IDLE_TIMEOUT
    server_version = "carbonwatch"

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:  # noqa: N802 (http.server's names)
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(head=True)

    def _other_method(self) -> None:
        if self._gate():
            self._reply(405, b"method not allowed: use GET or HEAD\n", "text/plain; charset=utf-8",
                        extra={"Allow": "GET, HEAD"})  # fmt: skip

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method  # noqa: N815

    def _gate(self) -> bool:
        """Configuration, rate limit, authentication; False when an error has been answered."""
        web = self.server.web
        web.refresh()
        if web.error:
            self._reply(500, b"Internal Server Error: the web configuration is invalid (see the exporter log)\n",
                        "text/plain; charset=utf-8")  # fmt: skip
            return False
        if web.limiter is not None and not web.limiter.allow():
            self._reply(429, b"Too Many Requests\n", "text/plain; charset=utf-8")
            return False
        if web.auth.enabled and not web.auth.check(self.headers.get("Authorization")):
            self._reply(401, b"Unauthorized\n", "text/plain; charset=utf-8", extra={"WWW-Authenticate": "Basic"})
            return False
        return True

    def _serve(self, head: bool) -> None:
        if not self._gate():
            return
        url = urlsplit(self.path)
        path = url.path
        if path == "/":
            self._reply(200, self.server.landing_body, "text/html; charset=utf-8", head=head)
            return
        route, rest = self.server.route_for(path)
        if path != "/metrics" and route is None:
            self._reply(404, b"not found: try /metrics\n", "text/plain; charset=utf-8", head=head)
            return
        if not self.server.acquire_request():
            self._reply(503, b"Service Unavailable: too many requests in flight\n", "text/plain; charset=utf-8",
                        head=head)  # fmt: skip
            return
        code = 200
        try:
            if route is None:
                body, ctype = render_metrics(self.server.collectors, self.headers.get("Accept"))
            else:
                query = parse_qs(url.query)
                if rest is not None:
                    query["*"] = [rest]
                code, body, ctype = route(query)
        except Exception as exc:
            log.error("serving %s failed: %s", path, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self._reply(500, f"Internal Server Error: {type(exc).__name__}\n".encode(), "text/plain; charset=utf-8",
                        head=head)  # fmt: skip
            return
        finally:
            self.server.release_request()
        self._reply(code, body, ctype, head=head, compress=True)

    def _reply(self, code: int, body: bytes, ctype: str, head: bool = False, compress: bool = False,
               extra: Mapping[str, str] | None = None) -> None:
        headers = {"Content-Type": ctype}
        if compress:
            headers["Vary"] = "Accept-Encoding"
            if accepts_gzip(self.headers.get("Accept-Encoding")):
                body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
                headers["Content-Encoding"] = "gzip"
        headers.update(self.server.web.config.headers)
        headers.update(extra or {})
        headers["Content-Length"] = str(len(body))
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


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


def serve(
    host: str,
    port: int,
    collectors: Iterable[Collector],
    *,
    web_config_file: str | None = None,
    routes: Mapping[str, Route] | None = None,
    landing: Landing | None = None,
    max_requests: int = 40,
    what: str = "--web.config.file",
    request_wait: float = 10.0,
) -> WebServer:
    """Serve `/metrics` (and `routes`, and `/`) from `collectors` in a daemon thread. Raises ConfigError for
    a bad web configuration and OSError when the address cannot be bound."""
    web = WebState(web_config_file, what)
    server = WebServer((host, port), collectors, web, routes=routes, landing=landing, max_requests=max_requests,
                       request_wait=request_wait)  # fmt: skip
    threading.Thread(target=server.serve_forever, name="carbonwatch-http", daemon=True).start()
    return server
