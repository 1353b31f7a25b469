"""The exporter's `intensity` collector: grid carbon intensity and electricity price per zone.

Every node publishes the value for its own zone (the bundled table: no network). For live data, one
instance per fleet is configured with a live provider and the list of zones; the recording rules pick,
per zone, a live source over the table (prometheus/rules/carbonwatch.rules.yml), so a fleet of 1,000
nodes makes one set of API calls, not 1,000.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from carbonwatch.intensity import (
    FALLBACK_SOURCE,
    IntensityProvider,
    IntensityReading,
    TableProvider,
    normalise_zone,
    provider_from_config,
    settings_from_config,
)

log = logging.getLogger(__name__)


class IntensityCollector(Collector):
    """`IntensityCollector(provider, zones, prices)`: on each scrape asks `provider` (which caches) for
    every zone and yields `carbonwatch_grid_carbon_intensity_grams_per_kwh{zone,source}` and
    `carbonwatch_electricity_price_per_kwh{zone,currency}` (for zones with a configured price)."""

    def __init__(
        self,
        provider: IntensityProvider,
        zones: list[str],
        prices: Mapping[str, tuple[float, str]] | None = None,
    ):
        self.provider = provider
        self.zones = [normalise_zone(z) for z in zones] or [normalise_zone(None)]
        self.prices = {normalise_zone(z): v for z, v in (prices or {}).items()}
        self._table = TableProvider()
        self.last_duration_seconds = 0.0
        self.last_success = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, node_zone: str | None = None) -> IntensityCollector:
        """From the `intensity` config section (or a whole config holding one) and the node's zone."""
        settings = settings_from_config(cfg, node_zone)
        return cls(provider_from_config(cfg), settings.zones, settings.prices)

    def describe(self) -> Iterable[Any]:
        return []

    def readings(self) -> list[IntensityReading]:
        out = []
        ok = True
        for zone in self.zones:
            try:
                r = self.provider.current(zone)
            except Exception as exc:  # a provider bug must not fail the scrape
                log.warning("intensity provider failed for %s: %s", zone, exc)
                fb = self._table.current(zone)
                r = IntensityReading(zone, fb.grams_per_kwh, FALLBACK_SOURCE, fb.fetched_at)
            if r.source == FALLBACK_SOURCE:
                ok = False
            out.append(r)
        self.last_success = ok
        return out

    def collect(self) -> Iterable[GaugeMetricFamily]:
        start = time.perf_counter()
        intensity = GaugeMetricFamily(
            "carbonwatch_grid_carbon_intensity_grams_per_kwh",
            "Carbon intensity of grid electricity in the zone, g CO2e per kWh, and where it came from.",
            labels=["zone", "source"],
        )
        for r in self.readings():
            intensity.add_metric([r.zone, r.source], r.grams_per_kwh)
        yield intensity
        if self.prices:
            price = GaugeMetricFamily(
                "carbonwatch_electricity_price_per_kwh",
                "Configured electricity price in the zone per kWh, in the currency of the label.",
                labels=["zone", "currency"],
            )
            for zone, (value, currency) in sorted(self.prices.items()):
                price.add_metric([zone, currency], value)
            yield price
        self.last_duration_seconds = time.perf_counter() - start
