"""The exporter's HTTP side (carbonwatch.node.web): real servers on 127.0.0.1, real TLS handshakes with certificates
made here, bcrypt users, gzip, OpenMetrics, HEAD, routes, limits, reloads, and the `carbonwatch exporter`
process with `--web.config.file`."""

from __future__ import annotations

import base64
import gzip
import http.client
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from carbonwatch.errors import ConfigError
from carbonwatch.node.web import (
    BasicAuth,
    RateLimiter,
    Renderer,
    WebState,
    accepts_gzip,
    load_web_config,
    parse_web_config,
    render_metrics,
    render_openmetrics,
    render_text,
    serve,
)
from carbonwatch.stack.config import issue_certificate, new_ca

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-pass"


# ------------------------------------------------------------------------------------------- certificates


def _pem_key(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))  # fmt: skip


def _pem_cert(cert: Any) -> bytes:
    return bytes(cert.public_bytes(serialization.Encoding.PEM))


class PKI:
    """A CA, a server certificate for 127.0.0.1 and localhost, a client certificate from the same CA and one
    from another CA, written to `dir`."""

    def __init__(self, d: Path) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.dir = d
        ca, ca_key = new_ca("test CA")
        other, other_key = new_ca("another CA")
        self.ca = self._write("ca.crt", _pem_cert(ca))
        self.other_ca = self._write("other-ca.crt", _pem_cert(other))
        for name, signer, signer_key, hosts, server in (
            ("server", ca, ca_key, ["127.0.0.1", "localhost"], True),
            ("server2", ca, ca_key, ["127.0.0.1", "localhost"], True),
            ("client", ca, ca_key, ["scraper.example"], False),
            ("client-other-san", ca, ca_key, ["intruder.example"], False),
            ("stranger", other, other_key, ["scraper.example"], False),
        ):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = issue_certificate(signer, signer_key, key, name, hosts, server=server)
            self._write(f"{name}.crt", _pem_cert(cert))
            self._write(f"{name}.key", _pem_key(key))

    def _write(self, name: str, data: bytes) -> Path:
        p = self.dir / name
        p.write_bytes(data)
        return p

    def cert(self, name: str) -> tuple[str, str]:
        return str(self.dir / f"{name}.crt"), str(self.dir / f"{name}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def hashed() -> str:
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def web_config(tmp_path: Path, doc: dict[str, Any], name: str = "web.yml") -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc))
    return str(p)


# ------------------------------------------------------------------------------------------------ server


class Families(Collector):
    """Fixed families, built fresh on each collect, as the exporter's collectors do."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("carbonwatch_test_watts", 'Power with "quotes" and \\ backslash\nand a newline.',
                              labels=["pid", "comm"])  # fmt: skip
        g.add_metric(["1", 'py"th\\on\nx'], 12.5)
        g.add_metric(["2", "ünïcode"], float("inf"))
        yield g
        c = CounterMetricFamily("carbonwatch_test_energy_joules", "Energy.", labels=["component"])
        c.add_metric(["cpu"], 3600.25)
        yield c
        yield GaugeMetricFamily("carbonwatch_test_up", "Up.", value=1)


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Families())
    return reg


@pytest.fixture
def server_factory() -> Iterator[Any]:
    servers = []

    def make(**kw: Any) -> Any:
        srv = serve("127.0.0.1", 0, [kw.pop("reg", None) or registry()], **kw)
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------------------------------- negotiation


def test_text_format_by_default_and_openmetrics_when_asked(server_factory: Any) -> None:
    srv = server_factory()
    plain = requests.get(srv.url + "/metrics", timeout=5)
    assert plain.status_code == 200
    assert plain.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert plain.content == render_text([registry()])
    names = {f.name for f in text_string_to_metric_families(plain.text)}
    assert {"carbonwatch_test_watts", "carbonwatch_test_energy_joules", "carbonwatch_test_up"} <= names
    # What Prometheus 2.x sends: OpenMetrics first.
    accept = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
              "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
    om = requests.get(srv.url + "/metrics", headers={"Accept": accept}, timeout=5)
    # prometheus-client names the escaping scheme it used (Prometheus reads the media type and version)
    assert om.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert om.text.endswith("# EOF\n")
    fams = {f.name: f for f in om_parse(om.text)}
    assert fams["carbonwatch_test_energy_joules"].type == "counter"
    sample = next(s for s in fams["carbonwatch_test_watts"].samples if s.labels["pid"] == "1")
    assert sample.labels["comm"] == 'py"th\\on\nx' and sample.value == 12.5
    # Prometheus 3's header, with escaping=underscores and a text fallback
    p3 = ("application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5,"
          "text/plain;version=1.0.0;escaping=underscores;q=0.3,*/*;q=0.1")
    assert requests.get(srv.url + "/metrics", headers={"Accept": p3}, timeout=5).text == om.text


def test_openmetrics_renderer_writes_the_librarys_bytes() -> None:
    reg = registry()
    Histogram("carbonwatch_test_seconds", "A histogram goes through the library.", registry=reg).observe(0.3)
    assert render_openmetrics([reg]) == om_generate_latest(reg)
    body, ctype = render_metrics([reg], "application/openmetrics-text; version=1.0.0")
    assert body == om_generate_latest(reg) and ctype.startswith("application/openmetrics-text; version=1.0.0")
    # escaping=values rewrites names: that rare request is left to the library, which knows how
    body, ctype = render_metrics([reg], "application/openmetrics-text;version=1.0.0;escaping=values")
    assert "escaping=values" in ctype and b"U__carbonwatch__test__watts" in body


def test_concurrent_scrapes_share_one_rendering() -> None:
    """A burst of scrapes asking for the same body while one renders waits for that rendering, so scrapes never
    render side by side (the sampler keeps its share of the interpreter)."""
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    class Slow(Collector):
        def describe(self) -> list[Metric]:
            return []

        def collect(self) -> Iterator[Metric]:
            calls.append(1)
            entered.set()
            release.wait(10)
            yield GaugeMetricFamily("carbonwatch_test_up", "Up.", value=1)

    renderer = Renderer([Slow()])
    bodies: list[bytes] = []
    leader = threading.Thread(target=lambda: bodies.append(renderer.body(None, False)[0]))
    leader.start()
    assert entered.wait(10)
    followers = [threading.Thread(target=lambda: bodies.append(renderer.body(None, False)[0])) for _ in range(4)]
    for t in followers:
        t.start()
    time.sleep(0.5)  # the followers are waiting for the leader's rendering
    release.set()
    for t in [leader, *followers]:
        t.join(10)
    assert len(calls) == 1 and len(bodies) == 5 and len(set(bodies)) == 1
    assert b"carbonwatch_test_up 1.0" in bodies[0]
    # another format, or gzip, is another body; once done, the next scrape renders afresh
    zipped, _ = renderer.body(None, True)
    assert gzip.decompress(zipped) == bodies[0] and len(calls) == 2


def test_gzip_only_when_the_client_asks(server_factory: Any) -> None:
    srv = server_factory()
    url = srv.url + "/metrics"
    zipped = requests.get(url, headers={"Accept-Encoding": "gzip"}, stream=True, timeout=5)
    raw = zipped.raw.read(decode_content=False)
    assert zipped.headers["Content-Encoding"] == "gzip" and zipped.headers["Vary"] == "Accept-Encoding"
    assert int(zipped.headers["Content-Length"]) == len(raw)
    assert gzip.decompress(raw) == render_text([registry()])
    for header in ("identity", "gzip;q=0", "br, deflate", ""):
        r = requests.get(url, headers={"Accept-Encoding": header}, stream=True, timeout=5)
        assert "Content-Encoding" not in r.headers, header
        assert r.raw.read(decode_content=False) == render_text([registry()])
    assert accepts_gzip("deflate, gzip;q=0.5") and accepts_gzip("*") and not accepts_gzip("gzip;q=0, br")


def test_head_answers_the_headers_of_get_without_a_body(server_factory: Any) -> None:
    srv = server_factory(routes={"/intensity": lambda q: (200, b'{"zone": "DE"}', "application/json")})
    for path in ("/metrics", "/", "/intensity"):
        get = requests.get(srv.url + path, headers={"Accept-Encoding": "identity"}, timeout=5)
        head = requests.head(srv.url + path, headers={"Accept-Encoding": "identity"}, timeout=5)
        assert head.status_code == get.status_code == 200
        assert head.content == b""
        assert head.headers["Content-Type"] == get.headers["Content-Type"]
        assert head.headers["Content-Length"] == str(len(get.content))


def test_landing_page_routes_404_and_405(server_factory: Any) -> None:
    calls: list[dict[str, list[str]]] = []

    def feed(query: Any) -> tuple[int, bytes, str]:
        calls.append(dict(query))
        return (200, b'{"ok": true}', "application/json") if query.get("zone") else (400, b"zone?\n", "text/plain")

    srv = server_factory(routes={"/intensity": lambda q: (200, b"{}", "application/json"), "/feed": feed})
    landing = requests.get(srv.url + "/", timeout=5)
    assert landing.headers["Content-Type"].startswith("text/html")
    assert {'href="/metrics"', 'href="/intensity"', 'href="/feed"'} <= set(re.findall(r'href="[^"]+"', landing.text))
    r = requests.get(srv.url + "/intensity", timeout=5)
    assert (r.status_code, r.headers["Content-Type"], r.content) == (200, "application/json", b"{}")
    assert requests.get(srv.url + "/feed?zone=DE&zone=FR", timeout=5).status_code == 200
    assert requests.get(srv.url + "/feed", timeout=5).status_code == 400
    assert calls == [{"zone": ["DE", "FR"]}, {}]
    assert requests.get(srv.url + "/nope", timeout=5).status_code == 404
    post = requests.post(srv.url + "/metrics", data=b"x", timeout=5)
    assert post.status_code == 405 and post.headers["Allow"] == "GET, HEAD"


def test_a_failing_route_is_a_500_and_the_server_goes_on(server_factory: Any) -> None:
    def broken(query: Any) -> tuple[int, bytes, str]:
        raise RuntimeError("provider exploded")

    srv = server_factory(routes={"/broken": broken})
    r = requests.get(srv.url + "/broken", timeout=5)
    assert r.status_code == 500 and "provider exploded" not in r.text
    assert requests.get(srv.url + "/metrics", timeout=5).status_code == 200


def test_connections_are_kept_alive(server_factory: Any) -> None:
    srv = server_factory()
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=5)
    for _ in range(3):
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == render_text([registry()])
    sock = conn.sock
    conn.request("GET", "/")
    conn.getresponse().read()
    assert conn.sock is sock  # the same TCP connection served all four
    conn.close()


def test_requests_over_the_in_flight_limit_wait_then_get_503(server_factory: Any) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(query: Any) -> tuple[int, bytes, str]:
        entered.set()
        release.wait(10)
        return 200, b"done\n", "text/plain"

    srv = server_factory(routes={"/slow": slow}, max_requests=1, request_wait=0.3)
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(requests.get(srv.url + "/slow", timeout=15).status_code))
    t.start()
    assert entered.wait(10)
    try:
        assert requests.get(srv.url + "/metrics", timeout=5).status_code == 503  # after waiting 0.3 s in vain
        assert requests.get(srv.url + "/", timeout=5).status_code == 200  # the landing page renders nothing
        waiter: list[int] = []  # one that waits while the slot frees gets its answer
        w = threading.Thread(target=lambda: waiter.append(requests.get(srv.url + "/metrics", timeout=15).status_code))
        srv.request_wait = 10.0
        w.start()
        time.sleep(0.2)
        release.set()
        w.join(15)
        assert waiter == [200]
    finally:
        release.set()
        t.join(15)
    assert results == [200]
    assert requests.get(srv.url + "/metrics", timeout=5).status_code == 200


# ---------------------------------------------------------------------------------------- basic auth


def test_basic_auth_wrong_missing_or_unknown_is_401_with_www_authenticate(
    server_factory: Any, tmp_path: Path, hashed: str
) -> None:
    cfg = web_config(tmp_path, {"basic_auth_users": {"prometheus": hashed},
                                "http_server_config": {"headers": {"X-Frame-Options": "deny"}}})  # fmt: skip
    srv = server_factory(web_config_file=cfg)
    url = srv.url + "/metrics"
    for headers in ({}, {"Authorization": basic("prometheus", "wrong")}, {"Authorization": basic("alice", PASSWORD)},
                    {"Authorization": "Basic !!!not-base64"}, {"Authorization": "Bearer " + PASSWORD},
                    {"Authorization": basic("prometheus", PASSWORD + "x" * 80)}):  # fmt: skip
        r = requests.get(url, headers=headers, timeout=5)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"] == "Basic"
        assert r.headers["X-Frame-Options"] == "deny"  # configured headers on every answer
        assert "carbonwatch_test" not in r.text
        assert requests.head(url, headers=headers, timeout=5).status_code == 401
    ok = requests.get(url, auth=("prometheus", PASSWORD), timeout=5)
    assert ok.status_code == 200 and ok.headers["X-Frame-Options"] == "deny"
    assert "carbonwatch_test_up 1.0" in ok.text
    for path in ("/", "/nope"):  # everything is behind the password, as in the toolkit
        assert requests.get(srv.url + path, timeout=5).status_code == 401


def test_bcrypt_results_are_cached_and_unknown_users_cost_a_check(hashed: str) -> None:
    auth = BasicAuth({"prometheus": hashed.encode()})
    assert auth.check(basic("prometheus", PASSWORD)) and auth.check(basic("prometheus", PASSWORD))
    assert not auth.check(basic("nobody", PASSWORD)) and not auth.check(basic("prometheus", "nope"))
    assert len(auth._cache) == 3  # each distinct attempt checked once
    cfg = parse_web_config({"basic_auth_users": {"prometheus": hashed}})
    assert "prometheus" in repr(cfg) and "$2" not in repr(cfg) and "$2" not in repr(auth)  # hashes never printed
    y = hashed.replace("$2b$", "$2y$", 1)  # htpasswd's prefix
    assert BasicAuth({"u": y.encode()}).check(basic("u", PASSWORD))


def test_rate_limit_answers_429(server_factory: Any, tmp_path: Path) -> None:
    srv = server_factory(web_config_file=web_config(tmp_path, {"rate_limit": {"interval": "1h", "burst": 2}}))
    codes = [requests.get(srv.url + "/metrics", timeout=5).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    t = [0.0]
    lim = RateLimiter(1.0, 1, clock=lambda: t[0])
    assert lim.allow() and not lim.allow()
    t[0] = 1.0
    assert lim.allow()


# ----------------------------------------------------------------------------------------------- TLS


def tls_get(srv: Any, ca: Path | str | None, cert: tuple[str, str] | None = None, path: str = "/metrics",
            auth: tuple[str, str] | None = None, **kw: Any) -> requests.Response:  # fmt: skip
    return requests.get(srv.url + path, verify=str(ca) if ca else True, cert=cert, auth=auth, timeout=5, **kw)


def test_tls_serves_verified_clients_and_refuses_plain_http(server_factory: Any, tmp_path: Path, pki: PKI) -> None:
    server_crt, server_key = pki.cert("server")
    srv = server_factory(web_config_file=web_config(tmp_path, {"tls_server_config": {
        "cert_file": server_crt, "key_file": server_key}}))  # fmt: skip
    assert srv.url.startswith("https://")
    r = tls_get(srv, pki.ca)
    assert r.status_code == 200 and "carbonwatch_test_up" in r.text
    with pytest.raises(requests.exceptions.SSLError):
        tls_get(srv, pki.other_ca)  # a client that does not trust our CA
    plain = requests.get(srv.url.replace("https://", "http://") + "/metrics", timeout=5)  # plain HTTP: a 400
    assert plain.status_code == 400 and "HTTP request to an HTTPS server" in plain.text
    assert "carbonwatch_test" not in plain.text
    # TLS 1.3 by default allowed; TLS 1.1 refused (the default minimum is TLS12)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            assert s.version() == "TLSv1.3"
    assert requests.get(srv.url + "/metrics", verify=str(pki.ca), timeout=5).status_code == 200


def test_min_version_tls13_refuses_a_tls12_client(server_factory: Any, tmp_path: Path, pki: PKI) -> None:
    server_crt, server_key = pki.cert("server")
    srv = server_factory(web_config_file=web_config(tmp_path, {"tls_server_config": {
        "cert_file": server_crt, "key_file": server_key, "min_version": "TLS13"}}))  # fmt: skip
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    assert tls_get(srv, pki.ca).status_code == 200


def test_mtls_requires_a_client_certificate_from_the_client_ca(
    server_factory: Any, tmp_path: Path, pki: PKI, hashed: str
) -> None:
    server_crt, server_key = pki.cert("server")
    cfg = web_config(tmp_path, {
        "tls_server_config": {"cert_file": server_crt, "key_file": server_key,
                              "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca),
                              "client_allowed_sans": ["scraper.example"]},
        "basic_auth_users": {"prometheus": hashed},
    })  # fmt: skip
    srv = server_factory(web_config_file=cfg)
    ok = tls_get(srv, pki.ca, pki.cert("client"), auth=("prometheus", PASSWORD))
    assert ok.status_code == 200
    assert tls_get(srv, pki.ca, pki.cert("client"), auth=("prometheus", "nope")).status_code == 401
    for cert in (None, pki.cert("stranger"), pki.cert("client-other-san")):
        with pytest.raises(requests.ConnectionError):  # handshake refused, or closed for a SAN not allowed
            tls_get(srv, pki.ca, cert, auth=("prometheus", PASSWORD))
    assert tls_get(srv, pki.ca, pki.cert("client"), auth=("prometheus", PASSWORD)).status_code == 200


def test_verify_client_cert_if_given(server_factory: Any, tmp_path: Path, pki: PKI) -> None:
    server_crt, server_key = pki.cert("server")
    srv = server_factory(web_config_file=web_config(tmp_path, {"tls_server_config": {
        "cert_file": server_crt, "key_file": server_key, "client_auth_type": "VerifyClientCertIfGiven",
        "client_ca_file": str(pki.ca)}}))  # fmt: skip
    assert tls_get(srv, pki.ca).status_code == 200
    assert tls_get(srv, pki.ca, pki.cert("client")).status_code == 200
    with pytest.raises(requests.ConnectionError):
        tls_get(srv, pki.ca, pki.cert("stranger"))


def test_inline_certificate_and_key(server_factory: Any, tmp_path: Path, pki: PKI) -> None:
    crt, key = pki.cert("server")
    srv = server_factory(web_config_file=web_config(tmp_path, {"tls_server_config": {
        "cert": Path(crt).read_text(), "key": Path(key).read_text()}}))  # fmt: skip
    assert tls_get(srv, pki.ca).status_code == 200
    assert "PRIVATE KEY" not in repr(srv.web.config)


def eventually(probe: Any, expected: Any, timeout: float = 20.0) -> Any:
    """Poll `probe()` until it returns `expected` (the watcher thread reloads on its own clock)."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_certificates_and_users_reload_and_a_broken_file_fails_closed(
    server_factory: Any, tmp_path: Path, pki: PKI, hashed: str
) -> None:
    crt, key = tmp_path / "server.crt", tmp_path / "server.key"
    crt.write_bytes(Path(pki.cert("server")[0]).read_bytes())
    key.write_bytes(Path(pki.cert("server")[1]).read_bytes())
    path = web_config(tmp_path, {"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"}})
    srv = server_factory(web_config_file=path)
    srv.web.CHECK_EVERY = 0.05

    def served_serial() -> int:
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                from cryptography import x509

                der = s.getpeercert(binary_form=True)
                assert der is not None
                return int(x509.load_der_x509_certificate(der).serial_number)

    def serial_of(p: str) -> int:
        from cryptography import x509

        return int(x509.load_pem_x509_certificate(Path(p).read_bytes()).serial_number)

    def status(auth: tuple[str, str] | None = None) -> int:
        return tls_get(srv, pki.ca, auth=auth).status_code

    assert served_serial() == serial_of(pki.cert("server")[0])
    # rotate: new files, same names (mtime changes); the watcher swaps them in without a request's help
    time.sleep(0.01)
    crt.write_bytes(Path(pki.cert("server2")[0]).read_bytes())
    key.write_bytes(Path(pki.cert("server2")[1]).read_bytes())
    assert eventually(served_serial, serial_of(pki.cert("server2")[0])) == serial_of(pki.cert("server2")[0])
    # add a user: requests soon need the password
    Path(path).write_text(yaml.safe_dump({"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
                                          "basic_auth_users": {"prometheus": hashed}}))  # fmt: skip
    assert eventually(status, 401) == 401
    assert status(("prometheus", PASSWORD)) == 200
    # a broken file: every request is refused (500), never served without the password
    Path(path).write_text(Path(path).read_text() + "\nbasic_auth_users: [\n")
    assert eventually(lambda: status(("prometheus", PASSWORD)), 500) == 500
    r = tls_get(srv, pki.ca, auth=("prometheus", PASSWORD))
    assert r.status_code == 500 and "carbonwatch_test" not in r.text
    Path(path).write_text(yaml.safe_dump({"tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
                                          "basic_auth_users": {"prometheus": hashed}}))  # fmt: skip
    assert eventually(lambda: status(("prometheus", PASSWORD)), 200) == 200
    # a reload changes nothing when nothing changed, and the watcher stops with the server
    assert srv.web.refresh() is False
    srv.server_close()
    assert srv.web._watcher is not None and not srv.web._watcher.is_alive()


# ------------------------------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        ("tls_server_confg: {}", "tls_server_confg: unknown key"),
        ("tls_server_config: {cert_file: a.crt}", "tls_server_config: missing one of key or key_file"),
        ("tls_server_config: {key_file: a.key}", "tls_server_config: missing one of cert or cert_file"),
        ("tls_server_config: {cert_file: nope.crt, key_file: nope.key}", "tls_server_config.cert_file: cannot read"),
        ("tls_server_config: {cert_file: S.crt, key_file: S.key, client_auth_type: Sometimes}",
         "tls_server_config.client_auth_type: must be one of"),
        ("tls_server_config: {cert_file: S.crt, key_file: S.key, client_auth_type: RequireAnyClientCert}",
         "tls_server_config.client_auth_type: RequireAnyClientCert accepts unverified"),
        ("tls_server_config: {cert_file: S.crt, key_file: S.key, client_auth_type: RequireAndVerifyClientCert}",
         "tls_server_config.client_auth_type: RequireAndVerifyClientCert needs client_ca_file"),
        ("tls_server_config: {cert_file: S.crt, key_file: S.key, client_ca_file: CA}",
         "tls_server_config.client_ca_file: a client CA is configured but client_auth_type is NoClientCert"),
        ("tls_server_config: {cert_file: S.crt, key_file: S.key, min_version: TLS14}",
         "tls_server_config.min_version: must be one of TLS10"),
        ("tls_server_config: {cert_file: S.crt, key_file: S.key, min_version: TLS13, max_version: TLS12}",
         "tls_server_config.min_version: TLS13 is above max_version"),
        ("tls_server_config: {cert_file: S.crt, key_file: S.key, cipher_suites: [TLS_RC4]}",
         "tls_server_config.cipher_suites: unknown cipher 'TLS_RC4'"),
        ("tls_server_config: {cert_file: S.crt, key_file: S.key, curve_preferences: [CurveP999]}",
         "tls_server_config.curve_preferences: unknown curve"),
        ("tls_server_config: {cert_file: S.crt, key_file: C.key}",
         "tls_server_config.cert_file/key_file: cannot load the certificate and key"),
        ("tls_server_config: {cert_file: S.crt, key_file: S.key, client_auth_type: VerifyClientCertIfGiven, "
         "client_ca_file: S.key}", "tls_server_config.client_ca_file: cannot load"),
        ("basic_auth_users: {prometheus: plaintext}", "basic_auth_users.prometheus: not a bcrypt hash"),
        ("basic_auth_users: [prometheus]", "basic_auth_users: expected a mapping"),
        ("http_server_config: {headers: {X-Powered-By: me}}", "http_server_config.headers: HTTP header 'X-Powered-By'"),
        ("http_server_config: {headers: {X-Frame-Options: allow}}",
         "http_server_config.headers.X-Frame-Options: must be one of deny, sameorigin"),
        ("http_server_config: {http2: maybe}", "http_server_config.http2: expected bool"),
        ("rate_limit: {interval: 1s}", "rate_limit.burst: must be at least 1"),
        ("rate_limit: {interval: often, burst: 1}", "rate_limit.interval"),
        ("- a list", "top level: expected a mapping"),
        ("tls_server_config: [", "is not valid YAML"),
    ],
)
def test_a_bad_web_config_names_the_file_and_the_key(tmp_path: Path, pki: PKI, doc: str, named: str) -> None:
    for name, src in (("S.crt", pki.cert("server")[0]), ("S.key", pki.cert("server")[1]),
                      ("C.key", pki.cert("client")[1]), ("CA", str(pki.ca))):  # fmt: skip
        (tmp_path / name).write_bytes(Path(src).read_bytes())
    path = tmp_path / "web.yml"
    path.write_text(doc)
    with pytest.raises(ConfigError) as err:
        load_web_config(path, "--web.config.file")
    msg = str(err.value)
    assert msg.startswith("--web.config.file: ") and str(path) in msg, msg
    assert named in msg, msg


def test_an_empty_file_is_plain_http_and_a_missing_file_is_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    state = WebState(str(empty))
    assert not state.tls and not state.live.auth.enabled
    with pytest.raises(ConfigError, match=r"^web.config_file: cannot read '.*missing.yml': No such file"):
        load_web_config(tmp_path / "missing.yml")


# ------------------------------------------------------------------------------ the exporter process


def _exporter(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cfg = tmp_path / "exporter.yml"
    cfg.write_text(yaml.safe_dump({"web": {"listen_address": "127.0.0.1:0"}, "storage": {"path": str(tmp_path)},
                                   "collectors": {"gpu": False, "intensity": False},
                                   "process": {"spool_dir": str(tmp_path / "spool")}}))  # fmt: skip
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    run_env.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "carbonwatch", "exporter", "--config.file", str(cfg), *args],
                            cwd=ROOT, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _listening(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on (https?://\S+/metrics) \((.*)\)", line)
        if m:
            return m.group(1), m.group(2)
    proc.kill()
    raise AssertionError("exporter did not start:\n" + "".join(lines))


def test_exporter_refuses_a_bad_web_config_with_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "web.yml"
    bad.write_text("basic_auth_users: {prometheus: hunter2}\n")
    cases: list[tuple[tuple[str, ...], dict[str, str], str]] = [
        ((f"--web.config.file={bad}",), {}, "--web.config.file"),
        ((), {"CARBONWATCH_WEB_CONFIG_FILE": str(bad)}, "CARBONWATCH_WEB_CONFIG_FILE"),
    ]
    for args, env, named in cases:
        proc = _exporter(tmp_path, *args, env=env)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 2, out
        assert f"{named}: {bad}: basic_auth_users.prometheus: not a bcrypt hash" in out
        assert "hunter2" not in out


@pytest.mark.slow
def test_exporter_serves_tls_with_client_certificates_and_basic_auth(tmp_path: Path, pki: PKI, hashed: str) -> None:
    crt, key = pki.cert("server")
    cfg = web_config(tmp_path, {
        "tls_server_config": {"cert_file": crt, "key_file": key, "client_auth_type": "RequireAndVerifyClientCert",
                              "client_ca_file": str(pki.ca)},
        "basic_auth_users": {"prometheus": hashed},
    })  # fmt: skip
    proc = _exporter(tmp_path, f"--web.config.file={cfg}")
    try:
        url, detail = _listening(proc)
        assert url.startswith("https://127.0.0.1:")
        assert "TLS, client certificates required, basic auth (1 user)" in detail
        tls: dict[str, Any] = {"verify": str(pki.ca), "cert": pki.cert("client"), "timeout": 10}
        assert requests.get(url, **tls).status_code == 401
        r = requests.get(url, auth=("prometheus", PASSWORD), headers={"Accept-Encoding": "gzip"}, **tls)
        assert r.status_code == 200 and r.headers["Content-Encoding"] == "gzip"
        assert "carbonwatch_node_info" in r.text
        om = requests.get(url, auth=("prometheus", PASSWORD),
                          headers={"Accept": "application/openmetrics-text;version=1.0.0"}, **tls)
        assert om.text.endswith("# EOF\n") and {f.name for f in om_parse(om.text)} >= {"carbonwatch_node_info"}
        with pytest.raises(requests.ConnectionError):
            requests.get(url, verify=str(pki.ca), auth=("prometheus", PASSWORD), timeout=10)  # no client cert
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_the_config_key_and_the_flag_name_the_web_config_file(tmp_path: Path, hashed: str) -> None:
    from carbonwatch.cli import build_parser
    from carbonwatch.node.exporter import config_from_args

    def args(*argv: str) -> Any:
        full = ["exporter", *argv]
        return build_parser(full).parse_args(full)

    good = web_config(tmp_path, {"basic_auth_users": {"prometheus": hashed}}, "good.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("basic_auth_users: {prometheus: '$2y$10$short'}\n")
    cfg = tmp_path / "exporter.yml"
    cfg.write_text(yaml.safe_dump({"web": {"config_file": good}}))
    assert config_from_args(args("--config.file", str(cfg)), environ={}).web_config_file == good
    cfg.write_text(yaml.safe_dump({"web": {"config_file": str(bad)}}))
    with pytest.raises(ConfigError, match=r"^web.config_file: .*bad.yml: basic_auth_users.prometheus: not a bcrypt"):
        config_from_args(args("--config.file", str(cfg)), environ={})
    # the flag wins over the key, and is the name in its errors
    assert config_from_args(args("--config.file", str(cfg), "--web.config.file", good), environ={}).web_config_file \
        == good
    with pytest.raises(ConfigError, match=r"^--web.config.file: "):
        config_from_args(args("--web.config.file", str(bad)), environ={})
    cfg.write_text(yaml.safe_dump({"web": {"config_file": 7}}))
    with pytest.raises(ConfigError, match=r"exporter.yml: web.config_file: expected str"):
        config_from_args(args("--config.file", str(cfg)), environ={})
