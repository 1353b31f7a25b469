"""`python -m carbonwatch.dashboards [DIR]`: write the dashboards' JSON; `--check URL`: run every query."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from carbonwatch.dashboards import check_live, default_values, write_all


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m carbonwatch.dashboards", description=__doc__)
    parser.add_argument("dest", nargs="?", default="grafana/dashboards", help="directory for the JSON files")
    parser.add_argument(
        "--check", metavar="PROMETHEUS_URL", help="instead of writing, run every panel's query against this Prometheus"
    )
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                        help="a variable's value for --check (e.g. run_id=abc); default .* for the others")
    args = parser.parse_args(argv)
    if not args.check:
        for path in write_all(Path(args.dest)):
            print(path)
        return 0
    values = default_values()
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--var {item!r}: expected NAME=VALUE")
        values[name] = value
    failed = 0
    for q, err, n in check_live(args.check, values):
        status = f"ERROR {err}" if err else (f"{n} series" if n else "no data")
        failed += bool(err)
        print(f"{q.dashboard:22} {q.panel[:40]:40} {status}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
