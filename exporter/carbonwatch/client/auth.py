"""How the run client reaches a Pushgateway that wants credentials: basic auth, a bearer token, TLS with a
private CA or a client certificate (the Pushgateway's own `--web.config.file`, or a proxy in front of it).

From the environment (the variables in ENV) or the config file's `run.pushgateway_auth` section, which has
the shape of Prometheus' HTTP client settings:

    run:
      pushgateway: https://pushgateway.example:9091
      pushgateway_auth:
        basic_auth: {username: alice, password_file: /run/secrets/pushgateway}
        # or: authorization: {credentials_file: /run/secrets/token}      (a bearer token)
        tls_config: {ca_file: ca.crt, cert_file: client.crt, key_file: client.key, insecure_skip_verify: false}

Secrets never reach a log line, a repr, an exception message or a command line: they are held in `Secret`,
which prints as `<secret>`; credentials in the URL (`https://user:pass@host`) are moved out of it; the clean-up
process gets them through its environment. `*_file` secrets are read at each push, so they can be rotated.
"""

from __future__ import annotations

import base64
import os
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, cast
from urllib.parse import unquote, urlsplit, urlunsplit

from carbonwatch.errors import ConfigError

if TYPE_CHECKING:
    import requests

ENV = {
    "username": "CARBONWATCH_PUSHGATEWAY_USERNAME",
    "password": "CARBONWATCH_PUSHGATEWAY_PASSWORD",
    "password_file": "CARBONWATCH_PUSHGATEWAY_PASSWORD_FILE",
    "bearer_token": "CARBONWATCH_PUSHGATEWAY_BEARER_TOKEN",
    "bearer_token_file": "CARBONWATCH_PUSHGATEWAY_BEARER_TOKEN_FILE",
    "ca_file": "CARBONWATCH_PUSHGATEWAY_CA_FILE",
    "cert_file": "CARBONWATCH_PUSHGATEWAY_CERT_FILE",
    "key_file": "CARBONWATCH_PUSHGATEWAY_KEY_FILE",
    "insecure_skip_verify": "CARBONWATCH_PUSHGATEWAY_INSECURE_SKIP_VERIFY",
}
SECRET_KEYS = ("password", "bearer_token")


class AuthValues(TypedDict, total=False):
    """Some of PushgatewayAuth's settings, as one layer (environment, file, URL) sets them."""

    username: str
    password: Secret | None
    password_file: str
    bearer_token: Secret | None
    bearer_token_file: str
    ca_file: str
    cert_file: str
    key_file: str
    insecure_skip_verify: bool


@dataclass
class _Connection:
    """The kept-alive requests session of a PushgatewayAuth (made at the first request) and its lock."""

    session: requests.Session | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class PushgatewayAuth:
    """Credentials and TLS settings for the Pushgateway. Empty: plain requests, the system's CAs for https."""

    username: str = ""
    password: Secret | None = None
    password_file: str = ""
    bearer_token: Secret | None = None
    bearer_token_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure_skip_verify: bool = False
    _conn: _Connection = field(default_factory=_Connection, init=False, repr=False, compare=False, hash=False)

    # ---- derived -------------------------------------------------------------------------------
    @property
    def basic(self) -> bool:
        return bool(self.username)

    @property
    def bearer(self) -> bool:
        return bool(self.bearer_token or self.bearer_token_file)

    @property
    def empty(self) -> bool:
        return not (self.basic or self.bearer or self.ca_file or self.cert_file or self.insecure_skip_verify)

    def describe(self) -> str:
        """What is configured, without a secret: "basic auth as alice (password from /run/...), CA ca.crt"."""
        parts = []
        if self.basic:
            where = f"from {self.password_file}" if self.password_file else "set"
            parts.append(f"basic auth as {self.username} (password {where})")
        if self.bearer:
            parts.append("bearer token " + (f"from {self.bearer_token_file}" if self.bearer_token_file else "set"))
        if self.ca_file:
            parts.append(f"CA {self.ca_file}")
        if self.cert_file:
            parts.append(f"client certificate {self.cert_file}")
        if self.insecure_skip_verify:
            parts.append("certificate NOT verified (insecure_skip_verify)")
        return ", ".join(parts) or "no credentials"

    def check(self, what: str = "pushgateway_auth") -> PushgatewayAuth:
        """Raise ConfigError naming the setting when the combination or a file is wrong; returns self."""
        if self.password and self.password_file:
            raise ConfigError(f"{what}: set the password or password_file, not both")
        if self.bearer_token and self.bearer_token_file:
            raise ConfigError(f"{what}: set the bearer token or its file, not both")
        has_password = bool(self.password or self.password_file)
        if has_password and not self.username:
            raise ConfigError(f"{what}: a password is set without a username ({ENV['username']})")
        if self.username and not has_password:
            raise ConfigError(f"{what}: username {self.username!r} is set without a password "
                              f"({ENV['password']} or {ENV['password_file']})")  # fmt: skip
        if self.basic and self.bearer:
            raise ConfigError(f"{what}: set basic auth or a bearer token, not both")
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(f"{what}: a client certificate needs both cert_file and key_file")
        for key in ("password_file", "bearer_token_file", "ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path and not os.access(path, os.R_OK):
                problem = "does not exist" if not os.path.exists(path) else "is not readable"
                raise ConfigError(f"{what}: {key} {path} {problem}")
        if self.ca_file:
            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (ssl.SSLError, ValueError) as exc:
                raise ConfigError(f"{what}: ca_file {self.ca_file} holds no usable certificate ({exc})") from None
        return self

    # ---- the request side ----------------------------------------------------------------------
    def _file_secret(self, path: str, key: str) -> str:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise OSError(f"cannot read the Pushgateway {key} file {path}: {exc.strerror}") from None

    def headers(self) -> dict[str, str]:
        """The Authorization header (files are read now, so a rotated secret is picked up)."""
        if self.basic:
            pw = self.password.reveal() if self.password else self._file_secret(self.password_file, "password")
            token = base64.b64encode(f"{self.username}:{pw}".encode()).decode("ascii")
            return {"Authorization": f"Basic {token}"}
        if self.bearer:
            tok = (self.bearer_token.reveal() if self.bearer_token
                   else self._file_secret(self.bearer_token_file, "bearer token"))  # fmt: skip
            return {"Authorization": f"Bearer {tok}"}
        return {}

    def _requests_session(self) -> requests.Session:
        s = self._conn.session
        if s is None:
            import requests

            s = requests.Session()  # proxies and REQUESTS_CA_BUNDLE from the environment apply, as with urllib
            self._conn.session = s
        return s

    def _request(self, method: str, url: str, timeout: float | None, headers: Mapping[str, str] | None = None,
                 data: bytes | None = None) -> bytes:  # fmt: skip
        import requests

        session = self._requests_session()
        verify: bool | str = False if self.insecure_skip_verify else (self.ca_file or True)
        cert = (self.cert_file, self.key_file) if self.cert_file else None
        try:
            with self._conn.lock:
                # auth= always set: requests then never adds ~/.netrc credentials of its own
                resp = session.request(method, url, data=data, headers=dict(headers or {}), timeout=timeout,
                                       verify=verify, cert=cert, auth=self._authorize)  # fmt: skip
        except requests.RequestException as exc:
            raise OSError(f"error talking to the Pushgateway at {redact_url(url)}: {_request_problem(exc)}") from None
        if resp.status_code >= 400:
            hint = " (check the credentials)" if resp.status_code in (401, 403) else ""
            raise OSError(f"error talking to the Pushgateway at {redact_url(url)}: HTTP {resp.status_code} "
                          f"{resp.reason}{hint}")  # fmt: skip
        content: bytes = resp.content
        return content

    def _authorize(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """requests' auth hook: our Authorization header, or none."""
        request.headers.update(self.headers())
        return request

    def handler(self) -> Callable[..., Callable[[], None]]:
        """A prometheus_client push handler (push_to_gateway(..., handler=...)) using these settings, over one
        kept-alive connection. Failures raise OSError naming the URL without credentials."""

        def make(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                 data: bytes) -> Callable[[], None]:  # fmt: skip
            def handle() -> None:
                self._request(method, url, timeout, dict(headers), data)

            return handle

        return make

    def fetch(self, url: str, timeout: float) -> bytes:
        """GET `url` with these settings (the reaper's `Fetch`, for the gateway's /api/v1/metrics)."""
        return self._request("GET", url, timeout)

    def child_env(self) -> dict[str, str]:
        """These settings as CARBONWATCH_PUSHGATEWAY_* variables, for a helper process (never its argv)."""
        out: dict[str, str] = {}
        for key, var in ENV.items():
            value = getattr(self, key)
            if isinstance(value, Secret):
                out[var] = value.reveal()
            elif isinstance(value, bool):
                if value:
                    out[var] = "true"
            elif value:
                out[var] = str(value)
        return out


def _request_problem(exc: requests.RequestException) -> str:
    import requests

    from carbonwatch.promql import reason

    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS failed (a private CA? set CARBONWATCH_PUSHGATEWAY_CA_FILE)"
    return reason(exc, hint="")


def _bool(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{what}: expected true or false, got {value!r}")


def _str(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{what}: expected a string, got {type(value).__name__}")
    return value


def from_env(env: Mapping[str, str]) -> AuthValues:
    """The settings the environment sets (only those)."""
    out: dict[str, object] = {}
    for key, var in ENV.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        if key == "insecure_skip_verify":
            out[key] = _bool(raw, var)
        elif key in SECRET_KEYS:
            out[key] = Secret(raw)
        else:
            out[key] = raw
    return cast(AuthValues, out)  # keys from ENV, values of their fields' types


def from_mapping(data: object, base: Path | None = None, what: str = "run.pushgateway_auth") -> AuthValues:
    """The settings of a config file's `run.pushgateway_auth` section; relative files are relative to `base`."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{what}: expected a mapping, got {type(data).__name__}")
    allowed = {"basic_auth": ("username", "password", "password_file"),
               "authorization": ("type", "credentials", "credentials_file"),
               "tls_config": ("ca_file", "cert_file", "key_file", "insecure_skip_verify")}  # fmt: skip
    out: dict[str, object] = {}
    for section, value in data.items():
        if section not in allowed:
            raise ConfigError(f"{what}.{section}: unknown key (allowed: {', '.join(allowed)})")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{what}.{section}: expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed[section]:
                raise ConfigError(f"{what}.{section}.{key}: unknown key (allowed: {', '.join(allowed[section])})")
        if section == "basic_auth":
            out["username"] = _str(value.get("username"), f"{what}.basic_auth.username")
            if value.get("password") is not None:
                out["password"] = Secret(_str(value["password"], f"{what}.basic_auth.password"))
            out["password_file"] = _str(value.get("password_file"), f"{what}.basic_auth.password_file")
        elif section == "authorization":
            kind = _str(value.get("type"), f"{what}.authorization.type") or "Bearer"
            if kind != "Bearer":
                raise ConfigError(f"{what}.authorization.type: only Bearer is supported, got {kind!r}")
            if value.get("credentials") is not None:
                out["bearer_token"] = Secret(_str(value["credentials"], f"{what}.authorization.credentials"))
            out["bearer_token_file"] = _str(value.get("credentials_file"), f"{what}.authorization.credentials_file")
        else:
            for key in ("ca_file", "cert_file", "key_file"):
                out[key] = _str(value.get(key), f"{what}.tls_config.{key}")
            if "insecure_skip_verify" in value:
                v = value["insecure_skip_verify"]
                if not isinstance(v, bool):
                    raise ConfigError(f"{what}.tls_config.insecure_skip_verify: expected true or false, got {v!r}")
                out["insecure_skip_verify"] = v
    if base is not None:
        for key in ("password_file", "bearer_token_file", "ca_file", "cert_file", "key_file"):
            path = out.get(key)
            if isinstance(path, str) and path and not os.path.isabs(path):
                out[key] = str(base / path)
    return cast(AuthValues, {k: v for k, v in out.items() if v not in ("", None)})  # keys and types as above


_BASIC = ("username", "password", "password_file")
_BEARER = ("bearer_token", "bearer_token_file")
_EMPTY: dict[str, object] = {"username": "", "password": None, "password_file": "", "bearer_token": None,
                          "bearer_token_file": ""}


def merge(auth: PushgatewayAuth, values: AuthValues) -> PushgatewayAuth:
    """`auth` with a higher layer's `values` applied. A layer that sets one kind of credential clears the other
    kind below it (a token from the environment replaces basic auth from the file), and a password replaces a
    password file below it and vice versa."""
    if not values:
        return auth
    changes: dict[str, object] = dict(values)

    def clear(keys: tuple[str, ...]) -> None:
        for k in keys:
            if k not in values:
                changes[k] = _EMPTY[k]

    if set(_BASIC) & values.keys():
        clear(_BEARER)
    if set(_BEARER) & values.keys():
        clear(_BASIC)
    for a, b in (("password", "password_file"), ("bearer_token", "bearer_token_file")):
        if a in values:
            clear((b,))
        if b in values:
            clear((a,))
    return replace(auth, **cast(AuthValues, changes))  # `values` and the empty settings of _EMPTY


def split_userinfo(url: str) -> tuple[str, str, Secret | None]:
    """(url without user:password@, username, password) — credentials never stay in a URL that is logged."""
    if "@" not in url:
        return url, "", None
    full = url if "://" in url else "http://" + url
    parts = urlsplit(full)
    if not parts.username and parts.password is None:
        return url, "", None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    if "://" not in url:
        clean = clean.removeprefix("http://")
    password = Secret(unquote(parts.password)) if parts.password is not None else None
    return clean, unquote(parts.username or ""), password


def redact_url(url: str) -> str:
    """`url` with any user:password@ replaced by `<redacted>@`."""
    clean, user, pw = split_userinfo(url)
    if not user and pw is None:
        return url
    scheme, sep, rest = clean.partition("://")
    return f"{scheme}{sep}<redacted>@{rest}" if sep else f"<redacted>@{clean}"
