"""Grid carbon intensity, g CO2e per kWh, from providers behind one interface: the names every other module
imports. The providers themselves live in carbonwatch.intensity.base (table, static, file),
carbonwatch.intensity.live (Electricity Maps, UK NESO) and carbonwatch.intensity.config (the `intensity`
configuration section and the zone check).

    provider = provider_from_config(cfg)        # None -> bundled table
    reading = provider.current("DE")            # reading.grams_per_kwh, reading.source, reading.fetched_at
"""

from __future__ import annotations

from carbonwatch.intensity.base import (
    ELECTRICITYMAPS_URL,
    FALLBACK_SOURCE,
    PROVIDERS,
    TOKEN_ENV,
    UK_NESO_URL,
    WORLD_GRAMS_PER_KWH,
    WORLD_SOURCE,
    WORLD_ZONE,
    ZONE_RE,
    FileProvider,
    IntensityInUse,
    IntensityProvider,
    IntensityReading,
    ProviderError,
    StaticProvider,
    TableProvider,
    TableRow,
    bundled_table,
    check_grams,
    load_table,
    normalise_zone,
    validate_zone,
)
from carbonwatch.intensity.config import (
    CONFIG_KEYS,
    LIST_ZONES_HINT,
    IntensitySettings,
    check_section,
    check_zone,
    intensity_section,
    known_zones,
    provider_from_config,
    section_zone,
    settings_from_config,
    zone_known,
)
from carbonwatch.intensity.live import ElectricityMapsProvider, UkNesoProvider

__all__ = [
    "CONFIG_KEYS", "ELECTRICITYMAPS_URL", "FALLBACK_SOURCE", "LIST_ZONES_HINT", "PROVIDERS", "TOKEN_ENV",
    "UK_NESO_URL", "WORLD_GRAMS_PER_KWH", "WORLD_SOURCE", "WORLD_ZONE", "ZONE_RE", "ElectricityMapsProvider",
    "FileProvider", "IntensityInUse", "IntensityProvider", "IntensityReading", "IntensitySettings",
    "ProviderError", "StaticProvider", "TableProvider", "TableRow", "UkNesoProvider", "bundled_table",
    "check_grams", "check_section", "check_zone", "intensity_section", "known_zones", "load_table",
    "normalise_zone", "provider_from_config", "section_zone", "settings_from_config", "validate_zone", "zone_known",
]
