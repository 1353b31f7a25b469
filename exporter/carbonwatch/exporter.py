"""`carbonwatch exporter`: sample this node's sources in the background and serve /metrics."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry

from carbonwatch import __version__
from carbonwatch.collector import SnapshotCollector, render_text
from carbonwatch.config import COLLECTORS, ExporterConfig, apply_mapping, load_file, validate, validate_zone
from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.intensity import settings_from_config
from carbonwatch.intensity_collector import IntensityCollector
from carbonwatch.intensity_feed import FEED_PATH, IntensityFeed, feed_from_config
from carbonwatch.model import FatalSourceError
from carbonwatch.registration import HEARTBEAT
from carbonwatch.sampler import Sampler, Sources, build_sources
from carbonwatch.state import StateStore

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
    p.add_argument("--storage.path", dest="storage_path", metavar="DIR",
                   help="directory of the state file that keeps the counters across restarts "
                        "(default /var/lib/carbonwatch; env CARBONWATCH_STORAGE_PATH)")
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
    storage = getattr(args, "storage_path", None) or env.get(ENV_PREFIX + "STORAGE_PATH")
    if storage:
        cfg.storage.path = storage
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


def build_registry(
    cfg: ExporterConfig,
    sources: Sources,
    sampler: Sampler,
    feed: IntensityFeed | None = None,
    store: StateStore | None = None,
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    procs = sources.procs
    registry.register(SnapshotCollector(
        sampler.snapshot,
        lambda: node_labels(cfg, sources, sampler),
        cfg.sample_interval,
        (lambda: procs.environ_denied) if procs is not None else (lambda: 0),
        state=store.status if store is not None else None,
        devices=lambda: dict(sampler.devices_found),
        disabled=[c for c in COLLECTORS if not cfg.collectors.get(c, True)],
    ))
    if feed is not None and cfg.collectors.get("intensity", True):
        registry.register(IntensityCollector(feed, settings_from_config(cfg.intensity, cfg.zone).prices))
    return registry


class Node:
    """Everything one exporter runs besides the HTTP side: the intensity feed, the sampler with its sources
    and identity resolver, and the durable counters. `start()` restores the counters and starts the
    background threads; `close()` stops them and writes the counters one last time."""

    def __init__(self, cfg: ExporterConfig) -> None:
        self.cfg = cfg
        self.feed = feed_from_config(cfg.intensity, cfg.zone)
        self.sources = build_sources(cfg)
        self.resolver = _resolver(cfg)
        self.sampler = Sampler(cfg, self.sources, intensity=self.feed.in_use, resolver=self.resolver)
        self.store = StateStore(cfg.storage.path)
        self.registry = build_registry(cfg, self.sources, self.sampler, self.feed, self.store)
        self.stop = threading.Event()
        self.fatal: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._last_save = 0.0

    def start(self) -> None:
        restored = self.store.load()
        if restored.state is not None:
            self.sampler.restore_state(restored.state)
        self.feed.start(self.stop)
        start = getattr(self.resolver, "start", None)
        if start is not None:
            start()
        self.sampler.sample_once()  # baseline, so the first scrape after one interval has real deltas
        self.save()
        self._thread = threading.Thread(target=self._loop, name="carbonwatch-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            self.sampler.run_forever(self.stop, after_sample=self._maybe_save)
        except FatalSourceError as exc:
            self.fatal = exc
            self.stop.set()

    def _maybe_save(self) -> None:
        if time.monotonic() - self._last_save >= self.cfg.storage.interval:
            self.save()

    def save(self) -> None:
        self._last_save = time.monotonic()
        self.store.write(self.sampler.export_state())
        touch_heartbeat(self.cfg.process.spool_dir)

    def close(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        close = getattr(self.resolver, "close", None)
        if close is not None:
            close()
        self.save()

    def routes(self) -> dict[str, Callable[[Mapping[str, list[str]]], tuple[int, bytes, str]]]:
        """Extra GET routes: `/intensity` (the fleet feed, JSON) and `/-/healthy`."""

        def intensity(query: Mapping[str, list[str]]) -> tuple[int, bytes, str]:
            code, body = self.feed.feed_reply(query)
            return code, body, "application/json"

        def healthy(_query: Mapping[str, list[str]]) -> tuple[int, bytes, str]:
            alive = self._thread is not None and self._thread.is_alive()
            return (200, b"OK\n", "text/plain") if alive else (503, b"sampler not running\n", "text/plain")

        return {FEED_PATH: intensity, "/-/healthy": healthy}


def touch_heartbeat(spool: str) -> None:
    """Tell run clients on this node that an exporter measures it (they then start no local meter)."""
    path = os.path.join(spool, HEARTBEAT)
    try:
        os.makedirs(spool, exist_ok=True)
        with open(path, "a"):
            pass
        os.utime(path)
    except OSError:
        pass  # a spool directory we may not write: clients then measure locally, as without an exporter


def _resolver(cfg: ExporterConfig) -> Any:
    try:
        from carbonwatch.identity import build_resolver  # type: ignore[attr-defined]
    except ImportError:
        return None
    return build_resolver(cfg)


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
    node = Node(cfg)
    try:
        node.start()
    except FatalSourceError as exc:
        log.error("%s", exc)
        return 3
    stop = node.stop
    registry = node.registry
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
    node.close()
    if node.fatal is not None:
        log.error("%s; exiting so the supervisor restarts the exporter", node.fatal)
        return 3
    log.info("stopped")
    return 0
