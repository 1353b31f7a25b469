"""Flags, env and config file of `carbonwatch exporter`: bad input exits 2 naming what is wrong."""

import os
import subprocess
import sys

import pytest

from carbonwatch.cli import build_parser
from carbonwatch.durations import format_duration, parse_duration
from carbonwatch.errors import ConfigError
from carbonwatch.node.config import ExporterConfig, apply_mapping, parse_listen_address
from carbonwatch.node.exporter import config_from_args
from tests.support import config_error_cases


def args(*argv):
    argv = ["exporter", *argv]
    return build_parser(argv).parse_args(argv)


def test_defaults_match_the_contract():
    cfg = config_from_args(args(), environ={})
    assert cfg.listen_address == ":9860"
    assert parse_listen_address(cfg.listen_address) == ("0.0.0.0", 9860)
    assert cfg.sample_interval == 1.0
    assert cfg.zone == "world"
    assert all(cfg.collectors.values())
    assert (cfg.gpu.counter_interval, cfg.gpu.process_interval) == (5.0, 5.0)


def test_precedence_file_env_flags(tmp_path):
    f = tmp_path / "c.yml"
    f.write_text("zone: FR\nsample_interval: 5s\nweb: {listen_address: ':1111'}\ncollectors: {gpu: false}\n")
    cfg = config_from_args(args("--config.file", str(f)), environ={})
    assert (cfg.zone, cfg.sample_interval, cfg.listen_address, cfg.collectors["gpu"]) == ("FR", 5.0, ":1111", False)
    env = {"CARBONWATCH_ZONE": "DE", "CARBONWATCH_SAMPLE_INTERVAL": "2s", "CARBONWATCH_COLLECTOR_GPU": "true"}
    cfg = config_from_args(args("--config.file", str(f)), environ=env)
    assert (cfg.zone, cfg.sample_interval, cfg.collectors["gpu"]) == ("DE", 2.0, True)
    cfg = config_from_args(args("--config.file", str(f), "--zone", "PL", "--no-collector.gpu",
                                "--web.listen-address", "127.0.0.1:0"), environ=env)
    assert (cfg.zone, cfg.collectors["gpu"], cfg.listen_address) == ("PL", False, "127.0.0.1:0")


@pytest.mark.parametrize(
    "doc, key",
    [
        ("zonee: DE", "zonee: unknown key"),
        ("zone: 'not a zone!'", "zone:"),
        ("sample_interval: fast", "sample_interval:"),
        ("sample_interval: 10ms", "sample_interval: must be at least"),
        ("collectors: {gpu: maybe}", "collectors.gpu: expected bool"),
        ("collectors: {tpu: true}", "collectors.tpu: unknown key"),
        ("cpu: {tdp_watts: -5}", "cpu.tdp_watts: must be > 0"),
        ("cpu: {source: magic}", "cpu.source: must be one of"),
        ("cpu: {min_watts_per_cpu: 1}", "cpu.min_watts_per_cpu and cpu.max_watts_per_cpu"),
        ("process: {top_n: -1}", "process.top_n"),
        ("process: {run_linger: soon}", "process.run_linger"),
        ("gpu: {counter_interval: often}", "gpu.counter_interval:"),
        ("gpu: {process_interval: -1s}", "gpu.process_interval:"),
        ("web: {listen_address: 'nope'}", "web.listen_address"),
        ("memory: 3", "memory: expected a mapping"),
        ("- a\n- b", "top level"),
    ],
)
def test_bad_config_names_the_key(tmp_path, doc, key):
    f = tmp_path / "bad.yml"
    f.write_text(doc)
    with pytest.raises(ConfigError) as exc:
        config_from_args(args("--config.file", str(f)), environ={})
    assert key in str(exc.value)


def test_bad_env_and_flags_name_the_variable():
    with pytest.raises(ConfigError, match="CARBONWATCH_COLLECTOR_CPU"):
        config_from_args(args(), environ={"CARBONWATCH_COLLECTOR_CPU": "perhaps"})
    with pytest.raises(ConfigError, match="--sample-interval"):
        config_from_args(args("--sample-interval", "1 minute"), environ={})
    with pytest.raises(ConfigError, match="port 70000"):
        config_from_args(args("--web.listen-address", ":70000"), environ={})


def test_cli_exits_2_with_the_message(tmp_path):
    f = tmp_path / "bad.yml"
    f.write_text("process: {top_n: many}\n")
    r = subprocess.run([sys.executable, "-m", "carbonwatch", "exporter", "--config.file", str(f)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "process.top_n" in r.stderr
    r = subprocess.run([sys.executable, "-m", "carbonwatch", "exporter", "--config.file", str(tmp_path / "none.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_gpu_read_intervals_reach_the_nvml_source(tmp_path):
    from carbonwatch.node.sampler import build_sources

    f = tmp_path / "c.yml"
    f.write_text("gpu: {counter_interval: 0s, process_interval: 2s}\ncollectors: {intensity: false}\n")
    cfg = config_from_args(args("--config.file", str(f)), environ={})
    nvml = build_sources(cfg).nvml
    assert nvml is not None and (nvml.counter_seconds, nvml.process_seconds) == (0.0, 2.0)


def test_durations_round_trip():
    for text, secs in [("500ms", 0.5), ("15s", 15), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("3", 3)]:
        assert parse_duration(text) == secs
    assert format_duration(300) == "5m" and format_duration(0.5) == "500ms" and format_duration(90) == "90s"
    with pytest.raises(ConfigError):
        parse_duration("5 m")


def test_apply_mapping_keeps_intensity_section_for_its_module():
    cfg = apply_mapping(ExporterConfig(), {"intensity": {"provider": "table"}})
    assert cfg.intensity == {"provider": "table"}


@pytest.mark.parametrize("path, expect", config_error_cases("exporter"), ids=lambda v: getattr(v, "stem", ""))
def test_every_section_names_the_bad_key_and_the_file(path, expect):
    with pytest.raises(ConfigError) as exc:
        config_from_args(args("--config.file", str(path)), environ={})
    assert expect in str(exc.value) and str(path) in str(exc.value)


@pytest.mark.parametrize(
    "argv, env, doc, what",
    [
        (["--zone", "XX"], {}, "", "--zone"),
        ([], {"CARBONWATCH_ZONE": "XX"}, "", "CARBONWATCH_ZONE"),
        ([], {}, "zone: XX\n", "zone (in "),
        ([], {}, "intensity: {zone: XX}\n", "intensity.zone (in "),
        ([], {}, "intensity: {zones: [DE, XX]}\n", "intensity.zones (in "),
    ],
)
def test_an_unknown_zone_is_refused_pointing_to_list_zones(tmp_path, argv, env, doc, what):
    f = tmp_path / "c.yml"
    f.write_text(doc or "sample_interval: 1s\n")
    with pytest.raises(ConfigError) as exc:
        config_from_args(args("--config.file", str(f), *argv), environ=env)
    assert str(exc.value).startswith(what) and "'XX' is not a known grid zone" in str(exc.value)
    assert "--list-zones" in str(exc.value) and "--allow-unknown" in str(exc.value)


def test_the_exporter_exits_2_on_an_unknown_zone(tmp_path):
    r = subprocess.run([sys.executable, "-m", "carbonwatch", "exporter", "--zone", "XX", "--web.listen-address",
                        "127.0.0.1:0", "--storage.path", str(tmp_path / "state")],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "CARBONWATCH_CONFIG_FILE": ""})
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("carbonwatch exporter: --zone: 'XX' is not a known grid zone")


def test_unknown_zone_passes_with_allow_unknown_or_a_provider_that_knows_it():
    assert config_from_args(args("--zone", "XX", "--allow-unknown"), environ={}).zone == "XX"
    cfg = config_from_args(args(), environ={"CARBONWATCH_ZONE": "de"})
    assert cfg.zone == "DE"
