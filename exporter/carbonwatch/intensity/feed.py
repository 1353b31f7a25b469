"""Grid intensity for the exporter, refreshed in the background and served from memory.

A scrape or a sample never waits on the network: `IntensityFeed.current(zone)` only reads a cache that a
background thread refreshes every `intensity.refresh_interval` (default 5 min).

Where a value comes from, in order (the `source` label always says which):

1. `intensity.feed_url`: one central carbonwatch instance per fleet (configured with a live provider and
   the fleet's zones) serves `/intensity?zone=Z`; nodes take their zone's value from it, so 1,000 nodes
   make no API calls of their own. Source `feed:<the central instance's source>`.
2. Otherwise the configured provider (`table`, `static`, `file`, `electricitymaps`, `uk-neso`).
3. When a refresh fails, the last good value (source `last:<its source>`) for up to `intensity.max_stale`
   (default 24 h), then the bundled table (`table:...`, or `default:world-...` for a zone it lacks).

The bundled table is the no-network default and the value in use until the first refresh completes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import requests

from carbonwatch.intensity.live import get_json
from carbonwatch.intensity.providers import (
    FALLBACK_SOURCE,
    IntensityInUse,
    IntensityProvider,
    IntensityReading,
    TableProvider,
    normalise_zone,
)

log = logging.getLogger("carbonwatch.intensity.providers")

FEED_PATH = "/intensity"
FEED_PREFIX = "feed:"
LAST_PREFIX = "last:"


class FeedError(Exception):
    """The central instance did not give a usable value (network, HTTP status, malformed reply)."""


@dataclass
class ZoneHealth:
    last_success: float | None = None  # wall clock of the last refresh that gave a live value
    failures: int = 0  # refreshes that failed, since start
    last_error: str = ""


class FeedClient:
    """Reads one zone from a central carbonwatch instance's `/intensity` (JSON)."""

    def __init__(self, url: str, timeout: float = 3.0, session: requests.Session | None = None,
                 auth: tuple[str, str] | requests.auth.AuthBase | None = None, verify: bool | str = True) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self.auth = auth
        self.verify = verify

    def current(self, zone: str) -> IntensityReading:
        where = f"{self.url}{FEED_PATH}?zone={zone}"
        data = get_json(lambda: self.session.get(f"{self.url}{FEED_PATH}", params={"zone": zone},
                                                 timeout=self.timeout, auth=self.auth, verify=self.verify),
                        where, FeedError)
        return reading_from_json(data, zone, where)


def reading_from_json(data: object, zone: str, where: str) -> IntensityReading:
    """Validate one zone's entry of a `/intensity` reply."""
    if not isinstance(data, dict):
        raise FeedError(f"reply from {where} is not a JSON object")
    grams, source, at = data.get("grams_per_kwh"), data.get("source"), data.get("fetched_at")
    if isinstance(grams, bool) or not isinstance(grams, (int, float)) or not 0 <= grams <= 5000:
        raise FeedError(f"reply from {where}: grams_per_kwh {grams!r} is not a plausible intensity (0..5000)")
    if not isinstance(source, str) or not source or len(source) > 100 or "\n" in source:
        raise FeedError(f"reply from {where}: source {source!r} is not a source name")
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        raise FeedError(f"reply from {where}: fetched_at {at!r} is not a time")
    if normalise_zone(str(data.get("zone", zone))) != normalise_zone(zone):
        raise FeedError(f"reply from {where} is for zone {data.get('zone')!r}, not {zone!r}")
    return IntensityReading(normalise_zone(zone), float(grams), source, float(at))


class IntensityFeed:
    """Per-zone intensity cache with a background refresh. Thread-safe; `current` never blocks on I/O."""

    def __init__(
        self,
        zones: Iterable[str],
        provider: IntensityProvider,
        *,
        feed: FeedClient | None = None,
        refresh_interval: float = 300.0,
        max_stale: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.zones = list(dict.fromkeys(normalise_zone(z) for z in zones)) or [normalise_zone(None)]
        self.provider = provider
        self.feed = feed
        self.refresh_interval = refresh_interval
        self.max_stale = max_stale
        self.clock = clock
        self.table = TableProvider(clock=clock)
        self._lock = threading.Lock()
        self._values: dict[str, IntensityReading] = {z: self.table.current(z) for z in self.zones}
        self._last_good: dict[str, IntensityReading] = {}
        self.health: dict[str, ZoneHealth] = {z: ZoneHealth() for z in self.zones}
        self.last_duration_seconds = 0.0
        self.refreshes = 0
        self._thread: threading.Thread | None = None

    # -- reading (scrape and sample path) --------------------------------------------------------

    def current(self, zone: str | None = None) -> IntensityReading:
        z = normalise_zone(zone) if zone is not None else self.zones[0]
        with self._lock:
            hit = self._values.get(z)
        return hit if hit is not None else self.table.current(z)

    def in_use(self) -> IntensityInUse:
        """The node zone's value, as the sampler prices energy with it."""
        r = self.current()
        return IntensityInUse(r.zone, r.grams_per_kwh, r.source)

    def all(self) -> dict[str, IntensityReading]:
        with self._lock:
            return dict(self._values)

    def healthy(self) -> bool:
        """True while the last refresh of every zone succeeded."""
        with self._lock:
            return all(not h.last_error for h in self.health.values())

    # -- refreshing (background) -----------------------------------------------------------------

    def refresh_once(self) -> None:
        t0 = time.perf_counter()
        for z in self.zones:
            try:
                r = self._fetch(z)
                error = ""
            except Exception as exc:  # network, bad reply, provider bug: keep serving what we have
                r, error = None, str(exc) or type(exc).__name__
            if r is not None and r.source == FALLBACK_SOURCE:  # a live provider fell back itself
                error = getattr(self.provider, "last_error", "") or "provider fell back to the table"
                r = None
            now = self.clock()
            with self._lock:
                h = self.health[z]
                if r is not None:
                    self._values[z] = r
                    self._last_good[z] = r
                    h.last_success = now
                    h.last_error = ""
                    continue
                h.failures += 1
                h.last_error = error
                last = self._last_good.get(z)
                if last is not None and now - last.fetched_at <= self.max_stale:
                    self._values[z] = IntensityReading(z, last.grams_per_kwh, LAST_PREFIX + last.source,
                                                       last.fetched_at)
                else:
                    self._values[z] = self.table.current(z)
            log.warning("intensity for %s not refreshed (%s); using %s", z, error, self.current(z).source)
        self.last_duration_seconds = time.perf_counter() - t0
        self.refreshes += 1

    def _fetch(self, zone: str) -> IntensityReading:
        if self.feed is not None:
            r = self.feed.current(zone)
            return IntensityReading(zone, r.grams_per_kwh, FEED_PREFIX + r.source.removeprefix(FEED_PREFIX),
                                    r.fetched_at)
        return self.provider.current(zone)

    def start(self, stop: threading.Event) -> None:
        """Refresh now and then every `refresh_interval`, in a daemon thread, until `stop` is set."""

        def loop() -> None:
            while not stop.is_set():
                try:
                    self.refresh_once()
                except Exception:
                    log.exception("intensity refresh failed")
                stop.wait(self.refresh_interval)

        self._thread = threading.Thread(target=loop, name="carbonwatch-intensity", daemon=True)
        self._thread.start()

    # -- serving the fleet ------------------------------------------------------------------------

    def feed_reply(self, query: Mapping[str, list[str]]) -> tuple[int, bytes]:
        """The `/intensity` reply: every zone this instance refreshes, or `?zone=Z` alone (404 if not one)."""
        values = self.all()
        zones = query.get("zone")
        if zones:
            z = normalise_zone(zones[0])
            r = values.get(z)
            if r is None:
                body = {"error": f"zone {z} is not served here; zones: {', '.join(sorted(values))}"}
                return 404, json.dumps(body).encode()
            return 200, json.dumps(_entry(r)).encode()
        return 200, json.dumps({"zones": {z: _entry(r) for z, r in sorted(values.items())}}).encode()


def _entry(r: IntensityReading) -> dict[str, object]:
    return {"zone": r.zone, "grams_per_kwh": r.grams_per_kwh, "source": r.source, "fetched_at": r.fetched_at}


def feed_from_config(cfg: Mapping[str, object] | None, node_zone: str | None = None) -> IntensityFeed:
    """The feed for the exporter's `intensity` section: the node's zone first, then `intensity.zones`."""
    from carbonwatch.durations import parse_duration
    from carbonwatch.errors import ConfigError
    from carbonwatch.intensity.providers import intensity_section, provider_from_config, settings_from_config

    section = intensity_section({"intensity": dict(cfg or {}), "zone": node_zone} if node_zone else cfg)
    settings = settings_from_config(section, node_zone)
    durations = {"refresh_interval": 300.0, "max_stale": 86400.0}
    for key in durations:
        if key in section:
            durations[key] = parse_duration(section[key], f"intensity.{key}")
            if durations[key] <= 0:
                raise ConfigError(f"intensity.{key}: must be more than 0")
    feed = None
    url = section.get("feed_url")
    if url:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"intensity.feed_url: {url!r} is not an http(s) URL of a carbonwatch instance")
        timeout = parse_duration(section["timeout"], "intensity.timeout") if "timeout" in section else 3.0
        feed = FeedClient(url, timeout=timeout)
    return IntensityFeed(settings.zones, provider_from_config(section), feed=feed,
                         refresh_interval=durations["refresh_interval"], max_stale=durations["max_stale"])
