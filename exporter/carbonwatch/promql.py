"""The one Prometheus HTTP API client: instant queries for the report, `carbonwatch job`, the run summary
in node mode, the demo and the dashboards' panel check; raw samples (range selectors) and series lookups for
the ledger.

Errors say what failed: an unreachable or non-Prometheus server is a NetworkError naming the URL; a query
Prometheus rejects is a ConfigError naming the query (it came from our input).
"""

from __future__ import annotations

import math
from typing import TypedDict

import requests

from carbonwatch.errors import ConfigError, NetworkError

DEFAULT_URL = "http://127.0.0.1:9090"


class PromEntry(TypedDict, total=False):
    """One entry of a query result: `value` [t, "v"] in a vector (or a scalar), `values` in a matrix."""

    metric: dict[str, str]
    value: tuple[float, str]
    values: list[tuple[float, str]]


class Prometheus:
    def __init__(self, url: str = DEFAULT_URL, timeout: float = 10.0, what: str = "--prometheus",
                 session: requests.Session | None = None) -> None:
        url = url if "://" in url else f"http://{url}"
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{what}: {url!r} is not an http(s) URL")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.what = what
        self.session = session or requests.Session()

    def query(self, expr: str, at: float | None = None,
              extra: dict[str, str] | None = None) -> list[PromEntry]:
        """The result of an instant query: a list of {"metric": {...}, "value": [t, "v"]} (vector) entries, or
        {"metric": {...}, "values": [[t, "v"], ...]} (matrix) for a range selector. `extra`: more form
        parameters (e.g. VictoriaMetrics' `nocache`), ignored by servers that do not know them."""
        data = {"query": expr, **(extra or {})}
        if at is not None:
            data["time"] = f"{at:.3f}"
        answer = self._call("/api/v1/query", data, expr)
        if not isinstance(answer, dict):
            raise NetworkError(f"{self.what}: {self.url} answered {expr!r} without a result object")
        data_ = answer
        result = data_.get("result", [])
        if data_.get("resultType") in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def raw(self, expr: str, at: float, extra: dict[str, str] | None = None) -> list[PromEntry]:
        """The raw samples of a range selector `metric[d]` evaluated at `at`: matrix entries. A server that
        answers something other than a matrix is a NetworkError (it does not serve raw samples)."""
        result = self.query(expr, at, extra)
        for entry in result:
            if not isinstance(entry, dict) or not isinstance(entry.get("values"), list):
                raise NetworkError(f"{self.what}: {self.url} answered {expr!r} without raw samples (a matrix)")
        return result

    def series(self, match: str, start: float, end: float) -> list[dict[str, str]]:
        """The label sets of the series matching `match` with data in [start, end] (as precise as the
        server's index: Prometheus answers per block, VictoriaMetrics per day, both erring early)."""
        data = {"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        result = self._call("/api/v1/series", data, match)
        return [dict(s) for s in result] if isinstance(result, list) else []

    def _call(self, path: str, data: dict[str, str], expr: str) -> object:
        try:
            r = self.session.post(f"{self.url}{path}", data=data, timeout=self.timeout)
        except requests.RequestException as exc:
            raise NetworkError(f"{self.what}: cannot reach Prometheus at {self.url}: {reason(exc)}") from None
        try:
            body = r.json()
        except ValueError:
            raise NetworkError(
                f"{self.what}: {self.url} answered HTTP {r.status_code} without JSON; is it Prometheus?"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", r.status_code) if isinstance(body, dict) else r.status_code
            if r.status_code in (401, 403) or r.status_code >= 500:
                raise NetworkError(f"{self.what}: {self.url} answered HTTP {r.status_code} to {expr!r}: {error}")
            raise ConfigError(f"Prometheus at {self.url} rejected {expr!r}: {error}")
        if path != "/api/v1/query":
            return body.get("data")
        return body.get("data") or {}

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        """The value of a one-series result; None when there is no series or the value is not finite."""
        result = self.query(expr, at)
        if not result:
            return None
        value = float(result[0]["value"][1])
        return value if math.isfinite(value) else None

    def by_label(self, expr: str, label: str, at: float | None = None) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr, at)}


STACK_HINT = " (is the stack up? `carbonwatch stack status`)"


def reason(exc: requests.RequestException, hint: str = STACK_HINT) -> str:
    """What went wrong with a request, in words without the exception's text (it may hold a URL)."""
    if isinstance(exc, requests.ConnectionError):
        return "connection refused or host unreachable" + hint
    if isinstance(exc, requests.Timeout):
        return "timed out"
    return type(exc).__name__
