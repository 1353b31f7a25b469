"""The ledger's HTTP API (JSON by default, `?format=csv` for CSV): runs with filters and paging, one run
with its breakdown and quality notes, usage per group and period, the export `carbonwatch ledger export`
reads, the OpenAPI document, and the health and readiness endpoints. Routes for node/web.py's server.
"""

from __future__ import annotations

import calendar
import csv
import datetime as dt
import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import unquote

from sqlalchemy import Engine

from carbonwatch.errors import ConfigError
from carbonwatch.ledger import queries
from carbonwatch.ledger.openapi import document
from carbonwatch.ledger.sync import Health
from carbonwatch.node.web import Route

Query = Mapping[str, list[str]]
Reply = tuple[int, bytes, str]
JSON = "application/json"
CSV = "text/csv; charset=utf-8"
RUN_COLUMNS = ("run_id", "user", "project", "model", "team", "status", "start", "end", "energy_joules",
               "emissions_grams", "cost", "currency", "estimated", "budget_grams")
RUN_PARAMS = ("user", "project", "model", "team", "zone", "node", "status", "from", "to", "limit", "offset", "format")


def parse_time(value: str, what: str) -> float:
    """Unix seconds from `2026-12-01`, `2026-12-01T10:00:00Z` (RFC 3339) or a number of Unix seconds."""
    text = value.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return float(calendar.timegm(dt.date.fromisoformat(text).timetuple()))
        d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{what}: {value!r} is not a date (2026-12-01, 2026-12-01T10:00:00Z or Unix seconds)") \
            from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return d.timestamp()


def _one(q: Query, name: str) -> str | None:
    v = q.get(name)
    return v[-1] if v else None


def _int(q: Query, name: str, default: int, top: int) -> int:
    v = _one(q, name)
    if v is None:
        return default
    if not v.isdigit() or int(v) > top:
        raise ConfigError(f"{name}: {v!r} is not a whole number from 0 to {top}")
    return int(v)


def _check(q: Query, allowed: Sequence[str]) -> None:
    for k in q:
        if k not in allowed and k != "*":
            raise ConfigError(f"unknown parameter {k!r} (known: {', '.join(allowed)})")
    fmt = _one(q, "format")
    if fmt not in (None, "json", "csv"):
        raise ConfigError(f"format: {fmt!r} is not json or csv")


def _time(q: Query, name: str) -> float | None:
    v = _one(q, name)
    return None if v is None else parse_time(v, name)


def to_csv(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    return buf.getvalue().encode("utf-8")


def _json(code: int, body: object) -> Reply:
    return code, (json.dumps(body, separators=(",", ":"), allow_nan=False) + "\n").encode(), JSON


class Api:
    def __init__(self, engine: Engine, health: Health, version: str) -> None:
        self.engine, self.health, self.version = engine, health, version

    def routes(self) -> dict[str, Route]:
        return {"/api/v1/runs": self.runs, "/api/v1/runs/*": self.run, "/api/v1/usage": self.usage,
                "/api/v1/export": self.export, "/api/v1/openapi.json": self.openapi,
                "/-/healthy": self.healthy, "/-/ready": self.ready}  # fmt: skip

    def _guard(self, q: Query, allowed: Sequence[str], work: Callable[[], Reply]) -> Reply:
        try:
            _check(q, allowed)
            return work()
        except ConfigError as exc:
            return _json(400, {"error": str(exc)})

    @property
    def cursor(self) -> float:
        return self.health.cursor or 0.0

    def runs(self, q: Query) -> Reply:
        def work() -> Reply:
            f = queries.RunFilter(
                **{k: _one(q, k) for k in ("user", "project", "model", "team", "status", "zone", "node")},
                start=_time(q, "from"), end=_time(q, "to"),
                limit=_int(q, "limit", 100, queries.MAX_LIMIT), offset=_int(q, "offset", 0, 2**31))
            with self.engine.connect() as conn:
                out = queries.list_runs(conn, f, self.cursor)
            if _one(q, "format") == "csv":
                return 200, to_csv(out["runs"], RUN_COLUMNS), CSV
            return _json(200, out)
        return self._guard(q, RUN_PARAMS, work)

    def run(self, q: Query) -> Reply:
        def work() -> Reply:
            run_id = unquote(_one(q, "*") or "", errors="strict")
            with self.engine.connect() as conn:
                out = queries.one_run(conn, run_id, self.cursor)
            if out is None:
                return _json(404, {"error": f"no run {run_id!r} in the ledger"})
            if _one(q, "format") == "csv":
                cols = ("instance", "component", "zone", "energy_joules", "emissions_grams", "estimated_joules",
                        "first_sample", "last_sample")
                return 200, to_csv(out["nodes"], cols), CSV
            return _json(200, out)
        return self._guard(q, ("format",), work)

    def usage(self, q: Query) -> Reply:
        def work() -> Reply:
            group = _one(q, "group_by") or "project"
            period = _one(q, "period") or "day"
            with self.engine.connect() as conn:
                rows = queries.usage(conn, group, period, _time(q, "from"), _time(q, "to"))
            if _one(q, "format") == "csv":
                return 200, to_csv(rows, _usage_columns(group)), CSV
            return _json(200, {"group_by": group, "period": period, "rows": rows})
        return self._guard(q, ("group_by", "period", "from", "to", "format"), work)

    def export(self, q: Query) -> Reply:
        def work() -> Reply:
            group = _one(q, "group_by") or "run"
            start, end = _time(q, "from"), _time(q, "to")
            with self.engine.connect() as conn:
                cols: Sequence[str] = RUN_COLUMNS
                rows: Sequence[Mapping[str, object]]
                if group == "run":
                    rows = queries.export_runs(conn, start, end, self.cursor)
                else:
                    rows = queries.usage(conn, group, "all", start, end)
                    cols = _usage_columns(group, period=False)
            if _one(q, "format") == "csv":
                return 200, to_csv(rows, cols), CSV
            return _json(200, {"group_by": group, "rows": rows})
        return self._guard(q, ("group_by", "from", "to", "format"), work)

    def openapi(self, _q: Query) -> Reply:
        return 200, json.dumps(document(self.version), indent=1).encode(), JSON

    def healthy(self, _q: Query) -> Reply:
        return 200, b"Healthy.\n", "text/plain; charset=utf-8"

    def ready(self, _q: Query) -> Reply:
        if not self.health.ready:
            return 503, b"Not ready: the database is not open yet.\n", "text/plain; charset=utf-8"
        return 200, b"Ready.\n", "text/plain; charset=utf-8"


def _usage_columns(group: str, period: bool = True) -> tuple[str, ...]:
    return (group,) + (("period",) if period else ()) + (
        "energy_joules", "emissions_grams", "cost", "currency", "runs", "estimated_joules")
