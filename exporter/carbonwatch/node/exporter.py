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

from prometheus_client import CollectorRegistry

from carbonwatch import __version__
from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.intensity.collector import IntensityCollector
from carbonwatch.intensity.feed import FEED_PATH, IntensityFeed, feed_from_config
from carbonwatch.intensity.providers import check_zone, settings_from_config, validate_zone
from carbonwatch.node import web
from carbonwatch.node.collector import SnapshotCollector
from carbonwatch.node.config import (
    COLLECTORS,
    ExporterConfig,
    apply_mapping,
    check_storage_path,
    load_file,
    validate,
)
from carbonwatch.node.identity import IdentityResolver, build_resolver
from carbonwatch.node.model import FatalSourceError
from carbonwatch.node.registration import HEARTBEAT
from carbonwatch.node.sampler import Sampler
from carbonwatch.node.sources.nvml import Nvml
from carbonwatch.node.sources.wiring import Sources, build_sources
from carbonwatch.node.state import StateStore
from carbonwatch.node.web import Landing, Route, WebServer, load_web_config

log = logging.getLogger("carbonwatch.node.exporter")

ENV_PREFIX = "CARBONWATCH_"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--web.listen-address", dest="listen_address", metavar="HOST:PORT",
                   help="address to serve /metrics on (default :9860; env CARBONWATCH_WEB_LISTEN_ADDRESS)")
    p.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                   help="exporter-toolkit web configuration: TLS, client certificates, basic auth "
                        "(env CARBONWATCH_WEB_CONFIG_FILE); see docs/exporter.md")
    p.add_argument("--config.file", dest="config_file", metavar="FILE",
                   help="YAML configuration (env CARBONWATCH_CONFIG_FILE); see docs/exporter.md")
    p.add_argument("--sample-interval", dest="sample_interval", metavar="DURATION",
                   help="how often sources are read (default 1s; env CARBONWATCH_SAMPLE_INTERVAL)")
    p.add_argument("--zone", dest="zone", metavar="ZONE",
                   help="grid zone of this node, e.g. DE, US-CAL-CISO (default world; env CARBONWATCH_ZONE); "
                        "`carbonwatch intensity --list-zones` lists them")
    p.add_argument("--allow-unknown", action="store_true",
                   help="price an unknown zone at the world average instead of refusing it")
    for c in COLLECTORS:
        p.add_argument(f"--collector.{c}", dest=f"collector_{c}", action=argparse.BooleanOptionalAction,
                       default=None,
                       help=f"enable the {c} collector (default on; env CARBONWATCH_COLLECTOR_{c.upper()})")
    p.add_argument("--storage.path", dest="storage_path", metavar="DIR",
                   help="directory of the state file that keeps the counters across restarts "
                        "(default /var/lib/carbonwatch; env CARBONWATCH_STORAGE_PATH)")
    p.add_argument("--log.level", dest="log_level", default=os.environ.get("CARBONWATCH_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"], help="log level (default info)")


def web_config_what(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> str:
    """Which flag, variable or key named the web configuration file (for error messages)."""
    env = os.environ if environ is None else environ
    if args.web_config_file:
        return "--web.config.file"
    return "CARBONWATCH_WEB_CONFIG_FILE" if env.get(ENV_PREFIX + "WEB_CONFIG_FILE") else "web.config_file"


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
        try:
            apply_mapping(cfg, load_file(path))
        except ConfigError as exc:
            raise ConfigError(exc if str(exc).startswith("config.file") else f"{path}: {exc}") from None
    listen = args.listen_address or env.get(ENV_PREFIX + "WEB_LISTEN_ADDRESS")
    if listen:
        cfg.listen_address = listen
    web_config = args.web_config_file or env.get(ENV_PREFIX + "WEB_CONFIG_FILE")
    if web_config:
        cfg.web_config_file = web_config
    if cfg.web_config_file:
        load_web_config(cfg.web_config_file, web_config_what(args, env))  # a bad file exits 2 before sampling
    interval = args.sample_interval or env.get(ENV_PREFIX + "SAMPLE_INTERVAL")
    if interval:
        what = "--sample-interval" if args.sample_interval else "CARBONWATCH_SAMPLE_INTERVAL"
        cfg.sample_interval = parse_duration(interval, what)
    storage = args.storage_path or env.get(ENV_PREFIX + "STORAGE_PATH")
    if storage:
        what = "--storage.path" if args.storage_path else "CARBONWATCH_STORAGE_PATH"
        cfg.storage.path = check_storage_path(storage, what)
    zone = args.zone or env.get(ENV_PREFIX + "ZONE")
    what = f"zone (in {path})"
    if zone:
        what = "--zone" if args.zone else "CARBONWATCH_ZONE"
        cfg.zone = validate_zone(zone, what)
    if not getattr(args, "allow_unknown", False):  # as `run` and `intensity`: no silent world average
        check_zones(cfg, what, path)
    for c in COLLECTORS:
        flag = getattr(args, f"collector_{c}", None)  # one flag per collector, named at run time
        if flag is None:
            flag = _env_bool(env, f"{ENV_PREFIX}COLLECTOR_{c.upper()}")
        if flag is not None:
            cfg.collectors[c] = flag
    return validate(cfg)


def check_zones(cfg: ExporterConfig, what: str, path: str | None) -> None:
    """The node's zone and the intensity section's zones are known, else ConfigError (exit 2) naming where the
    zone was set and pointing to `--list-zones`."""
    ctx, hint = {"intensity": cfg.intensity}, "or pass --allow-unknown"
    cfg.zone = check_zone(cfg.zone, ctx, what, hint)
    zones = cfg.intensity.get("zones")  # a list of strings: check_section ran when the file was read
    for z in [cfg.intensity.get("zone"), *(zones if isinstance(zones, list) else [])]:
        if isinstance(z, str) and z:
            check_zone(z, ctx, f"intensity.zone{'s' if z != cfg.intensity.get('zone') else ''} (in {path})", hint)


def node_labels(cfg: ExporterConfig, sources: Sources, sampler: Sampler) -> dict[str, str]:
    snap = sampler.snapshot()
    cpu_model = (sources.cpu_model.cpu_model if sources.cpu_model is not None else "") or ""
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
    resolver: IdentityResolver | None = None,
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
        identity=resolver.stats if resolver is not None else None,
        served=sampler.counters.note_served,
    ))
    if feed is not None and cfg.collectors.get("intensity", True):
        registry.register(IntensityCollector(feed, settings_from_config(cfg.intensity, cfg.zone).prices))
    return registry


class Node:
    """Everything one exporter runs besides the HTTP side: the intensity feed, the sampler with its sources
    and identity resolver, and the durable counters. `start()` restores the counters and starts the
    background threads; `close()` stops them and writes the counters one last time."""

    def __init__(self, cfg: ExporterConfig, nvml: Nvml | None = None) -> None:
        self.cfg = cfg
        self.feed = feed_from_config(cfg.intensity, cfg.zone)
        self.sources = build_sources(cfg, nvml=nvml)
        self.resolver = build_resolver(cfg)
        self.sampler = Sampler(cfg, self.sources, intensity=self.feed.in_use, resolver=self.resolver)
        self.store = StateStore(cfg.storage.path)
        self.registry = build_registry(cfg, self.sources, self.sampler, self.feed, self.store, self.resolver)
        self.stop = threading.Event()
        self.fatal: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._last_save = 0.0

    def start(self) -> None:
        restored = self.store.load()
        if restored.state is not None:
            self.sampler.restore_state(restored.state)
        self.feed.start(self.stop)
        self.resolver.start()  # the kubelet's pod list, refreshed in the background
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
        self.resolver.close()
        self.store.write(self.sampler.export_state())
        remove_heartbeat(self.cfg.process.spool_dir)  # run clients started from now on measure locally

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


def remove_heartbeat(spool: str) -> None:
    """A clean stop: no exporter measures this node any more."""
    try:
        os.unlink(os.path.join(spool, HEARTBEAT))
    except OSError:
        pass


def serve(
    host: str,
    port: int,
    registry: CollectorRegistry,
    *,
    web_config_file: str | None = None,
    routes: Mapping[str, Route] | None = None,
    what: str = "--web.config.file",
) -> WebServer:
    """Serve /metrics from `registry` (plus `routes` and the landing page) in a daemon thread, with the web
    configuration's TLS and basic auth. A scrape only formats the latest snapshot (carbonwatch.node.web)."""
    landing = Landing(
        version=__version__,
        links=(("/metrics", "Metrics"),) + tuple((path, path) for path in (routes or {})),
    )
    return web.serve(host, port, [registry], web_config_file=web_config_file or None, routes=routes,
                     landing=landing, what=what)


def main(args: argparse.Namespace, nvml: Nvml | None = None) -> int:
    """`carbonwatch exporter`; `nvml` replaces pynvml (a test's fake NVML, see tests/fakes/exporter.py)."""
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    node = Node(cfg, nvml=nvml)
    try:
        node.start()
    except FatalSourceError as exc:
        log.error("%s", exc)
        return 3
    stop = node.stop
    registry = node.registry
    host, port = cfg.listen_host_port()
    try:
        server = serve(host, port, registry, web_config_file=cfg.web_config_file, routes=node.routes(),
                       what=web_config_what(args))  # fmt: skip
    except OSError as exc:
        raise ConfigError(f"--web.listen-address: cannot listen on {cfg.listen_address}: {exc.strerror}") from None
    actual = server.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    log.info("listening on %s://%s:%d/metrics (zone=%s, sample interval %gs%s)", server.scheme, shown, actual,
             cfg.zone, cfg.sample_interval, web.describe(server.web.config))

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
