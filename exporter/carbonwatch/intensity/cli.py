"""`carbonwatch intensity [--zone Z] [--config.file F] [--json] [--allow-unknown] [--list-zones]`: the current
grid carbon intensity of a zone and where it came from.

A zone with no value of its own (not in the bundled table, nor in the configured intensity file) is an
error (exit 2) that says how to find valid ones; with --allow-unknown it is answered with the world
average, flagged as a fallback in the line and in the JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

from carbonwatch import yamlfile
from carbonwatch.intensity.providers import (
    FALLBACK_SOURCE,
    WORLD_SOURCE,
    bundled_table,
    check_zone,
    intensity_section,
    known_zones,
    normalise_zone,
    provider_from_config,
    section_zone,
    zone_known,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zone", help="grid zone, e.g. DE, FR, GB, US-CAL-CISO (default: the config's, else world)")
    parser.add_argument("--config.file", dest="config_file", help="carbonwatch YAML config (section `intensity`)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of a line")
    parser.add_argument("--allow-unknown", action="store_true",
                        help="answer an unknown zone with the world average, flagged as a fallback, "
                        "instead of an error")
    parser.add_argument("--list-zones", action="store_true", help="list the known zones and exit")


def load_config(path: str | None) -> dict[str, object] | None:
    if not path:
        return None
    data: dict[str, object] = yamlfile.load(path, "--config.file")
    return data or None


def list_zones(cfg: dict[str, object] | None, as_json: bool) -> int:
    table = bundled_table()
    rows = []
    for z in known_zones(cfg):
        row = table.get(z)
        name = "World average" if z == "world" else (row.country if row else "intensity file")
        rows.append({"zone": z, "name": name})
    if as_json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['zone']:<6} {r['name']}")
        print("Sub-zones (US-CAL-CISO, DK-DK1, ...) use their country's value unless a live provider knows them.")
    return 0


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config_file)
    if getattr(args, "list_zones", False):
        return list_zones(cfg, args.json)
    requested: str | None = args.zone or section_zone(intensity_section(cfg))
    what = "--zone" if args.zone else "intensity.zone"
    zone = normalise_zone(requested)
    provider = provider_from_config(cfg)
    known = zone_known(requested, cfg)
    reading = None
    if not known and intensity_section(cfg).get("provider") == "electricitymaps":
        reading = provider.current(zone)  # a live provider may know zones the table does not
        known = reading.source not in (WORLD_SOURCE, FALLBACK_SOURCE)
    if not known and not args.allow_unknown:
        check_zone(requested, cfg, what=what, hint="or pass --allow-unknown to use the world average for it")
    if reading is None:
        reading = provider.current(zone)
    when = dt.datetime.fromtimestamp(reading.fetched_at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.json:
        out: dict[str, object] = {
            "zone": reading.zone,
            "grams_per_kwh": reading.grams_per_kwh,
            "source": reading.source,
            "fetched_at": when,
            "known_zone": known,
        }
        if not known:
            out["fallback"] = "world average: the zone is unknown"
        print(json.dumps(out))
    elif known:
        print(f"{reading.zone}: {reading.grams_per_kwh:g} g CO2e/kWh (source {reading.source}, at {when})")
    else:
        print(
            f"{reading.zone}: {reading.grams_per_kwh:g} g CO2e/kWh (FALLBACK: unknown zone, this is the world average; "
            f"source {reading.source}, at {when})"
        )
    return 0
