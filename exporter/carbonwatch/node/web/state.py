"""The live web configuration and its reload. A watcher thread checks the file and the certificates it names
for changes (a few stat calls every CHECK_EVERY seconds) and swaps in a fresh `Live` snapshot, so certificates
can be rotated without a restart and no request ever waits on a reload. A file that turns bad while running
fails closed (500) until it is fixed."""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass

from carbonwatch.errors import ConfigError
from carbonwatch.node.web.auth import BasicAuth, RateLimiter
from carbonwatch.node.web.config import WebConfig, load_web_config, ssl_context

log = logging.getLogger("carbonwatch.node.web")


@dataclass(frozen=True)
class Live:
    """One consistent view of the web configuration; a request reads it once."""

    config: WebConfig
    ssl: ssl.SSLContext | None
    auth: BasicAuth
    limiter: RateLimiter | None
    error: str = ""  # set while a reloaded file is bad: every request answers 500


def build(cfg: WebConfig, what: str) -> Live:
    return Live(
        config=cfg,
        ssl=ssl_context(cfg.tls, f"{what}: {cfg.path}") if cfg.tls is not None else None,
        auth=BasicAuth(cfg.users),
        limiter=RateLimiter(cfg.rate_limit_interval, cfg.rate_limit_burst) if cfg.rate_limit_interval > 0 else None,
    )


class WebState:
    """The live web configuration: `live` is swapped whole by `refresh`, which the watcher thread calls."""

    CHECK_EVERY = 1.0  # seconds between change checks

    def __init__(self, path: str | None, what: str = "web.config_file") -> None:
        self.path = path or ""
        self.what = what
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.live = build(load_web_config(self.path, what) if self.path else WebConfig(), what)
        self._stamp = self._files_stamp(self.live.config)

    # The fields of the live snapshot, for readers that need one of them.
    @property
    def config(self) -> WebConfig:
        return self.live.config

    @property
    def error(self) -> str:
        return self.live.error

    @property
    def tls(self) -> bool:
        return self.live.config.tls is not None

    def _files_stamp(self, cfg: WebConfig) -> tuple[tuple[int, int], ...]:
        out = []
        for f in [self.path] + (cfg.tls.files() if cfg.tls is not None else []):
            try:
                st = os.stat(f)
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((-1, -1))
        return tuple(out)

    def refresh(self) -> bool:
        """Reload if the file or a certificate changed; True when something changed."""
        if not self.path:
            return False
        with self._lock:
            stamp = self._files_stamp(self.live.config)
            if stamp == self._stamp:
                return False
            was_bad = bool(self.live.error)
            try:
                cfg = load_web_config(self.path, self.what)
                if (cfg.tls is not None) != self.tls:
                    raise ConfigError(f"{self.what}: {self.path}: turning TLS on or off needs a restart")
                self.live = build(cfg, self.what)
                self._stamp = self._files_stamp(cfg)
                log.info("web configuration %s %s", self.path, "is valid again" if was_bad else "reloaded")
            except ConfigError as exc:
                self._stamp = stamp
                old = self.live
                self.live = Live(old.config, old.ssl, old.auth, old.limiter, error=str(exc))
                log.error("%s; answering 500 until it is fixed", exc)
            return True

    def start(self) -> None:
        """Watch the file in a daemon thread (nothing to watch without one)."""
        if self.path and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="carbonwatch-web-config", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)

    def _watch(self) -> None:
        while not self._stop.wait(self.CHECK_EVERY):
            try:
                self.refresh()
            except Exception:  # a watcher that dies would leave old certificates served silently
                log.exception("checking the web configuration %s failed", self.path)
