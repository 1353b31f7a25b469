"""The run client behind a Pushgateway that wants credentials: basic auth, bearer tokens, TLS with a private CA
and client certificates, from the environment or the config file, against the real Pushgateway binary; and
no secret in a log line, a repr, an error or a command line."""

from __future__ import annotations

import base64
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from carbonwatch.client import auth as pgauth
from carbonwatch.client.auth import PushgatewayAuth, Secret, redact_url, split_userinfo
from carbonwatch.client.pusher import Pusher, RunLabels, RunProgress
from carbonwatch.client.settings import resolve
from carbonwatch.errors import ConfigError
from carbonwatch.stack.config import SecureFiles, write_secure_files
from tests.support import free_port

PUSHGATEWAY = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
needs_pushgateway = pytest.mark.skipif(PUSHGATEWAY is None, reason="prometheus-pushgateway not installed")
SECRET = "Tr0ub4dor&3-secret"




# ------------------------------------------------------------------------------------------ settings


def test_environment_sets_basic_auth_tls_and_nothing_prints_the_password(tmp_path: Path) -> None:
    files = write_secure_files(tmp_path / "secure")
    env = {
        "CARBONWATCH_PUSHGATEWAY": "https://127.0.0.1:9091",
        "CARBONWATCH_PUSHGATEWAY_USERNAME": "alice",
        "CARBONWATCH_PUSHGATEWAY_PASSWORD": SECRET,
        "CARBONWATCH_PUSHGATEWAY_CA_FILE": str(files.ca_cert),
        "CARBONWATCH_PUSHGATEWAY_CERT_FILE": str(files.client_cert),
        "CARBONWATCH_PUSHGATEWAY_KEY_FILE": str(files.client_key),
    }
    s = resolve(environ=env)
    a = s.pushgateway_auth
    assert (a.username, a.ca_file, a.cert_file, a.key_file) == ("alice", str(files.ca_cert), str(files.client_cert),
                                                                str(files.client_key))  # fmt: skip
    assert a.headers() == {"Authorization": "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()}
    for text in (repr(s), str(s), repr(a), a.describe(), f"{a.password}", str(a.password)):
        assert SECRET not in text
    assert "basic auth as alice" in a.describe() and "CA " in a.describe()
    # The clean-up helper gets them through its environment, never its argv
    assert a.child_env()["CARBONWATCH_PUSHGATEWAY_PASSWORD"] == SECRET


def test_password_and_token_files_are_read_at_each_request(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(SECRET + "\n")
    s = resolve(environ={"CARBONWATCH_PUSHGATEWAY": "h:9091", "CARBONWATCH_PUSHGATEWAY_USERNAME": "bob",
                         "CARBONWATCH_PUSHGATEWAY_PASSWORD_FILE": str(pw)})  # fmt: skip
    assert s.pushgateway_auth.headers()["Authorization"] == "Basic " + base64.b64encode(
        f"bob:{SECRET}".encode()).decode()  # fmt: skip
    pw.write_text("rotated")
    assert base64.b64decode(s.pushgateway_auth.headers()["Authorization"][6:]) == b"bob:rotated"
    tok = tmp_path / "token"
    tok.write_text("tok-1\n")
    s = resolve(environ={"CARBONWATCH_PUSHGATEWAY": "h:9091", "CARBONWATCH_PUSHGATEWAY_BEARER_TOKEN_FILE": str(tok)})
    assert s.pushgateway_auth.headers() == {"Authorization": "Bearer tok-1"}


def test_config_file_section_with_relative_paths_and_env_precedence(tmp_path: Path) -> None:
    files = write_secure_files(tmp_path / "secure")
    (tmp_path / "pw").write_text(SECRET)
    cfg = tmp_path / "carbonwatch.yml"
    cfg.write_text(yaml.safe_dump({"run": {
        "pushgateway": "https://pg.example:9091",
        "pushgateway_auth": {"basic_auth": {"username": "carol", "password_file": "pw"},
                             "tls_config": {"ca_file": "secure/ca.crt"}},
    }}))  # fmt: skip
    s = resolve(config_file=str(cfg), environ={})
    assert s.pushgateway_auth.username == "carol"
    assert s.pushgateway_auth.password_file == str(tmp_path / "pw")
    assert s.pushgateway_auth.ca_file == str(files.ca_cert.parent / "ca.crt")
    # a bearer token from the environment replaces the file's basic auth; the file's CA stays
    s = resolve(config_file=str(cfg), environ={"CARBONWATCH_PUSHGATEWAY_BEARER_TOKEN": "tok"})
    a = s.pushgateway_auth
    assert (a.username, a.password_file, a.ca_file) == ("", "", str(tmp_path / "secure" / "ca.crt"))
    assert a.headers() == {"Authorization": "Bearer tok"}
    # a password from the environment replaces the file's password file
    s = resolve(config_file=str(cfg), environ={"CARBONWATCH_PUSHGATEWAY_PASSWORD": "other"})
    assert (s.pushgateway_auth.username, s.pushgateway_auth.password_file) == ("carol", "")
    assert base64.b64decode(s.pushgateway_auth.headers()["Authorization"][6:]) == b"carol:other"


def test_credentials_in_the_url_move_out_of_it() -> None:
    s = resolve({"pushgateway": f"https://dave:{SECRET}@pg.example:9091/prefix"}, environ={})
    assert s.pushgateway == "https://pg.example:9091/prefix"
    assert s.pushgateway_auth.username == "dave" and s.pushgateway_auth.password == Secret(SECRET)
    assert split_userinfo("u:p%40ss@host:9091") == ("host:9091", "u", Secret("p@ss"))
    assert redact_url(f"http://u:{SECRET}@[::1]:9091/x") == "http://<redacted>@[::1]:9091/x"
    assert redact_url("http://host:9091") == "http://host:9091"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CARBONWATCH_PUSHGATEWAY_USERNAME": "u"}, "username 'u' is set without a password"),
        ({"CARBONWATCH_PUSHGATEWAY_PASSWORD": "p"}, "a password is set without a username"),
        ({"CARBONWATCH_PUSHGATEWAY_CERT_FILE": "/etc/hostname"}, "needs both cert_file and key_file"),
        ({"CARBONWATCH_PUSHGATEWAY_CA_FILE": "/nonexistent/ca.crt"}, "ca_file /nonexistent/ca.crt does not exist"),
        ({"CARBONWATCH_PUSHGATEWAY_CA_FILE": "/etc/hostname"}, "ca_file /etc/hostname holds no usable certificate"),
        ({"CARBONWATCH_PUSHGATEWAY_INSECURE_SKIP_VERIFY": "perhaps"}, "CARBONWATCH_PUSHGATEWAY_INSECURE_SKIP_VERIFY"),
        ({"CARBONWATCH_PUSHGATEWAY_PASSWORD_FILE": "/nonexistent/pw", "CARBONWATCH_PUSHGATEWAY_USERNAME": "u"},
         "password_file /nonexistent/pw does not exist"),
    ],
)
def test_bad_credentials_settings_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        resolve(environ={"CARBONWATCH_PUSHGATEWAY": "h:9091", **env})


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"basic": {}}, "run.pushgateway_auth.basic: unknown key"),
        ({"basic_auth": {"user": "x"}}, "run.pushgateway_auth.basic_auth.user: unknown key"),
        ({"authorization": {"type": "Digest", "credentials": "x"}}, "authorization.type: only Bearer"),
        ({"tls_config": {"insecure_skip_verify": "yes"}}, "tls_config.insecure_skip_verify: expected true or false"),
        ({"basic_auth": {"username": "u", "password": "p"}, "authorization": {"credentials": "t"}},
         "set basic auth or a bearer token, not both"),
        ("just a string", "run.pushgateway_auth: expected a mapping"),
    ],
)
def test_bad_config_section_is_named(tmp_path: Path, section: Any, named: str) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(yaml.safe_dump({"run": {"pushgateway": "h:9091", "pushgateway_auth": section}}))
    with pytest.raises(ConfigError, match=named):
        resolve(config_file=str(cfg), environ={})


# ------------------------------------------------------------------- pushes against real gateways


def progress(run_id: str = "auth-test") -> RunProgress:
    p = RunProgress(RunLabels(run_id=run_id, user="alice"))
    p.update(lambda st: setattr(st, "samples", 128.0))
    return p


def start_pushgateway(tmp_path: Path, web_config: Path) -> tuple[subprocess.Popen[bytes], int]:
    assert PUSHGATEWAY is not None
    port = free_port()
    proc = subprocess.Popen(
        [PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={web_config}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "pushgateway.log", "wb"),
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError((tmp_path / "pushgateway.log").read_text())


@pytest.fixture
def secure_gateway(tmp_path: Path) -> Iterator[tuple[SecureFiles, str]]:
    if PUSHGATEWAY is None:
        pytest.skip("prometheus-pushgateway not installed")
    files = write_secure_files(tmp_path / "secure")
    proc, port = start_pushgateway(tmp_path, files.pushgateway_web)
    try:
        yield files, f"https://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def groups(files: SecureFiles, url: str) -> list[dict[str, Any]]:
    r = requests.get(url + "/api/v1/metrics", verify=str(files.ca_cert), auth=(files.username, files.password()),
                     timeout=5)  # fmt: skip
    r.raise_for_status()
    data: list[dict[str, Any]] = r.json()["data"]
    return data


@needs_pushgateway
@pytest.mark.slow  # a real Pushgateway behind TLS
def test_pushes_reach_a_pushgateway_behind_tls_and_basic_auth(
    secure_gateway: tuple[SecureFiles, str], caplog: pytest.LogCaptureFixture
) -> None:
    files, url = secure_gateway
    env = {"CARBONWATCH_PUSHGATEWAY": url, "CARBONWATCH_PUSHGATEWAY_USERNAME": files.username,
           "CARBONWATCH_PUSHGATEWAY_PASSWORD_FILE": str(files.password_file),
           "CARBONWATCH_PUSHGATEWAY_CA_FILE": str(files.ca_cert)}  # fmt: skip
    s = resolve(environ=env)
    assert s.pushgateway is not None
    pusher = Pusher(s.pushgateway, progress(), auth=s.pushgateway_auth)
    assert pusher.push_once(), pusher.last_error
    got = [g for g in groups(files, url) if g["labels"].get("run_id") == "auth-test"]
    assert got and "carbonwatch_run_samples_total" in got[0]
    assert float(got[0]["carbonwatch_run_samples_total"]["metrics"][0]["value"]) == 128.0
    # the reaper's fetch and the group deletion go through the same settings
    listed = s.pushgateway_auth.fetch(url + "/api/v1/metrics", 5)
    assert b"auth-test" in listed
    assert pusher.delete()
    assert not [g for g in groups(files, url) if g["labels"].get("run_id") == "auth-test"]


@needs_pushgateway
@pytest.mark.slow  # a real Pushgateway behind TLS
def test_wrong_password_or_unknown_ca_fail_with_a_clear_error_and_no_secret(
    secure_gateway: tuple[SecureFiles, str], caplog: pytest.LogCaptureFixture
) -> None:
    files, url = secure_gateway
    caplog.set_level(logging.DEBUG)
    host = url.split("://", 1)[1]
    wrong = resolve({"pushgateway": f"https://{files.username}:{SECRET}@{host}"},
                    environ={"CARBONWATCH_PUSHGATEWAY_CA_FILE": str(files.ca_cert)})  # fmt: skip
    assert wrong.pushgateway == url  # the password left the URL
    p = Pusher(wrong.pushgateway, progress("wrong-pw"), auth=wrong.pushgateway_auth, timeout=5)
    assert not p.push_once()
    assert "HTTP 401" in p.last_error and "check the credentials" in p.last_error
    no_ca = resolve({"pushgateway": url, "pushgateway_auth": PushgatewayAuth(
        username=files.username, password=Secret(files.password()))}, environ={})  # fmt: skip
    p2 = Pusher(no_ca.pushgateway or "", progress("no-ca"), auth=no_ca.pushgateway_auth, timeout=5)
    assert not p2.push_once()
    assert "TLS failed" in p2.last_error and "CARBONWATCH_PUSHGATEWAY_CA_FILE" in p2.last_error
    # insecure_skip_verify only when asked: then it goes through
    skip = PushgatewayAuth(username=files.username, password=Secret(files.password()), insecure_skip_verify=True)
    assert Pusher(url, progress("skip"), auth=skip, timeout=5).push_once()
    text = caplog.text + p.last_error + p2.last_error + repr(wrong) + repr(no_ca) + repr(p.auth)
    assert SECRET not in text and files.password() not in text
    assert "cannot push to the Pushgateway" in caplog.text


@needs_pushgateway
def test_client_certificate_for_a_gateway_that_requires_one(tmp_path: Path) -> None:
    files = write_secure_files(tmp_path / "secure")
    web = yaml.safe_load(files.exporter_web.read_text())  # TLS + RequireAndVerifyClientCert + basic auth
    strict = files.dir / "strict-web.yml"
    strict.write_text(yaml.safe_dump(web))
    proc, port = start_pushgateway(tmp_path, strict)
    url = f"https://127.0.0.1:{port}"
    try:
        base = {"CARBONWATCH_PUSHGATEWAY": url, "CARBONWATCH_PUSHGATEWAY_USERNAME": files.username,
                "CARBONWATCH_PUSHGATEWAY_PASSWORD_FILE": str(files.password_file),
                "CARBONWATCH_PUSHGATEWAY_CA_FILE": str(files.ca_cert)}  # fmt: skip
        without = resolve(environ=base)
        p = Pusher(url, progress("mtls"), auth=without.pushgateway_auth, timeout=5)
        assert not p.push_once()
        with_cert = resolve(environ={**base, "CARBONWATCH_PUSHGATEWAY_CERT_FILE": str(files.client_cert),
                                     "CARBONWATCH_PUSHGATEWAY_KEY_FILE": str(files.client_key)})  # fmt: skip
        assert Pusher(url, progress("mtls"), auth=with_cert.pushgateway_auth, timeout=5).push_once()
    finally:
        proc.terminate()
        proc.wait(10)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).seen.append((self.path, self.headers.get("Authorization") or ""))
        ok = self.headers.get("Authorization") == "Bearer tok-2"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_bearer_token_from_a_file_is_sent_and_rotation_is_picked_up(tmp_path: Path) -> None:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Recorder.seen = []
    try:
        tok = tmp_path / "token"
        tok.write_text("tok-1\n")
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        s = resolve(environ={"CARBONWATCH_PUSHGATEWAY": url, "CARBONWATCH_PUSHGATEWAY_BEARER_TOKEN_FILE": str(tok)})
        p = Pusher(url, progress("bearer"), auth=s.pushgateway_auth, timeout=5)
        assert not p.push_once() and "HTTP 401" in p.last_error and "tok-1" not in p.last_error
        tok.write_text("tok-2\n")
        assert p.push_once()
        assert [a for _path, a in _Recorder.seen] == ["Bearer tok-1", "Bearer tok-2"]
        assert _Recorder.seen[0][0] == "/metrics/job/carbonwatch_run/run_id/bearer"
    finally:
        srv.shutdown()
        srv.server_close()


def test_merge_layers() -> None:
    base = PushgatewayAuth(username="u", password_file="/pw", ca_file="/ca")
    assert pgauth.merge(base, {"bearer_token": Secret("t")}) == PushgatewayAuth(bearer_token=Secret("t"), ca_file="/ca")
    assert pgauth.merge(base, {"password": Secret("p")}) == PushgatewayAuth(username="u", password=Secret("p"),
                                                                            ca_file="/ca")  # fmt: skip
    assert pgauth.merge(base, {}) is base
