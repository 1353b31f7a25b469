"""Grid intensity basics: the reading types, zone names, and the providers that need no network: the bundled
per-country table (annual averages, Our World in Data / Ember, see data/README.md), a static value, and a
file of values per zone.

No zone configured means zone "world": the world average of 481 g/kWh (Ember, 2023), source
`default:world-ember-2023`, so emissions are never silently missing.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import yaml

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


def validate_zone(value: object, what: str = "zone") -> str:
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


def check_grams(value: object, what: str, error: type[Exception] = ConfigError) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise error(f"{what}: expected g CO2e/kWh as a number, got {value!r}")
    try:
        v = float(value)
    except ValueError:
        raise error(f"{what}: expected g CO2e/kWh as a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or v > 5000:
        raise error(f"{what}: {value!r} is not a plausible intensity (0..5000 g CO2e/kWh)")
    return v


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
        self.grams_per_kwh = check_grams(grams_per_kwh, "intensity.static_grams_per_kwh")
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
            values[normalise_zone(str(k))] = check_grams(v, f"{self.path}: {k}", error=ProviderError)
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
