"""`carbonwatch ledger serve`: open and migrate the database, serve /metrics and the API, and sync every
interval until SIGTERM. A failing sync is counted and retried; the process keeps serving."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass

import requests

from carbonwatch import __version__
from carbonwatch.errors import ConfigError
from carbonwatch.ledger import db, snapshot
from carbonwatch.ledger.api import Api
from carbonwatch.ledger.source import Source
from carbonwatch.ledger.sync import Syncer
from carbonwatch.node import web
from carbonwatch.node.config import parse_listen_address
from carbonwatch.promql import Prometheus

log = logging.getLogger("carbonwatch.ledger")


@dataclass(frozen=True)
class ServeConfig:
    prometheus: str
    database: str
    listen: str = ":9863"
    web_config_file: str | None = None
    interval: float = 30.0
    delay: float = 15.0
    chunk: float = 3600.0
    start: float | None = None
    replica_labels: tuple[str, ...] = ("replica", "prometheus_replica")
    window: float = 7 * 86400.0
    basic_auth: tuple[str, str] | None = None
    bearer_token_file: str | None = None
    ca_file: str | None = None
    timeout: float = 60.0


def prometheus_client(cfg: ServeConfig) -> Prometheus:
    session = requests.Session()
    if cfg.basic_auth:
        session.auth = cfg.basic_auth
    if cfg.bearer_token_file:
        try:
            with open(cfg.bearer_token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"--prometheus.bearer-token-file: cannot read {cfg.bearer_token_file}: "
                              f"{exc.strerror}") from None
        session.headers["Authorization"] = f"Bearer {token}"
    if cfg.ca_file:
        session.verify = cfg.ca_file
    return Prometheus(cfg.prometheus, timeout=cfg.timeout, session=session)


class Ledger:
    """The running service: database, syncer, collector, HTTP server."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.stop = threading.Event()
        host, port = parse_listen_address(cfg.listen, "--web.listen-address")
        prom = prometheus_client(cfg)
        self.engine = db.connect(cfg.database)
        self.syncer = Syncer(self.engine, Source(prom, cfg.replica_labels), delay=cfg.delay, chunk=cfg.chunk,
                             start=cfg.start, progress=self.refresh, progress_every=cfg.interval)  # fmt: skip
        self.collector = snapshot.LedgerCollector(self.syncer.health, self.engine.dialect.name, __version__,
                                                  max(db.MIGRATIONS))
        self.refresh()
        api = Api(self.engine, self.syncer.health, __version__)
        landing = web.Landing(name="carbonwatch ledger", version=__version__,
                              description="Every run's energy, emissions and cost, kept in a database.",
                              links=(("/metrics", "Metrics"), ("/api/v1/runs", "Runs"),
                                     ("/api/v1/openapi.json", "OpenAPI document")))  # fmt: skip
        try:
            self.server = web.serve(host, port, [self.collector], web_config_file=cfg.web_config_file,
                                    routes=api.routes(), landing=landing)
        except OSError as exc:
            self.engine.dispose()
            raise ConfigError(f"--web.listen-address: cannot listen on {cfg.listen}: {exc.strerror}") from None
        log.info("ledger listening on %s (database %s, Prometheus %s%s)", self.server.url,
                 db.redacted(cfg.database), prom.url, web.describe(self.server.web.config))

    def refresh(self) -> None:
        cursor = self.syncer.health.cursor
        if cursor is None:
            return
        try:
            self.collector.snapshot = snapshot.compute(self.engine, cursor, self.cfg.window)
        except Exception as exc:  # the database went away: keep serving the previous snapshot
            log.warning("cannot compute the /metrics snapshot: %s", exc)

    def run(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            if self.syncer.sync():
                self.refresh()
            self.stop.wait(max(0.0, self.cfg.interval - (time.monotonic() - began)))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.engine.dispose()


def serve(cfg: ServeConfig) -> int:
    ledger = Ledger(cfg)

    def _stop(_signum: int, _frame: object) -> None:
        ledger.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        ledger.run()
    finally:
        ledger.close()
    log.info("stopped")
    return 0
