"""Grid intensity providers, the intensity collector and `carbonwatch intensity`, against a local HTTP
server replaying the shapes of the real Electricity Maps v3 and UK NESO replies."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from carbonwatch.cli import main as cli_main
from carbonwatch.errors import ConfigError
from carbonwatch.intensity.collector import IntensityCollector
from carbonwatch.intensity.feed import IntensityFeed, feed_from_config
from carbonwatch.intensity.providers import (
    FALLBACK_SOURCE,
    TOKEN_ENV,
    WORLD_GRAMS_PER_KWH,
    WORLD_SOURCE,
    FileProvider,
    TableProvider,
    check_zone,
    known_zones,
    load_table,
    provider_from_config,
    settings_from_config,
    zone_known,
)
from tests.support import config_error_cases

TOKEN = "s3cret-token-value"

# Reply shapes of the real APIs (Electricity Maps v3 carbon-intensity/latest; NESO /intensity).
EM_DE = {
    "zone": "DE",
    "carbonIntensity": 302,
    "datetime": "2024-05-21T10:00:00.000Z",
    "updatedAt": "2024-05-21T09:51:29.171Z",
    "createdAt": "2024-05-18T10:52:30.455Z",
    "emissionFactorType": "lifecycle",
    "isEstimated": True,
    "estimationMethod": "TIME_SLICER_AVERAGE",
}
NESO = {
    "data": [
        {"from": "2024-05-21T10:00Z", "to": "2024-05-21T10:30Z",
         "intensity": {"forecast": 140, "actual": 133, "index": "low"}}
    ]
}


class Replay:
    """What the fake API answers: (status, body) per path; records the requests."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple[int, bytes]]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []

    def set(self, path: str, *replies: tuple[int, Any]) -> None:
        self.routes[path] = [
            (code, body if isinstance(body, bytes) else json.dumps(body).encode()) for code, body in replies
        ]


@pytest.fixture()
def api() -> Iterator[tuple[str, Replay]]:
    replay = Replay()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            replay.requests.append((self.path, dict(self.headers)))
            path = self.path.split("?")[0]
            replies = replay.routes.get(path, [(404, b'{"error": "not found"}')])
            code, body = replies.pop(0) if len(replies) > 1 else replies[0]
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", replay
    finally:
        server.shutdown()
        server.server_close()


def em_provider(url: str, **extra: Any) -> Any:
    return provider_from_config(
        {"provider": "electricitymaps", "url": url, "retries": 1, "timeout": "2s", **extra},
        sleep=lambda s: None,
    )


def test_table_has_pinned_yearly_values_with_source_labels() -> None:
    t = TableProvider()
    expected = {"FR": 56.0, "DE": 380.9, "PL": 661.9, "US": 369.5, "IN": 713.4, "SE": 40.7}
    for zone, grams in expected.items():
        r = t.current(zone.lower())
        assert (r.zone, r.grams_per_kwh, r.source) == (zone, grams, "table:owid-2023")
    assert t.current("US-CAL-CISO").grams_per_kwh == 369.5  # sub-zone -> country


def test_no_zone_or_unknown_zone_is_the_labelled_world_average() -> None:
    t = TableProvider()
    for zone in ("", "world", "XX"):
        r = t.current(zone)
        assert (r.grams_per_kwh, r.source) == (WORLD_GRAMS_PER_KWH, WORLD_SOURCE)
    assert t.current("").zone == "world"


def test_bad_table_row_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("zone,iso3,country,grams_co2e_per_kwh,year\nDE,DEU,Germany,lots,2023\n")
    with pytest.raises(ConfigError, match=r"t.csv line 2"):
        load_table(bad)


def test_electricitymaps_reads_latest_with_token_header_and_caches(api: tuple[str, Replay]) -> None:
    url, replay = api
    replay.set("/carbon-intensity/latest", (200, EM_DE))
    import os

    os.environ[TOKEN_ENV] = TOKEN
    try:
        p = em_provider(url, cache_ttl="10m")
    finally:
        del os.environ[TOKEN_ENV]
    r = p.current("DE")
    assert (r.zone, r.grams_per_kwh, r.source) == ("DE", 302.0, "electricitymaps")
    assert p.current("DE") == r  # cached: no second request
    assert len(replay.requests) == 1
    path, headers = replay.requests[0]
    assert path == "/carbon-intensity/latest?zone=DE"
    assert headers.get("auth-token") == TOKEN
    assert TOKEN not in repr(p)


def test_electricitymaps_token_from_file(api: tuple[str, Replay], tmp_path: Path) -> None:
    url, replay = api
    replay.set("/carbon-intensity/latest", (200, EM_DE))
    tf = tmp_path / "token"
    tf.write_text(TOKEN + "\n")
    p = em_provider(url, electricitymaps_token_file=str(tf))
    assert p.current("DE").source == "electricitymaps"
    assert replay.requests[0][1].get("auth-token") == TOKEN


def test_electricitymaps_without_token_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match="needs a token"):
        provider_from_config({"provider": "electricitymaps"})
    with pytest.raises(ConfigError, match="electricitymaps_token_file"):
        provider_from_config({"provider": "electricitymaps", "electricitymaps_token_file": "/nonexistent/t"})


@pytest.mark.parametrize(
    "replies",
    [
        [(500, {"error": "internal"})],
        [(401, {"message": "invalid token"})],
        [(200, b"<html>not json</html>")],
        [(200, {"zone": "DE"})],  # no carbonIntensity
        [(200, {"zone": "DE", "carbonIntensity": None})],
        [(200, {"zone": "DE", "carbonIntensity": -5})],
    ],
    ids=["http500", "http401", "not-json", "missing-field", "null", "negative"],
)
def test_electricitymaps_failure_falls_back_to_table_said_in_source(
    api: tuple[str, Replay], replies: list[tuple[int, Any]], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, replay = api
    replay.set("/carbon-intensity/latest", *replies)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    p = em_provider(url)
    with caplog.at_level(logging.DEBUG):
        r = p.current("DE")
    assert (r.grams_per_kwh, r.source) == (380.9, FALLBACK_SOURCE)
    assert len(replay.requests) == 2  # one retry
    assert p.current("DE").source == FALLBACK_SOURCE and len(replay.requests) == 2  # failure cached
    assert TOKEN not in caplog.text and "no intensity for DE" in caplog.text


def test_retry_recovers_from_one_failure(api: tuple[str, Replay], monkeypatch: pytest.MonkeyPatch) -> None:
    url, replay = api
    replay.set("/carbon-intensity/latest", (503, {}), (200, EM_DE))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert em_provider(url).current("DE").source == "electricitymaps"


def test_unreachable_api_times_out_into_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    r = em_provider(f"http://127.0.0.1:{port}").current("FR")
    assert (r.grams_per_kwh, r.source) == (56.0, FALLBACK_SOURCE)


def test_uk_neso_actual_then_forecast_and_other_zones_from_table(api: tuple[str, Replay]) -> None:
    url, replay = api
    replay.set("/intensity", (200, NESO))
    p = provider_from_config({"provider": "uk-neso", "url": url, "cache_ttl": 0})
    r = p.current("GB")
    assert (r.grams_per_kwh, r.source) == (133.0, "uk-neso")
    no_actual = {"data": [{"from": "x", "to": "y", "intensity": {"forecast": 150, "actual": None, "index": "low"}}]}
    replay.set("/intensity", (200, no_actual))
    assert p.current("GB").grams_per_kwh == 150.0
    assert p.current("DE").source == "table:owid-2023"  # NESO covers Great Britain only
    replay.set("/intensity", (200, {"data": []}))
    assert p.current("GB").source == FALLBACK_SOURCE


def test_static_and_file_providers(tmp_path: Path) -> None:
    s = provider_from_config({"provider": "static", "static_grams_per_kwh": 123})
    assert (s.current("DE").grams_per_kwh, s.current("DE").source) == (123.0, "static")
    f = tmp_path / "zones.yml"
    f.write_text("DE: 250\nfr: 40\n")
    p = provider_from_config({"provider": "file", "file": str(f)})
    assert (p.current("FR").grams_per_kwh, p.current("FR").source) == (40.0, "file")
    assert p.current("PL").source == "table:owid-2023"
    f.write_text("DE: [oops]\n")
    import os

    os.utime(f, (1, 1))
    assert isinstance(p, FileProvider)
    assert p.current("DE").source == FALLBACK_SOURCE and "DE" in p.last_error


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"provider": "carbon-magic"}, "intensity.provider"),
        ({"provider": "static"}, "intensity.static_grams_per_kwh"),
        ({"provider": "static", "static_grams_per_kwh": "dirty"}, "intensity.static_grams_per_kwh"),
        ({"provider": "file"}, "intensity.file"),
        ({"provider": "uk-neso", "timeout": "soon"}, "intensity.timeout"),
        ({"provider": "uk-neso", "retries": -1}, "intensity.retries"),
        ({"intensity": {"zonez": ["DE"]}}, "intensity.zonez"),
    ],
)
def test_bad_config_names_the_key(cfg: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        provider_from_config(cfg)


def test_settings_zones_and_prices() -> None:
    s = settings_from_config({"intensity": {"zones": ["de", "FR"], "price_per_kwh": 0.3, "currency": "EUR"}}, "DE")
    assert s.zones == ["DE", "FR"]
    assert s.prices == {"DE": (0.3, "EUR"), "FR": (0.3, "EUR")}
    assert settings_from_config(None).zones == ["world"]
    with pytest.raises(ConfigError, match="intensity.currency"):
        settings_from_config({"currency": "euro"})
    with pytest.raises(ConfigError, match="intensity.price_per_kwh"):
        settings_from_config({"price_per_kwh": {"DE": "cheap"}})


def test_collector_publishes_every_zone_and_price(api: tuple[str, Replay], monkeypatch: pytest.MonkeyPatch) -> None:
    url, replay = api
    replay.set("/carbon-intensity/latest", (200, EM_DE))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    feed = IntensityFeed(["DE", "PL"], em_provider(url))
    feed.refresh_once()  # the background refresh; a scrape only reads what it left
    coll = IntensityCollector(feed, {"DE": (0.31, "EUR")})
    reg = CollectorRegistry()
    reg.register(coll)
    g = reg.get_sample_value
    assert g("carbonwatch_grid_carbon_intensity_grams_per_kwh", {"zone": "DE", "source": "electricitymaps"}) == 302
    # the replay answers for DE whatever is asked: a reply for another zone is refused -> the table's value
    assert g("carbonwatch_grid_carbon_intensity_grams_per_kwh", {"zone": "PL", "source": "table:owid-2023"}) == 661.9
    assert g("carbonwatch_electricity_price_per_kwh", {"zone": "DE", "currency": "EUR"}) == 0.31
    assert g("carbonwatch_electricity_price_per_kwh", {"zone": "PL", "currency": "EUR"}) is None
    assert g("carbonwatch_intensity_refresh_success", {"zone": "DE"}) == 1
    assert g("carbonwatch_intensity_refresh_success", {"zone": "PL"}) == 0


def test_collector_from_config_defaults_to_world_table_without_network() -> None:
    reg = CollectorRegistry()
    reg.register(IntensityCollector(feed_from_config(None)))
    assert reg.get_sample_value(
        "carbonwatch_grid_carbon_intensity_grams_per_kwh", {"zone": "world", "source": WORLD_SOURCE}
    ) == 481.0


def test_collector_survives_a_broken_provider() -> None:
    class Broken:
        def current(self, zone: str) -> Any:
            raise RuntimeError("bug")

    feed = IntensityFeed(["FR"], Broken())
    feed.refresh_once()
    reg = CollectorRegistry()
    reg.register(IntensityCollector(feed))
    assert reg.get_sample_value(
        "carbonwatch_grid_carbon_intensity_grams_per_kwh", {"zone": "FR", "source": "table:owid-2023"}
    ) == 56.0
    assert reg.get_sample_value("carbonwatch_intensity_refresh_failures_total", {"zone": "FR"}) == 1


def test_cli_prints_value_and_source(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli_main(["intensity", "--zone", "pl"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PL: 661.9 g CO2e/kWh (source table:owid-2023, at ")
    cfg = tmp_path / "c.yml"
    cfg.write_text("intensity:\n  provider: static\n  static_grams_per_kwh: 99\n  zone: SE\n")
    assert cli_main(["intensity", "--config.file", str(cfg), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["zone"], data["grams_per_kwh"], data["source"]) == ("SE", 99.0, "static")


def test_cli_bad_config_exits_2_naming_the_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text("intensity:\n  provider: nope\n")
    assert cli_main(["intensity", "--config.file", str(cfg)]) == 2
    assert "intensity.provider" in capsys.readouterr().err
    assert cli_main(["intensity", "--config.file", str(tmp_path / "missing.yml")]) == 2


def test_zone_check_knows_countries_sub_zones_world_and_the_intensity_files_zones(tmp_path: Path) -> None:
    for zone in ("DE", "fr", "US-CAL-CISO", "DK-DK1", "world", "", None):
        assert zone_known(zone), zone
    assert not zone_known("XX") and not zone_known("QQ-NORTH")
    values = tmp_path / "values.yml"
    values.write_text("XX: 120\n")
    file_cfg = {"intensity": {"provider": "file", "file": str(values)}}
    assert zone_known("xx", file_cfg) and "XX" in known_zones(file_cfg)
    assert zone_known("anything", {"intensity": {"provider": "static", "static_grams_per_kwh": 99}})
    assert zone_known("UK", {"intensity": {"provider": "uk-neso"}}) and not zone_known("UK")
    with pytest.raises(ConfigError, match=r"^zone: 'XX' is not a known grid zone .*--list-zones"):
        check_zone("XX")
    assert check_zone("de") == "DE"


def test_cli_unknown_zone_is_an_error_that_says_how_to_find_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["intensity", "--zone", "XX"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "--zone: 'XX' is not a known grid zone" in err
    assert "`carbonwatch intensity --list-zones`" in err and "--allow-unknown" in err


def test_cli_allow_unknown_answers_the_world_average_flagged_as_a_fallback(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["intensity", "--zone", "XX", "--allow-unknown"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"XX: {WORLD_GRAMS_PER_KWH:g} g CO2e/kWh (FALLBACK: unknown zone, this is the world average")
    assert cli_main(["intensity", "--zone", "XX", "--allow-unknown", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["grams_per_kwh"], data["known_zone"], data["source"]) == (WORLD_GRAMS_PER_KWH, False, WORLD_SOURCE)
    assert "world average" in data["fallback"]
    assert cli_main(["intensity", "--zone", "DE", "--json"]) == 0  # a known zone is not flagged
    data = json.loads(capsys.readouterr().out)
    assert data["known_zone"] is True and "fallback" not in data


def test_cli_lists_the_known_zones(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli_main(["intensity", "--list-zones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["world", "World", "average"]
    assert "DE     Germany" in lines and "FR     France" in lines
    values = tmp_path / "values.yml"
    values.write_text("XX: 120\n")
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"intensity:\n  provider: file\n  file: {values}\n")
    assert cli_main(["intensity", "--config.file", str(cfg), "--list-zones", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"zone": "XX", "name": "intensity file"} in rows
    assert cli_main(["intensity", "--config.file", str(cfg), "--zone", "XX"]) == 0  # known through the file
    assert capsys.readouterr().out.startswith("XX: 120 g CO2e/kWh (source file")


def test_cli_accepts_a_zone_the_live_provider_answers_for(
    api: tuple[str, Replay], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, replay = api
    replay.set("/carbon-intensity/latest", (200, {**EM_DE, "zone": "QQ-NORTH", "carbonIntensity": 77}))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"intensity:\n  provider: electricitymaps\n  url: {url}\n  retries: 0\n")
    assert cli_main(["intensity", "--config.file", str(cfg), "--zone", "QQ-NORTH"]) == 0
    assert capsys.readouterr().out.startswith("QQ-NORTH: 77 g CO2e/kWh (source electricitymaps")
    replay.set("/carbon-intensity/latest", (404, {"error": "unknown zone"}))
    assert cli_main(["intensity", "--config.file", str(cfg), "--zone", "QQ-SOUTH"]) == 2
    assert "'QQ-SOUTH' is not a known grid zone" in capsys.readouterr().err


@pytest.mark.parametrize("path, expect", config_error_cases("intensity"), ids=lambda v: getattr(v, "stem", ""))
def test_a_mistake_in_the_section_is_an_error_never_the_table(path: Path, expect: str) -> None:
    section = yaml.safe_load(path.read_text())
    with pytest.raises(ConfigError, match=None) as exc:
        provider_from_config(section)
    assert expect in str(exc.value)
    with pytest.raises(ConfigError):  # the same inside a whole config
        provider_from_config({"zone": "DE", "intensity": section})


def test_a_whole_config_without_the_section_gives_only_its_zone() -> None:
    assert isinstance(provider_from_config({"zone": "DE", "cpu": {"source": "model"}}), TableProvider)
    assert settings_from_config({"zone": "FR", "run": {}}).zones == ["FR"]


def test_each_module_of_the_intensity_package_stays_small() -> None:
    import carbonwatch.intensity as pkg

    for f in Path(pkg.__file__).parent.glob("*.py"):
        assert len(f.read_text().splitlines()) < 500, f
