"""The exporter's `intensity` collector: grid carbon intensity and electricity price per zone.

Every node publishes the value for its own zone. For live data, one instance per fleet is configured with a
live provider and the list of zones, and serves them to the other nodes (`intensity.feed_url`, see
carbonwatch.intensity.feed) and to Prometheus. A scrape only reads the feed's cache: it never waits on a
provider, and the refresh's health is served beside the values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from carbonwatch.contracts import INTENSITY_BY_NAME
from carbonwatch.intensity.feed import IntensityFeed
from carbonwatch.intensity.providers import normalise_zone


class IntensityCollector(Collector):
    """Yields `carbonwatch_grid_carbon_intensity_grams_per_kwh{zone,source}` for every zone the feed
    refreshes, `carbonwatch_electricity_price_per_kwh{zone,currency}` for zones with a configured price, and
    the refresh's health."""

    def __init__(self, feed: IntensityFeed, prices: Mapping[str, tuple[float, str]] | None = None) -> None:
        self.feed = feed
        self.prices = {normalise_zone(z): v for z, v in (prices or {}).items()}

    def describe(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        return []

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        f = {name: spec.family() for name, spec in INTENSITY_BY_NAME.items()}
        for zone, r in sorted(self.feed.all().items()):
            f["carbonwatch_grid_carbon_intensity_grams_per_kwh"].add_metric([zone, r.source], r.grams_per_kwh)
        for zone, (value, currency) in sorted(self.prices.items()):
            f["carbonwatch_electricity_price_per_kwh"].add_metric([zone, currency], value)
        for zone, h in sorted(self.feed.health.items()):
            f["carbonwatch_intensity_refresh_success"].add_metric([zone], 0.0 if h.last_error else 1.0)
            f["carbonwatch_intensity_refresh_failures"].add_metric([zone], h.failures)
            if h.last_success is not None:
                f["carbonwatch_intensity_last_success_timestamp_seconds"].add_metric([zone], h.last_success)
        f["carbonwatch_intensity_refresh_duration_seconds"].add_metric([], self.feed.last_duration_seconds)
        yield from (fam for fam in f.values() if fam.samples)

