"""The `intensity` configuration section: its keys and their types checked (an unknown or mistyped key is an
error naming it), the provider it asks for, the zones and prices the exporter publishes, and the zone check
every command shares. Other modules import these names from carbonwatch.intensity.providers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.intensity.base import (
    ELECTRICITYMAPS_URL,
    PROVIDERS,
    TOKEN_ENV,
    UK_NESO_URL,
    WORLD_ZONE,
    FileProvider,
    IntensityProvider,
    StaticProvider,
    TableProvider,
    bundled_table,
    check_grams,
    normalise_zone,
    validate_zone,
)
from carbonwatch.intensity.live import ElectricityMapsProvider, HttpOptions, UkNesoProvider

if TYPE_CHECKING:
    from typing_extensions import Unpack

# Each key of the section and the kind of value it takes (checked by check_section).
_STRING_KEYS = ("provider", "file", "electricitymaps_token_file", "url", "feed_url", "currency")
_DURATION_KEYS = ("cache_ttl", "timeout", "refresh_interval", "max_stale")
CONFIG_KEYS = frozenset(
    {*_STRING_KEYS, *_DURATION_KEYS, "zone", "zones", "static_grams_per_kwh", "retries", "price_per_kwh"}
)
# Top-level keys of a whole configuration file (the exporter's, shared with the run client) other than
# `zone` and `intensity`: a mapping holding one of them is a whole config, never an intensity section.
WHOLE_CONFIG_KEYS = frozenset(
    {"sample_interval", "web", "collectors", "cpu", "memory", "gpu", "process", "run", "storage", "kubernetes",
     "slurm"}
)


def intensity_section(cfg: Mapping[str, object] | None) -> dict[str, object]:
    """The validated `intensity` section of `cfg`. `cfg` is the section itself, or a whole config: with an
    `intensity` key that section is used (its `zone` defaulting to the config's top-level `zone`); a whole
    config without one (it has other top-level keys) gives only its `zone`. Every other mapping is a section,
    and every key of it is checked: a mistyped key is an error naming it, never a silent default."""
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
    elif set(cfg) & WHOLE_CONFIG_KEYS:
        return {"zone": validate_zone(cfg["zone"])} if cfg.get("zone") else {}
    else:
        section = dict(cfg)
    check_section(section)
    return section


def section_zone(section: Mapping[str, object]) -> str | None:
    """The section's `zone` (a string once check_section ran), None when unset."""
    zone = section.get("zone")
    return zone if isinstance(zone, str) and zone else None


def check_section(section: Mapping[str, object]) -> None:
    """ConfigError naming the first unknown key or value of the wrong type in an `intensity` section."""
    unknown = sorted(set(section) - CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"intensity.{unknown[0]}: unknown key (known: {', '.join(sorted(CONFIG_KEYS))})")
    for key in _STRING_KEYS:
        if key in section and not isinstance(section[key], str):
            raise ConfigError(f"intensity.{key}: expected a string, got {section[key]!r}")
    if "provider" in section and section["provider"] not in PROVIDERS:
        raise ConfigError(f"intensity.provider: {section['provider']!r} is not one of {', '.join(PROVIDERS)}")
    for key in _DURATION_KEYS:
        if key in section:
            parse_duration(section[key], f"intensity.{key}")
    if section.get("zone") is not None:
        validate_zone(section["zone"], "intensity.zone")
    if "static_grams_per_kwh" in section:
        check_grams(section["static_grams_per_kwh"], "intensity.static_grams_per_kwh")
    if "retries" in section:
        r = section["retries"]
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 10:
            raise ConfigError(f"intensity.retries: expected a whole number 0..10, got {r!r}")
    zones = section.get("zones")
    if zones is not None and (isinstance(zones, str) or not isinstance(zones, list)):
        raise ConfigError(f"intensity.zones: expected a list of zones, got {zones!r}")
    price = section.get("price_per_kwh")
    if price is not None and not isinstance(price, (int, float, Mapping)) or isinstance(price, bool):
        raise ConfigError(f"intensity.price_per_kwh: expected a number or a mapping zone -> number, got {price!r}")


def _read_token(section: Mapping[str, object]) -> str:
    path = section.get("electricitymaps_token_file")
    if path:
        try:
            return Path(str(path)).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"intensity.electricitymaps_token_file: cannot read {path} ({exc.strerror})"
            ) from None
    return os.environ.get(TOKEN_ENV, "").strip()


def provider_from_config(cfg: Mapping[str, object] | None = None,
                         **http_kwargs: Unpack[HttpOptions]) -> IntensityProvider:
    """A provider for the `intensity` section (or a whole config holding one). None -> bundled table."""
    section = intensity_section(cfg)
    name = str(section.get("provider", "table"))
    table = TableProvider()
    if name == "table":
        return table
    if name == "static":
        if "static_grams_per_kwh" not in section:
            raise ConfigError("intensity.static_grams_per_kwh: required with provider static")
        return StaticProvider(check_grams(section["static_grams_per_kwh"], "intensity.static_grams_per_kwh"))
    if name == "file":
        if not section.get("file"):
            raise ConfigError("intensity.file: required with provider file")
        return FileProvider(Path(str(section["file"])), fallback=table)
    kwargs = _http_options(section, table, http_kwargs)
    url = str(section["url"]) if section.get("url") else None
    if name == "electricitymaps":
        return ElectricityMapsProvider(_read_token(section), url or ELECTRICITYMAPS_URL, **kwargs)
    return UkNesoProvider(url or UK_NESO_URL, **kwargs)


def _http_options(section: Mapping[str, object], table: TableProvider, given: HttpOptions) -> HttpOptions:
    kwargs: HttpOptions = {"fallback": table, **given}
    if "cache_ttl" in section:
        kwargs["cache_ttl"] = parse_duration(section["cache_ttl"], "intensity.cache_ttl")
    if "timeout" in section:
        kwargs["timeout"] = parse_duration(section["timeout"], "intensity.timeout")
        if kwargs["timeout"] <= 0:
            raise ConfigError("intensity.timeout: must be more than 0")
    retries = section.get("retries")
    if isinstance(retries, int):  # a whole number 0..10: check_section ran
        kwargs["retries"] = retries
    return kwargs


@dataclass(frozen=True)
class IntensitySettings:
    """What the exporter's intensity collector publishes: zones and their electricity prices."""

    zones: list[str]
    prices: dict[str, tuple[float, str]]  # zone -> (price per kWh, ISO 4217 currency)


def settings_from_config(cfg: Mapping[str, object] | None, node_zone: str | None = None) -> IntensitySettings:
    """Zones = the node's zone (intensity.zone, else `node_zone`, else "world") then intensity.zones.
    price_per_kwh is a number for every zone or a mapping zone -> number; currency defaults to EUR."""
    section = intensity_section(cfg)
    first = normalise_zone(section_zone(section) or node_zone)
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


def _file_zones(section: Mapping[str, object]) -> set[str]:
    """Zones of a `provider: file` intensity file, best effort (an unreadable file adds none)."""
    if section.get("provider") != "file" or not section.get("file"):
        return set()
    try:
        data = yaml.safe_load(Path(str(section["file"])).read_text())
    except (OSError, yaml.YAMLError):
        return set()
    return {normalise_zone(str(k)) for k in data} if isinstance(data, dict) else set()


def known_zones(cfg: Mapping[str, object] | None = None) -> list[str]:
    """Every zone with a value of its own: world, the bundled table's countries, an intensity file's zones."""
    return [WORLD_ZONE, *sorted(set(bundled_table()) | _file_zones(intensity_section(cfg)))]


def zone_known(zone: str | None, cfg: Mapping[str, object] | None = None) -> bool:
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


def check_zone(zone: str | None, cfg: Mapping[str, object] | None = None, what: str = "zone", hint: str = "") -> str:
    """`zone` normalised, or ConfigError saying it is unknown and how to find valid ones."""
    if not zone_known(zone, cfg):
        shown = repr(zone) if zone is None or len(zone) <= 40 else f"{zone[:40]!r}..."
        raise ConfigError(
            f"{what}: {shown} is not a known grid zone (ISO country codes such as DE, FR, GB; sub-zones such as "
            f"US-CAL-CISO; or world for the world average); {LIST_ZONES_HINT}" + (f"; {hint}" if hint else "")
        )
    return normalise_zone(zone)
