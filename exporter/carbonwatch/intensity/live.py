"""Live grid intensity over HTTP: Electricity Maps (v3 `carbon-intensity/latest`, token from a file or the
environment) and the UK NESO carbon intensity API (Great Britain, no key). Each caches a zone for `cache_ttl`,
times out, retries, and on failure answers the table value with source `fallback:table` (the failure is
cached for a short while too, so a scrape never waits twice in a row).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

import requests

from carbonwatch.errors import ConfigError
from carbonwatch.intensity.base import (
    ELECTRICITYMAPS_URL,
    FALLBACK_SOURCE,
    TOKEN_ENV,
    UK_NESO_URL,
    WORLD_ZONE,
    IntensityProvider,
    IntensityReading,
    ProviderError,
    TableProvider,
    check_grams,
    normalise_zone,
)

log = logging.getLogger("carbonwatch.intensity.providers")

if TYPE_CHECKING:
    from typing_extensions import Unpack


def get_json(send: Callable[[], requests.Response], where: str, error: type[Exception]) -> object:
    """The JSON body of the 200 answer `send()` gets, else `error` naming `where` (no exception text: it could
    hold a URL with credentials)."""
    try:
        resp = send()
    except requests.RequestException as exc:
        raise error(f"{type(exc).__name__} for {where}") from None
    if resp.status_code != 200:
        raise error(f"HTTP {resp.status_code} from {where}")
    try:
        body: object = resp.json()
    except ValueError:
        raise error(f"reply from {where} is not JSON") from None
    return body


class HttpOptions(TypedDict, total=False):
    """The keyword options of an HTTP provider besides its URL (and token)."""

    cache_ttl: float
    timeout: float
    retries: int
    retry_backoff: float
    failure_ttl: float
    fallback: IntensityProvider | None
    session: requests.Session | None
    clock: Callable[[], float]
    sleep: Callable[[float], None]


class _HttpProvider:
    """Shared by the live providers: per-zone cache, timeout, retries with backoff, table fallback."""

    source = "http"

    def __init__(
        self,
        url: str,
        *,
        cache_ttl: float = 900.0,
        timeout: float = 3.0,
        retries: int = 1,
        retry_backoff: float = 0.5,
        failure_ttl: float = 60.0,
        fallback: IntensityProvider | None = None,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = url.rstrip("/")
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.retry_backoff = retry_backoff
        self.failure_ttl = min(failure_ttl, cache_ttl) if cache_ttl > 0 else failure_ttl
        self.fallback = fallback or TableProvider()
        self.session = session or requests.Session()
        self.clock = clock
        self.sleep = sleep
        self.requests_made = 0
        self.last_error = ""
        self._cache: dict[str, tuple[IntensityReading, float]] = {}  # zone -> (reading, valid until)
        self._lock = threading.Lock()

    def covers(self, zone: str) -> bool:
        return True

    def _fetch(self, zone: str) -> float:
        raise NotImplementedError

    def _headers(self) -> dict[str, str]:
        return {"Accept": "application/json", "User-Agent": "carbonwatch"}

    def _get_json(self, path: str, params: dict[str, str] | None = None) -> object:
        self.requests_made += 1
        # The messages name the URL (never the token, which travels only in a header).
        return get_json(lambda: self.session.get(f"{self.url}{path}", params=params, headers=self._headers(),
                                                 timeout=self.timeout), f"{self.url}{path}", ProviderError)

    def current(self, zone: str) -> IntensityReading:
        z = normalise_zone(zone)
        if not self.covers(z):
            return self.fallback.current(z)
        with self._lock:
            now = self.clock()
            hit = self._cache.get(z)
            if hit is not None and now < hit[1]:
                return hit[0]
            error = ""
            for attempt in range(self.retries + 1):
                if attempt:
                    self.sleep(self.retry_backoff * 2 ** (attempt - 1))
                try:
                    grams = self._fetch(z)
                except ProviderError as exc:
                    error = str(exc)
                    continue
                reading = IntensityReading(z, grams, self.source, self.clock())
                self._cache[z] = (reading, now + self.cache_ttl)
                self.last_error = ""
                return reading
            self.last_error = error
            log.warning("%s: no intensity for %s (%s); using the table", self.source, z, error)
            fb = self.fallback.current(z)
            reading = IntensityReading(z, fb.grams_per_kwh, FALLBACK_SOURCE, fb.fetched_at)
            self._cache[z] = (reading, now + self.failure_ttl)
            return reading


class ElectricityMapsProvider(_HttpProvider):
    """Electricity Maps API v3, `GET /carbon-intensity/latest?zone=Z` with header `auth-token`."""

    source = "electricitymaps"

    def __init__(self, token: str, url: str = ELECTRICITYMAPS_URL, **kwargs: Unpack[HttpOptions]):
        super().__init__(url, **kwargs)
        if not token:
            raise ConfigError(
                f"intensity: provider electricitymaps needs a token (electricitymaps_token_file or {TOKEN_ENV})"
            )
        self._token = token

    def __repr__(self) -> str:  # never show the token
        return f"ElectricityMapsProvider(url={self.url!r}, token=***)"

    def _headers(self) -> dict[str, str]:
        return {**super()._headers(), "auth-token": self._token}

    def _fetch(self, zone: str) -> float:
        if zone == WORLD_ZONE:
            raise ProviderError("electricitymaps has no zone 'world'")
        data = self._get_json("/carbon-intensity/latest", {"zone": zone})
        if not isinstance(data, dict) or "carbonIntensity" not in data:
            raise ProviderError("electricitymaps reply has no carbonIntensity")
        if isinstance(data.get("zone"), str) and data["zone"].upper() != zone.upper():
            raise ProviderError(f"electricitymaps answered for zone {data['zone']!r}, not {zone!r}")
        return check_grams(data["carbonIntensity"], "electricitymaps carbonIntensity", error=ProviderError)


class UkNesoProvider(_HttpProvider):
    """UK NESO Carbon Intensity API (Great Britain, national): `GET /intensity`; the actual value of the
    current half hour, else its forecast. Zones other than GB are answered by the table."""

    source = "uk-neso"

    def __init__(self, url: str = UK_NESO_URL, **kwargs: Unpack[HttpOptions]):
        super().__init__(url, **kwargs)

    def covers(self, zone: str) -> bool:
        return zone in ("GB", "UK")

    def _fetch(self, zone: str) -> float:
        data = self._get_json("/intensity")
        rows = data.get("data") if isinstance(data, dict) else None
        first = rows[0] if isinstance(rows, list) and rows else None
        if not isinstance(first, dict) or "intensity" not in first:
            raise ProviderError("uk-neso reply has no data[0].intensity")
        entry = first["intensity"]
        value = entry.get("actual") if isinstance(entry, dict) else None
        if value is None and isinstance(entry, dict):
            value = entry.get("forecast")
        return check_grams(value, "uk-neso intensity", error=ProviderError)
