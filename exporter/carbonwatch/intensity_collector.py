"""The exporter's `intensity` collector: grid carbon intensity and electricity price per zone.

Every node publishes the value for its own zone. For live data, one instance per fleet is configured with a
live provider and the list of zones, and serves them to the other nodes (`intensity.feed_url`, see
carbonwatch.intensity_feed) and to Prometheus. A scrape only reads the feed's cache: it never waits on a
provider, and the refresh's health is served beside the values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from carbonwatch.intensity import normalise_zone
from carbonwatch.intensity_feed import IntensityFeed


class IntensityCollector(Collector):
    """Yields `carbonwatch_grid_carbon_intensity_grams_per_kwh{zone,source}` for every zone the feed
    refreshes, `carbonwatch_electricity_price_per_kwh{zone,currency}` for zones with a configured price, and
    the refresh's health."""

    def __init__(self, feed: IntensityFeed, prices: Mapping[str, tuple[float, str]] | None = None) -> None:
        self.feed = feed
        self.prices = {normalise_zone(z): v for z, v in (prices or {}).items()}

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        intensity = GaugeMetricFamily(
            "carbonwatch_grid_carbon_intensity_grams_per_kwh",
            "Carbon intensity of grid electricity in the zone, g CO2e per kWh, and where it came from.",
            labels=["zone", "source"],
        )
        for zone, r in sorted(self.feed.all().items()):
            intensity.add_metric([zone, r.source], r.grams_per_kwh)
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
        ok = GaugeMetricFamily("carbonwatch_intensity_refresh_success",
                               "1 if the last background refresh of the zone's intensity gave a live value, else 0 "
                               "(the value served is then the last good one or the table, as `source` says).",
                               labels=["zone"])
        last = GaugeMetricFamily("carbonwatch_intensity_last_success_timestamp_seconds",
                                 "Wall-clock time of the zone's last successful intensity refresh.", labels=["zone"])
        failures = CounterMetricFamily("carbonwatch_intensity_refresh_failures",
                                       "Background intensity refreshes of the zone that failed.", labels=["zone"])
        for zone, h in sorted(self.feed.health.items()):
            ok.add_metric([zone], 0.0 if h.last_error else 1.0)
            failures.add_metric([zone], h.failures)
            if h.last_success is not None:
                last.add_metric([zone], h.last_success)
        yield ok
        yield last
        yield failures
        duration = GaugeMetricFamily("carbonwatch_intensity_refresh_duration_seconds",
                                     "Time the last background refresh of every zone took.")
        duration.add_metric([], self.feed.last_duration_seconds)
        yield duration
