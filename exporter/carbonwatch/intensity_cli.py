"""`carbonwatch intensity [--zone Z] [--config.file F] [--json]`: the current grid carbon intensity of a
zone and where it came from."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

import yaml

from carbonwatch.errors import ConfigError
from carbonwatch.intensity import intensity_section, normalise_zone, provider_from_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zone", help="grid zone, e.g. DE, FR, GB, US-CAL-CISO (default: the config's, else world)")
    parser.add_argument("--config.file", dest="config_file", help="carbonwatch YAML config (section `intensity`)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a line")


def load_config(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config.file: cannot read {path} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config.file: {path} is not valid YAML ({exc})") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"--config.file: {path} must hold a mapping")
    return data


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config_file)
    zone = normalise_zone(args.zone or intensity_section(cfg).get("zone"))
    reading = provider_from_config(cfg).current(zone)
    when = dt.datetime.fromtimestamp(reading.fetched_at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.json:
        print(
            json.dumps(
                {
                    "zone": reading.zone,
                    "grams_per_kwh": reading.grams_per_kwh,
                    "source": reading.source,
                    "fetched_at": when,
                }
            )
        )
    else:
        print(f"{reading.zone}: {reading.grams_per_kwh:g} g CO2e/kWh (source {reading.source}, at {when})")
    return 0
