"""The exporter's HTTP side, the exporter-toolkit way: `--web.config.file` (TLS with an optional client CA and
its reload, bcrypt basic-auth users, response headers, a rate limit) over prometheus-client's own exposition
(gzip and OpenMetrics by content negotiation), HEAD, a landing page, and extra GET routes.

Rooms: `config` (the file's format and the TLS context), `auth` (basic auth, rate limit), `state` (the live
configuration and its watcher), `render` (bodies), `server` (connections and requests). The names below are
the public entry points (the exporter and the ledger's service use them)."""

from carbonwatch.node.web.auth import BasicAuth, RateLimiter
from carbonwatch.node.web.config import (
    TLSServerConfig,
    WebConfig,
    describe,
    load_web_config,
    parse_web_config,
    ssl_context,
)
from carbonwatch.node.web.render import (
    Landing,
    Renderer,
    accepts_gzip,
    render_metrics,
    render_openmetrics,
    render_text,
)
from carbonwatch.node.web.server import MAX_CONNECTIONS, Route, WebServer, serve
from carbonwatch.node.web.state import WebState

__all__ = [
    "MAX_CONNECTIONS", "BasicAuth", "Landing", "RateLimiter", "Renderer", "Route", "TLSServerConfig", "WebConfig",
    "WebServer", "WebState", "accepts_gzip", "describe", "load_web_config", "parse_web_config", "render_metrics",
    "render_openmetrics", "render_text", "serve", "ssl_context",
]
