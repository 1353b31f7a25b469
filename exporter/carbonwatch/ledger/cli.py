"""`carbonwatch ledger serve ...` and `carbonwatch ledger export ...` (docs/ledger.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from urllib.parse import urlencode

import requests

from carbonwatch.durations import parse_duration
from carbonwatch.errors import ConfigError, NetworkError
from carbonwatch.ledger import db
from carbonwatch.ledger.api import parse_time
from carbonwatch.ledger.queries import GROUPS
from carbonwatch.ledger.service import ServeConfig, serve
from carbonwatch.promql import reason


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="ledger_command", metavar="serve|export")
    s = sub.add_parser("serve", help="keep the ledger: sync from Prometheus, serve /metrics and the API")
    s.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus-compatible query API")
    s.add_argument("--database", default=db.default_url(), metavar="URL",
                   help="sqlite:///path/ledger.db (default %(default)s) or postgresql://user:pw@host/db")
    s.add_argument("--web.listen-address", dest="listen", default=":9863", metavar="HOST:PORT")
    s.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                   help="TLS and basic auth, exporter-toolkit format (as the exporter)")
    s.add_argument("--sync.interval", dest="interval", default="30s")
    s.add_argument("--sync.delay", dest="delay", default="15s",
                   help="newest sample time synced = now - delay (samples still being ingested are not missed)")
    s.add_argument("--sync.chunk", dest="chunk", default="1h", help="catch-up time chunk")
    s.add_argument("--sync.start", dest="start", metavar="DATE",
                   help="first start on an empty database: sync from DATE (default: the oldest data held)")
    s.add_argument("--replica-label", dest="replica_labels", action="append", metavar="NAME",
                   help="label dropped so an HA pair counts once (repeatable; default replica, prometheus_replica)")
    s.add_argument("--metrics.window", dest="window", default="7d",
                   help="runs ended longer ago are not served on /metrics")
    s.add_argument("--prometheus.basic-auth", dest="basic_auth", metavar="USER:PASSWORD_FILE",
                   help="basic auth for the query API: user and a file holding the password")
    s.add_argument("--prometheus.bearer-token-file", dest="bearer_token_file", metavar="FILE")
    s.add_argument("--prometheus.ca-file", dest="ca_file", metavar="FILE")
    s.add_argument("--prometheus.timeout", dest="timeout", default="60s")
    s.add_argument("--log.level", dest="log_level", default="info", choices=("debug", "info", "warning", "error"))
    e = sub.add_parser("export", help="print usage from a running ledger as CSV or JSON")
    e.add_argument("--ledger", required=True, metavar="URL", help="the ledger, e.g. http://127.0.0.1:9863")
    e.add_argument("--from", dest="start", metavar="DATE")
    e.add_argument("--to", dest="end", metavar="DATE")
    e.add_argument("--group-by", dest="group_by", required=True, choices=GROUPS)
    e.add_argument("--format", default="csv", choices=("csv", "json"))
    e.add_argument("--timeout", default="60s")


def serve_config(a: argparse.Namespace) -> ServeConfig:
    basic = None
    if a.basic_auth:
        user, sep, path = a.basic_auth.partition(":")
        if not sep or not user:
            raise ConfigError("--prometheus.basic-auth: expected USER:PASSWORD_FILE")
        try:
            with open(path, encoding="utf-8") as f:
                basic = (user, f.read().strip())
        except OSError as exc:
            raise ConfigError(f"--prometheus.basic-auth: cannot read {path}: {exc.strerror}") from None
    interval = parse_duration(a.interval, "--sync.interval")
    chunk = parse_duration(a.chunk, "--sync.chunk")
    if interval <= 0 or chunk < 15:
        raise ConfigError("--sync.interval must be positive and --sync.chunk at least 15s")
    db.engine_url(a.database)  # a bad URL is named before anything starts
    return ServeConfig(
        prometheus=a.prometheus, database=a.database, listen=a.listen, web_config_file=a.web_config_file,
        interval=interval, delay=parse_duration(a.delay, "--sync.delay"), chunk=chunk,
        start=parse_time(a.start, "--sync.start") if a.start else None,
        replica_labels=tuple(a.replica_labels or ("replica", "prometheus_replica")),
        window=parse_duration(a.window, "--metrics.window"), basic_auth=basic,
        bearer_token_file=a.bearer_token_file, ca_file=a.ca_file,
        timeout=parse_duration(a.timeout, "--prometheus.timeout"))


def export(a: argparse.Namespace) -> int:
    params = {"group_by": a.group_by, "format": a.format}
    for name, value in (("from", a.start), ("to", a.end)):
        if value:
            params[name] = str(parse_time(value, f"--{name}"))
    base = a.ledger if "://" in a.ledger else f"http://{a.ledger}"
    url = f"{base.rstrip('/')}/api/v1/export?{urlencode(params)}"
    try:
        r = requests.get(url, timeout=parse_duration(a.timeout, "--timeout"))
    except requests.RequestException as exc:
        raise NetworkError(f"--ledger: cannot reach the ledger at {base}: {reason(exc)}") from None
    if r.status_code == 400:
        raise ConfigError(f"the ledger refused the export: {r.json().get('error', r.text)}")
    if r.status_code != 200:
        raise NetworkError(f"--ledger: {base} answered HTTP {r.status_code}; is it a carbonwatch ledger?")
    sys.stdout.write(r.text)
    return 0


def main(args: argparse.Namespace) -> int:
    if args.ledger_command == "serve":
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return serve(serve_config(args))
    if args.ledger_command == "export":
        return export(args)
    raise ConfigError("ledger: say `serve` or `export` (carbonwatch ledger --help)")
