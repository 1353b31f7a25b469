"""Grid carbon intensity, g CO2e per kWh, from providers behind one interface.

Providers: the bundled per-country table (annual averages, Our World in Data / Ember, see data/README.md),
Electricity Maps (v3 `carbon-intensity/latest`, token from a file or the environment), the UK NESO carbon
intensity API (Great Britain, no key), a static value, and a file of values per zone. Live providers cache
each zone for `cache_ttl`, time out, retry, and on failure answer the table value with source
`fallback:table` (the failure is cached for a short while too, so a scrape never waits twice in a row).

    provider = provider_from_config(cfg)        # None -> bundled table
    reading = provider.current("DE")            # reading.grams_per_kwh, reading.source, reading.fetched_at

No zone configured means zone "world": the world average of 481 g/kWh (Ember, 2023), source
`default:world-ember-2023`, so emissions are never silently missing.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import requests
import yaml

from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError

log = logging.getLogger(__name__)

WORLD_ZONE = "world"
WORLD_GRAMS_PER_KWH = 481.0  # Ember, Global Electricity Review 2024: world average 2023
WORLD_SOURCE = "default:world-ember-2023"
FALLBACK_SOURCE = "fallback:table"
TOKEN_ENV = "CARBONWATCH_ELECTRICITYMAPS_TOKEN"
ELECTRICITYMAPS_URL = "https://api.electricitymap.org/v3"
UK_NESO_URL = "https://api.carbonintensity.org.uk"
PROVIDERS = ("table", "electricitymaps", "uk-neso", "static", "file")
CONFIG_KEYS = frozenset(
    {
        "provider",
        "zone",
        "zones",
        "static_grams_per_kwh",
        "file",
        "electricitymaps_token_file",
        "url",
        "cache_ttl",
        "timeout",
        "retries",
        "price_per_kwh",
        "feed_url",
        "refresh_interval",
        "max_stale",
        "currency",
    }
)


@dataclass(frozen=True)
class IntensityReading:
    zone: str
    grams_per_kwh: float
    source: str  # e.g. "table:owid-2023", "electricitymaps", "uk-neso", "static", "file", "fallback:table"
    fetched_at: float  # unix seconds when the value was obtained


@dataclass(frozen=True)
class IntensityInUse:
    """The grid intensity a node prices its energy at, and where the value came from."""

    zone: str
    grams_per_kwh: float
    source: str


class IntensityProvider(Protocol):
    def current(self, zone: str) -> IntensityReading: ...


class ProviderError(Exception):
    """A live provider could not give a value (network, HTTP status, malformed reply)."""


# Grid zones: ISO 3166 country codes, Electricity Maps zone keys (US-CAL-CISO, DK-DK1), or "world".
ZONE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def validate_zone(value: Any, what: str = "zone") -> str:
    if not isinstance(value, str) or not ZONE_RE.match(value):
        raise ConfigError(f"{what}: {value!r} is not a grid zone (e.g. DE, FR, US-CAL-CISO, world)")
    return value


def normalise_zone(zone: str | None) -> str:
    """`None`/empty -> "world"; country codes upper-case ("de" -> "DE"); Electricity Maps sub-zones kept."""
    if zone is None or not str(zone).strip():
        return WORLD_ZONE
    z = str(zone).strip()
    if z.lower() == WORLD_ZONE:
        return WORLD_ZONE
    return z.upper()


# ---------------------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class TableRow:
    zone: str
    country: str
    grams_per_kwh: float
    year: int


def load_table(path: Path | None = None) -> dict[str, TableRow]:
    """The bundled table (or `path`, same columns): zone -> row."""
    if path is None:
        text = resources.files("carbonwatch").joinpath("data/grid_intensity_by_country.csv").read_text()
        where = "data/grid_intensity_by_country.csv"
    else:
        text = Path(path).read_text()
        where = str(path)
    rows: dict[str, TableRow] = {}
    for n, rec in enumerate(csv.DictReader(text.splitlines()), start=2):
        try:
            row = TableRow(
                rec["zone"].strip().upper(),
                rec["country"],
                float(rec["grams_co2e_per_kwh"]),
                int(rec["year"]),
            )
        except (KeyError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{where} line {n}: bad row ({exc})") from None
        rows[row.zone] = row
    return rows


_TABLE: dict[str, TableRow] | None = None


def bundled_table() -> dict[str, TableRow]:
    global _TABLE
    if _TABLE is None:
        _TABLE = load_table()
    return _TABLE


class TableProvider:
    """Annual averages per country; sub-zones ("US-CAL-CISO") use their country; unknown -> world."""

    def __init__(self, table: Mapping[str, TableRow] | None = None, clock: Callable[[], float] = time.time):
        self.table = dict(table) if table is not None else bundled_table()
        self.clock = clock

    def current(self, zone: str) -> IntensityReading:
        z = normalise_zone(zone)
        row = self.table.get(z) or self.table.get(z.split("-")[0])
        if z == WORLD_ZONE or row is None:
            return IntensityReading(z, WORLD_GRAMS_PER_KWH, WORLD_SOURCE, self.clock())
        return IntensityReading(z, row.grams_per_kwh, f"table:owid-{row.year}", self.clock())


class StaticProvider:
    """One configured value for every zone."""

    def __init__(self, grams_per_kwh: float, clock: Callable[[], float] = time.time):
        self.grams_per_kwh = _grams(grams_per_kwh, "intensity.static_grams_per_kwh")
        self.clock = clock

    def current(self, zone: str) -> IntensityReading:
        return IntensityReading(normalise_zone(zone), self.grams_per_kwh, "static", self.clock())


class FileProvider:
    """A YAML/JSON mapping `zone: grams_per_kwh`, re-read when the file changes (e.g. written by a cron
    job). Zones missing from the file, or an unreadable file, fall back to the table."""

    def __init__(self, path: Path, fallback: IntensityProvider | None = None, clock: Callable[[], float] = time.time):
        self.path = Path(path)
        self.fallback = fallback or TableProvider()
        self.clock = clock
        self._mtime: float | None = None
        self._values: dict[str, float] = {}
        self._loaded_at = 0.0
        self.last_error = ""
        self._lock = threading.Lock()

    def _load(self) -> None:
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return
        data = yaml.safe_load(self.path.read_text())
        if not isinstance(data, dict):
            raise ProviderError(f"{self.path}: expected a mapping zone: grams_per_kwh")
        values = {}
        for k, v in data.items():
            values[normalise_zone(str(k))] = _grams(v, f"{self.path}: {k}", error=ProviderError)
        self._values, self._mtime, self._loaded_at = values, mtime, self.clock()

    def current(self, zone: str) -> IntensityReading:
        z = normalise_zone(zone)
        with self._lock:
            try:
                self._load()
                self.last_error = ""
            except (OSError, yaml.YAMLError, ProviderError) as exc:
                self.last_error = str(exc)
                log.warning("intensity file %s unusable: %s", self.path, exc)
                self._values, self._mtime = {}, None
                fb = self.fallback.current(z)
                return IntensityReading(z, fb.grams_per_kwh, FALLBACK_SOURCE, fb.fetched_at)
            if z in self._values:
                return IntensityReading(z, self._values[z], "file", self._loaded_at)
        return self.fallback.current(z)


# ----------------------------------------------------------------------------------------------- HTTP


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

    def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        self.requests_made += 1
        try:
            resp = self.session.get(
                f"{self.url}{path}", params=params, headers=self._headers(), timeout=self.timeout
            )
        except requests.RequestException as exc:
            # The message names the URL (never the token, which travels only in a header).
            raise ProviderError(f"{type(exc).__name__} for {self.url}{path}") from None
        if resp.status_code != 200:
            raise ProviderError(f"HTTP {resp.status_code} from {self.url}{path}")
        try:
            return resp.json()
        except ValueError:
            raise ProviderError(f"reply from {self.url}{path} is not JSON") from None

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

    def __init__(self, token: str, url: str = ELECTRICITYMAPS_URL, **kwargs: Any):
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
        return _grams(data["carbonIntensity"], "electricitymaps carbonIntensity", error=ProviderError)


class UkNesoProvider(_HttpProvider):
    """UK NESO Carbon Intensity API (Great Britain, national): `GET /intensity`; the actual value of the
    current half hour, else its forecast. Zones other than GB are answered by the table."""

    source = "uk-neso"

    def __init__(self, url: str = UK_NESO_URL, **kwargs: Any):
        super().__init__(url, **kwargs)

    def covers(self, zone: str) -> bool:
        return zone in ("GB", "UK")

    def _fetch(self, zone: str) -> float:
        data = self._get_json("/intensity")
        try:
            entry = data["data"][0]["intensity"]
        except (KeyError, IndexError, TypeError):
            raise ProviderError("uk-neso reply has no data[0].intensity") from None
        value = entry.get("actual") if isinstance(entry, dict) else None
        if value is None and isinstance(entry, dict):
            value = entry.get("forecast")
        return _grams(value, "uk-neso intensity", error=ProviderError)


# --------------------------------------------------------------------------------------------- config


def _grams(value: Any, what: str, error: type[Exception] = ConfigError) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise error(f"{what}: expected g CO2e/kWh as a number, got {value!r}")
    try:
        v = float(value)
    except ValueError:
        raise error(f"{what}: expected g CO2e/kWh as a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or v > 5000:
        raise error(f"{what}: {value!r} is not a plausible intensity (0..5000 g CO2e/kWh)")
    return v


def intensity_section(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The validated `intensity` section of `cfg`. `cfg` is the section itself, or a whole config: with an
    `intensity` key that section is used (its `zone` defaulting to the config's top-level `zone`); without
    one, only the top-level `zone` is taken."""
    if cfg is None:
        return {}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"intensity: expected a mapping, got {type(cfg).__name__}")
    if "intensity" in cfg:
        section = cfg["intensity"] if cfg["intensity"] is not None else {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"intensity: expected a mapping, got {type(section).__name__}")
        section = dict(section)
        if "zone" not in section and cfg.get("zone"):
            section["zone"] = cfg["zone"]
    elif set(cfg) <= CONFIG_KEYS:
        section = dict(cfg)
    else:
        return {"zone": cfg["zone"]} if cfg.get("zone") else {}
    unknown = sorted(set(section) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"intensity.{unknown[0]}: unknown key (known: {', '.join(sorted(CONFIG_KEYS))})")
    return section


def _read_token(section: Mapping[str, Any]) -> str:
    path = section.get("electricitymaps_token_file")
    if path:
        try:
            return Path(str(path)).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"intensity.electricitymaps_token_file: cannot read {path} ({exc.strerror})"
            ) from None
    return os.environ.get(TOKEN_ENV, "").strip()


def provider_from_config(cfg: Mapping[str, Any] | None = None, **http_kwargs: Any) -> IntensityProvider:
    """A provider for the `intensity` section (or a whole config holding one). None -> bundled table."""
    section = intensity_section(cfg)
    name = str(section.get("provider", "table"))
    if name not in PROVIDERS:
        raise ConfigError(f"intensity.provider: {name!r} is not one of {', '.join(PROVIDERS)}")
    table = TableProvider()
    if name == "table":
        return table
    if name == "static":
        if "static_grams_per_kwh" not in section:
            raise ConfigError("intensity.static_grams_per_kwh: required with provider static")
        return StaticProvider(section["static_grams_per_kwh"])
    if name == "file":
        if not section.get("file"):
            raise ConfigError("intensity.file: required with provider file")
        return FileProvider(Path(str(section["file"])), fallback=table)
    kwargs: dict[str, Any] = {"fallback": table, **http_kwargs}
    if "cache_ttl" in section:
        kwargs["cache_ttl"] = parse_duration(section["cache_ttl"], "intensity.cache_ttl")
    if "timeout" in section:
        kwargs["timeout"] = parse_duration(section["timeout"], "intensity.timeout")
        if kwargs["timeout"] <= 0:
            raise ConfigError("intensity.timeout: must be more than 0")
    if "retries" in section:
        r = section["retries"]
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 10:
            raise ConfigError(f"intensity.retries: expected a whole number 0..10, got {r!r}")
        kwargs["retries"] = r
    if section.get("url"):
        kwargs["url"] = str(section["url"])
    if name == "electricitymaps":
        return ElectricityMapsProvider(_read_token(section), **kwargs)
    return UkNesoProvider(**kwargs)


@dataclass(frozen=True)
class IntensitySettings:
    """What the exporter's intensity collector publishes: zones and their electricity prices."""

    zones: list[str]
    prices: dict[str, tuple[float, str]]  # zone -> (price per kWh, ISO 4217 currency)


def settings_from_config(cfg: Mapping[str, Any] | None, node_zone: str | None = None) -> IntensitySettings:
    """Zones = the node's zone (intensity.zone, else `node_zone`, else "world") then intensity.zones.
    price_per_kwh is a number for every zone or a mapping zone -> number; currency defaults to EUR."""
    section = intensity_section(cfg)
    first = normalise_zone(section.get("zone") or node_zone)
    zones = [first]
    extra = section.get("zones") or []
    if isinstance(extra, str) or not isinstance(extra, list):
        raise ConfigError(f"intensity.zones: expected a list of zones, got {extra!r}")
    for z in extra:
        if not isinstance(z, str) or not z.strip():
            raise ConfigError(f"intensity.zones: {z!r} is not a zone")
        nz = normalise_zone(z)
        if nz not in zones:
            zones.append(nz)
    currency = str(section.get("currency", "EUR"))
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise ConfigError(f"intensity.currency: expected an ISO 4217 code such as EUR, got {currency!r}")
    prices: dict[str, tuple[float, str]] = {}
    raw = section.get("price_per_kwh")
    if raw is not None:
        per_zone = raw if isinstance(raw, Mapping) else dict.fromkeys(zones, raw)
        for z, p in per_zone.items():
            if isinstance(p, bool) or not isinstance(p, (int, float)) or p < 0 or not math.isfinite(p):
                raise ConfigError(f"intensity.price_per_kwh: expected a price >= 0 per kWh for {z}, got {p!r}")
            prices[normalise_zone(str(z))] = (float(p), currency)
    return IntensitySettings(zones, prices)


# ------------------------------------------------------------------------------------------ zone check


LIST_ZONES_HINT = "`carbonwatch intensity --list-zones` lists the known zones"


def _file_zones(section: Mapping[str, Any]) -> set[str]:
    """Zones of a `provider: file` intensity file, best effort (an unreadable file adds none)."""
    if section.get("provider") != "file" or not section.get("file"):
        return set()
    try:
        data = yaml.safe_load(Path(str(section["file"])).read_text())
    except (OSError, yaml.YAMLError):
        return set()
    return {normalise_zone(str(k)) for k in data} if isinstance(data, dict) else set()


def known_zones(cfg: Mapping[str, Any] | None = None) -> list[str]:
    """Every zone with a value of its own: world, the bundled table's countries, an intensity file's zones."""
    return [WORLD_ZONE, *sorted(set(bundled_table()) | _file_zones(intensity_section(cfg)))]


def zone_known(zone: str | None, cfg: Mapping[str, Any] | None = None) -> bool:
    """Does `zone` get a value of its own rather than the world average standing in for it? Sub-zones
    (US-CAL-CISO, DK-DK1) count through their country; any zone does with `provider: static`."""
    z = normalise_zone(zone)
    section = intensity_section(cfg)
    if z == WORLD_ZONE or section.get("provider") == "static":
        return True
    if section.get("provider") == "uk-neso" and z in ("GB", "UK"):
        return True
    table = bundled_table()
    return z in table or z.split("-")[0] in table or z in _file_zones(section)


def check_zone(zone: str | None, cfg: Mapping[str, Any] | None = None, what: str = "zone", hint: str = "") -> str:
    """`zone` normalised, or ConfigError saying it is unknown and how to find valid ones."""
    if not zone_known(zone, cfg):
        shown = repr(zone) if zone is None or len(zone) <= 40 else f"{zone[:40]!r}..."
        raise ConfigError(
            f"{what}: {shown} is not a known grid zone (ISO country codes such as DE, FR, GB; sub-zones such as "
            f"US-CAL-CISO; or world for the world average); {LIST_ZONES_HINT}" + (f"; {hint}" if hint else "")
        )
    return normalise_zone(zone)
