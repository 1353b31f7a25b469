"""The intensity feed: background refresh, the fleet feed between instances, and its fallbacks."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry

from carbonwatch.errors import ConfigError
from carbonwatch.intensity.collector import IntensityCollector
from carbonwatch.intensity.feed import FeedClient, IntensityFeed, feed_from_config
from carbonwatch.intensity.providers import FALLBACK_SOURCE, IntensityReading


class Now:
    def __init__(self) -> None:
        self.t = 1.7e9

    def __call__(self) -> float:
        return self.t


class Scripted:
    """A provider whose next answers the test sets: a value, an exception, or a wait on an event."""

    def __init__(self, clock: Now) -> None:
        self.clock = clock
        self.value: float | Exception = 100.0
        self.block: threading.Event | None = None
        self.calls = 0

    def current(self, zone: str) -> IntensityReading:
        self.calls += 1
        if self.block is not None:
            self.block.wait(10)
        if isinstance(self.value, Exception):
            raise self.value
        return IntensityReading(zone, self.value, "electricitymaps", self.clock())


def test_before_the_first_refresh_the_table_is_in_use_and_says_so():
    feed = IntensityFeed(["DE"], Scripted(Now()))
    assert feed.current().source.startswith("table:")
    assert feed.in_use().zone == "DE"


def test_a_failed_refresh_keeps_the_last_value_then_falls_back_to_the_table():
    clock = Now()
    p = Scripted(clock)
    feed = IntensityFeed(["DE"], p, max_stale=3600.0, clock=clock)
    feed.refresh_once()
    assert feed.current() == IntensityReading("DE", 100.0, "electricitymaps", clock.t)
    p.value = ConnectionError("provider down")
    clock.t += 600
    feed.refresh_once()
    r = feed.current()
    assert (r.grams_per_kwh, r.source) == (100.0, "last:electricitymaps")
    assert feed.health["DE"].failures == 1 and "provider down" in feed.health["DE"].last_error
    assert not feed.healthy()
    clock.t += 3600  # the last good value is now older than max_stale
    feed.refresh_once()
    assert feed.current().source.startswith("table:")
    p.value = 250.0
    feed.refresh_once()
    assert feed.current().source == "electricitymaps" and feed.healthy()


def test_a_provider_that_fell_back_to_the_table_itself_counts_as_a_failed_refresh():
    clock = Now()
    p = Scripted(clock)
    feed = IntensityFeed(["DE"], p, clock=clock)
    feed.refresh_once()

    class FellBack:
        last_error = "HTTP 503 from the API"

        def current(self, zone):
            return IntensityReading(zone, 380.9, FALLBACK_SOURCE, clock())

    feed.provider = FellBack()
    feed.refresh_once()
    assert feed.current().source == "last:electricitymaps"
    assert feed.health["DE"].last_error == "HTTP 503 from the API"


def test_a_scrape_never_waits_on_a_provider():
    clock = Now()
    p = Scripted(clock)
    feed = IntensityFeed(["DE", "FR"], p, clock=clock)
    feed.refresh_once()
    p.block = threading.Event()  # the provider now hangs until released
    stop = threading.Event()
    feed.refresh_interval = 0.01
    feed.start(stop)
    try:
        registry = CollectorRegistry()
        registry.register(IntensityCollector(feed, {"DE": (0.3, "EUR")}))
        # collect on this thread while the refresh thread is stuck inside the provider
        assert registry.get_sample_value("carbonwatch_grid_carbon_intensity_grams_per_kwh",
                                         {"zone": "DE", "source": "electricitymaps"}) == 100.0
        assert registry.get_sample_value("carbonwatch_intensity_refresh_success", {"zone": "FR"}) == 1.0
        assert registry.get_sample_value("carbonwatch_electricity_price_per_kwh",
                                         {"zone": "DE", "currency": "EUR"}) == 0.3
        assert not p.block.is_set()
    finally:
        stop.set()
        p.block.set()


class Central(BaseHTTPRequestHandler):
    """A central instance's /intensity, scripted per test through the server's `reply` attribute."""

    def do_GET(self):  # noqa: N802
        code, body = self.server.reply(self.path)
        if code is None:
            self.server.release.wait(5)  # a slow central instance
            code, body = 200, b"{}"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def central():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Central)
    server.release = threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.release.set()
    server.shutdown()


def test_nodes_take_their_zone_from_a_central_instance_and_label_it_feed(central):
    clock = Now()
    upstream = IntensityFeed(["DE", "FR"], Scripted(clock), clock=clock)
    upstream.refresh_once()

    def reply(path):
        from urllib.parse import parse_qs, urlsplit
        return upstream.feed_reply(parse_qs(urlsplit(path).query))

    central.reply = reply
    url = f"http://127.0.0.1:{central.server_address[1]}"
    node = feed_from_config({"feed_url": url}, "FR")
    node.refresh_once()
    r = node.current()
    assert (r.zone, r.grams_per_kwh, r.source) == ("FR", 100.0, "feed:electricitymaps")
    # a zone the central instance does not serve: the node says so and uses the table
    other = feed_from_config({"feed_url": url}, "PL")
    other.refresh_once()
    assert other.current().source.startswith("table:")
    assert "HTTP 404" in other.health["PL"].last_error


@pytest.mark.parametrize("body, why", [
    (b"not json", "not JSON"),
    (json.dumps({"zone": "FR", "grams_per_kwh": -3, "source": "x", "fetched_at": 1}).encode(), "plausible"),
    (json.dumps({"zone": "FR", "grams_per_kwh": 50, "source": "a\nb", "fetched_at": 1}).encode(), "source"),
    (json.dumps({"zone": "DE", "grams_per_kwh": 50, "source": "x", "fetched_at": 1}).encode(), "zone 'DE'"),
    (json.dumps([1, 2]).encode(), "not a JSON object"),
])
def test_garbage_from_the_central_instance_is_refused_with_the_reason(central, body, why):
    central.reply = lambda path: (200, body)
    feed = IntensityFeed(["FR"], Scripted(Now()),
                         feed=FeedClient(f"http://127.0.0.1:{central.server_address[1]}", timeout=2))
    feed.refresh_once()
    assert why in feed.health["FR"].last_error
    assert feed.current().source.startswith("table:")


def test_a_slow_central_instance_times_out_in_the_background(central):
    central.reply = lambda path: (None, b"")
    feed = IntensityFeed(["FR"], Scripted(Now()),
                         feed=FeedClient(f"http://127.0.0.1:{central.server_address[1]}", timeout=0.3))
    feed.refresh_once()
    assert "Timeout" in feed.health["FR"].last_error


@pytest.mark.parametrize("cfg, key", [
    ({"feed_url": "ftp://x"}, "intensity.feed_url"),
    ({"refresh_interval": "0s"}, "intensity.refresh_interval"),
    ({"max_stale": "soon"}, "intensity.max_stale"),
])
def test_bad_feed_settings_name_the_key(cfg, key):
    with pytest.raises(ConfigError, match=key):
        feed_from_config(cfg, "DE")
