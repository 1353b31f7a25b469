"""`carbonwatch exporter`: sample this node's sources in the background and serve /metrics."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry

from carbonwatch import __version__
from carbonwatch.collector import SnapshotCollector, render_text
from carbonwatch.config import COLLECTORS, ExporterConfig, apply_mapping, load_file, validate, validate_zone
from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.sampler import Sampler, Sources, build_sources

log = logging.getLogger("carbonwatch.exporter")

ENV_PREFIX = "CARBONWATCH_"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--web.listen-address", dest="listen_address", metavar="HOST:PORT",
                   help="address to serve /metrics on (default :9860; env CARBONWATCH_WEB_LISTEN_ADDRESS)")
    p.add_argument("--config.file", dest="config_file", metavar="FILE",
                   help="YAML configuration (env CARBONWATCH_CONFIG_FILE); see docs/exporter.md")
    p.add_argument("--sample-interval", dest="sample_interval", metavar="DURATION",
                   help="how often sources are read (default 1s; env CARBONWATCH_SAMPLE_INTERVAL)")
    p.add_argument("--zone", dest="zone", metavar="ZONE",
                   help="grid zone of this node, e.g. DE, US-CAL-CISO (default world; env CARBONWATCH_ZONE)")
    for c in COLLECTORS:
        p.add_argument(f"--collector.{c}", dest=f"collector_{c}", action=argparse.BooleanOptionalAction,
                       default=None,
                       help=f"enable the {c} collector (default on; env CARBONWATCH_COLLECTOR_{c.upper()})")
    p.add_argument("--log.level", dest="log_level", default=os.environ.get("CARBONWATCH_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"], help="log level (default info)")


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {raw!r}")


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ExporterConfig:
    """defaults < config file < environment < flags."""
    env = os.environ if environ is None else environ
    cfg = ExporterConfig()
    path = args.config_file or env.get(ENV_PREFIX + "CONFIG_FILE")
    if path:
        apply_mapping(cfg, load_file(path))
    listen = args.listen_address or env.get(ENV_PREFIX + "WEB_LISTEN_ADDRESS")
    if listen:
        cfg.listen_address = listen
    interval = args.sample_interval or env.get(ENV_PREFIX + "SAMPLE_INTERVAL")
    if interval:
        what = "--sample-interval" if args.sample_interval else "CARBONWATCH_SAMPLE_INTERVAL"
        cfg.sample_interval = parse_duration(interval, what)
    zone = args.zone or env.get(ENV_PREFIX + "ZONE")
    if zone:
        cfg.zone = validate_zone(zone, "--zone" if args.zone else "CARBONWATCH_ZONE")
    for c in COLLECTORS:
        flag = getattr(args, f"collector_{c}", None)
        if flag is None:
            flag = _env_bool(env, f"{ENV_PREFIX}COLLECTOR_{c.upper()}")
        if flag is not None:
            cfg.collectors[c] = flag
    return validate(cfg)


def node_labels(cfg: ExporterConfig, sources: Sources, sampler: Sampler) -> dict[str, str]:
    snap = sampler.snapshot()
    cpu_model = getattr(sources.cpu_model, "cpu_model", "") or ""
    return {
        "zone": cfg.zone,
        "cpu_model": str(cpu_model),
        "hostname": socket.gethostname(),
        "gpus": str(len(snap.gpus)) if snap else "0",
        "cpu_source": sampler.cpu_source,
        "memory_source": sampler.memory_source,
        "version": __version__,
    }


def build_registry(cfg: ExporterConfig, sources: Sources, sampler: Sampler) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    procs = sources.procs
    registry.register(SnapshotCollector(
        sampler.snapshot,
        lambda: node_labels(cfg, sources, sampler),
        cfg.sample_interval,
        (lambda: procs.environ_denied) if procs is not None else (lambda: 0),
    ))
    if cfg.collectors.get("intensity", True):
        intensity = _intensity_collector(cfg)
        if intensity is not None:
            registry.register(intensity)
    return registry


def _intensity_collector(cfg: ExporterConfig) -> Any:
    from carbonwatch.intensity_collector import IntensityCollector

    return IntensityCollector.from_config(cfg.intensity, cfg.zone)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LANDING = b"""<html><head><title>carbonwatch exporter</title></head><body><h1>carbonwatch exporter</h1>
<p><a href="/metrics">Metrics</a></p></body></html>"""


def serve(host: str, port: int, registry: CollectorRegistry) -> ThreadingHTTPServer:
    """Serve /metrics from `registry` in a daemon thread. A scrape only formats the latest snapshot."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, ctype, code = render_text([registry]), CONTENT_TYPE, 200
            elif path == "/":
                body, ctype, code = LANDING, "text/html; charset=utf-8", 200
            else:
                body, ctype, code = b"not found: try /metrics\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("%s %s", self.address_string(), format % args)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="carbonwatch-http", daemon=True).start()
    return server


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    sources = build_sources(cfg)
    sampler = Sampler(cfg, sources)
    registry = build_registry(cfg, sources, sampler)
    sampler.sample_once()  # baseline, so the first scrape after one interval has real deltas
    stop = threading.Event()
    thread = threading.Thread(target=sampler.run_forever, args=(stop,), name="carbonwatch-sampler", daemon=True)
    thread.start()
    host, port = cfg.listen_host_port()
    try:
        server = serve(host, port, registry)
    except OSError as exc:
        raise ConfigError(f"--web.listen-address: cannot listen on {cfg.listen_address}: {exc.strerror}") from None
    actual = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    log.info("listening on http://%s:%d/metrics (zone=%s, sample interval %gs)", shown, actual, cfg.zone,
             cfg.sample_interval)

    def _stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stop.wait()
    server.shutdown()
    thread.join(timeout=5)
    log.info("stopped")
    return 0
