"""The HTTP server: a ThreadingHTTPServer that speaks TLS per the live web configuration, authenticates,
negotiates the format, compresses and limits. The accept loop only accepts: the TLS handshake, the check that
the client speaks TLS at all, and the client certificate's SANs happen in the connection's own thread, and
the configuration is reloaded by its watcher thread (state.py)."""

from __future__ import annotations

import gzip
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prometheus_client.registry import Collector

from carbonwatch.node.web.config import TLSServerConfig
from carbonwatch.node.web.render import GZIP_LEVEL, Landing, Renderer, accepts_gzip
from carbonwatch.node.web.state import WebState

log = logging.getLogger("carbonwatch.node.web")

# An extra GET route: `(query) -> (status, body, content type)`, query being urllib.parse.parse_qs of the
# request's query string. A path ending in `/*` serves every path below it (the rest of the path,
# percent-encoded, is the query's `*`).
Route = Callable[[Mapping[str, list[str]]], tuple[int, bytes, str]]

Request = socket.socket | tuple[bytes, socket.socket]  # socketserver's request (a stream server's: the socket)
Address = tuple[str, int] | tuple[str, int, int, int]  # a peer's address, IPv4 or IPv6

IDLE_TIMEOUT = 30.0  # seconds a kept-alive connection (or a TLS handshake) may stay silent
MAX_CONNECTIONS = 256  # open connections (one thread each); more are refused at once
TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello
PLAIN_TO_TLS = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
                b"Content-Length: 48\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")  # as Go's servers


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
        self.renderer = Renderer(self.collectors)
        self.web = web
        self.routes = dict(routes or {})
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

    def route_for(self, path: str) -> tuple[Route | None, str | None]:
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
        host, port = str(self.server_address[0]), int(self.server_address[1])
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        shown = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{shown}:{port}"

    def get_request(self) -> tuple[socket.socket, Address]:
        sock, addr = self.socket.accept()
        try:  # headers and body leave at once, no Nagle wait on a kept-alive connection (as Go's servers)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock, addr

    def process_request(self, request: Request, client_address: Address) -> None:
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

    def process_request_thread(self, request: Request, client_address: Address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def finish_request(self, request: Request, client_address: Address) -> None:
        """In the connection's thread: TLS (when configured) before HTTP."""
        ctx = self.web.live.ssl
        if ctx is None or not isinstance(request, socket.socket):
            super().finish_request(request, client_address)
            return
        tls = _handshake(request, ctx, client_address[0])
        if tls is None:
            return
        try:
            problem = _san_problem(tls, self.web.config.tls)
            if problem:
                log.warning("refusing the client certificate of %s: %s", client_address[0], problem)
                return
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request: Request, client_address: Address) -> None:
        log.debug("error serving %s", client_address[0] if client_address else "?", exc_info=True)

    def acquire_request(self) -> bool:
        """A rendering slot: at most `max_requests` render at once (memory stays bounded; under the GIL more
        would not be faster), the others queue for up to `request_wait` seconds, then get a 503."""
        return self._in_flight is None or self._in_flight.acquire(timeout=self.request_wait)

    def release_request(self) -> None:
        if self._in_flight is not None:
            self._in_flight.release()

    def server_close(self) -> None:
        self.web.stop()
        super().server_close()


def _handshake(sock: socket.socket, ctx: ssl.SSLContext, peer: str) -> ssl.SSLSocket | None:
    """The TLS socket after a completed handshake; None after answering plain HTTP with a 400, or when the
    handshake fails."""
    try:
        sock.settimeout(IDLE_TIMEOUT)
        first = sock.recv(1, socket.MSG_PEEK)
        if not first:
            return None
        if first[0] != TLS_HANDSHAKE:
            _refuse_plain_http(sock)
            return None
        tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError) as exc:
        log.debug("TLS setup with %s failed: %s", peer, exc)
        return None
    try:
        tls.do_handshake()
    except (OSError, ValueError) as exc:
        log.debug("TLS handshake with %s failed: %s", peer, exc)
        tls.close()
        return None
    return tls


def _refuse_plain_http(sock: socket.socket) -> None:
    """Read the plain request's head (so closing does not reset the connection under the reply), answer 400."""
    sock.settimeout(1.0)
    seen = b""
    try:
        while b"\r\n\r\n" not in seen and len(seen) < 16384:
            chunk = sock.recv(4096)
            if not chunk:
                break
            seen += chunk
        sock.sendall(PLAIN_TO_TLS)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _san_problem(request: ssl.SSLSocket, tls: TLSServerConfig | None) -> str:
    if tls is None or not tls.client_allowed_sans:
        return ""
    cert = request.getpeercert() or {}
    sans = [str(pair[1]) for pair in cert.get("subjectAltName", ())]
    for v in sans:
        if v in tls.client_allowed_sans or _same_ip(v, tls.client_allowed_sans):
            return ""
    return f"none of its SANs {sans} is in client_allowed_sans"


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
        web = self.server.web.live
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
        code, zipped = 200, accepts_gzip(self.headers.get("Accept-Encoding"))
        try:
            if route is None:
                body, ctype = self.server.renderer.body(self.headers.get("Accept"), zipped)
            else:
                query = parse_qs(url.query)
                if rest is not None:
                    query["*"] = [rest]
                code, body, ctype = route(query)
                body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0) if zipped else body
        except Exception as exc:
            log.error("serving %s failed: %s", path, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            self._reply(500, f"Internal Server Error: {type(exc).__name__}\n".encode(), "text/plain; charset=utf-8",
                        head=head)  # fmt: skip
            return
        finally:
            self.server.release_request()
        self._reply(code, body, ctype, head=head, gzipped=zipped, vary=True)

    def _reply(self, code: int, body: bytes, ctype: str, head: bool = False, gzipped: bool = False,
               vary: bool = False, extra: Mapping[str, str] | None = None) -> None:
        """Send `body` (already gzip-compressed when `gzipped`); `vary`: the body depends on Accept-Encoding."""
        headers = {"Content-Type": ctype}
        if vary:
            headers["Vary"] = "Accept-Encoding"
        if gzipped:
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

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)



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
    """Serve `/metrics` (and `routes`, and `/`) from `collectors` in a daemon thread, the web configuration
    watched for changes in another. Raises ConfigError for a bad web configuration and OSError when the address
    cannot be bound."""
    web = WebState(web_config_file, what)
    server = WebServer((host, port), collectors, web, routes=routes, landing=landing, max_requests=max_requests,
                       request_wait=request_wait)  # fmt: skip
    web.start()
    threading.Thread(target=server.serve_forever, name="carbonwatch-http", daemon=True).start()
    return server
