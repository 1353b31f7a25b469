"""The dashboards' queries and links as Grafana fills them in: template variables substituted, label_values()
variables as the PromQL they amount to, data links interpolated; and the live check of every query through
carbonwatch.promql (the one Prometheus client).

It works on built dashboards (`Board`, the SDK's typed model) or on their JSON (links).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from carbonwatch.errors import CarbonwatchError
from carbonwatch.promql import Prometheus

if TYPE_CHECKING:
    from carbonwatch.dashboards.board import Board

# Grafana's built-in variables, as a check substitutes them.
BUILTINS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
    "__range_s": "3600",
    "datasource": "carbonwatch-prometheus",
}
_VAR = re.compile(r"\$\{([\w.]+)(?::(\w+))?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?:(?P<sel>.+),\s*)?(?P<label>\w+)\)$", re.S)


@dataclass(frozen=True)
class Query:
    dashboard: str  # uid
    panel: str  # title, or "variable NAME"
    expr: str
    gpu_only: bool = False  # no data on a node without GPUs
    ledger_only: bool = False  # no data where no ledger runs


def variables_in(expr: str) -> set[str]:
    return {m.group(1) or m.group(3) for m in _VAR.finditer(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with `$name`, `${name}` and `${name:fmt}` replaced from `values`, then Grafana's built-ins.
    Raises KeyError naming a variable that has no value."""
    merged = {**BUILTINS, **values}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name not in merged:
            raise KeyError(name)
        return merged[name]

    return _VAR.sub(repl, expr)


def label_values_query(definition: str) -> str:
    """The PromQL a `label_values(selector, label)` variable amounts to: one series per value."""
    m = _LABEL_VALUES.match(definition.strip())
    if not m:
        raise ValueError(f"not a label_values() query: {definition!r}")
    sel = m.group("sel") or '{__name__=~".+"}'
    return f"group by ({m.group('label')}) ({sel})"


def percentencode(value: str) -> str:
    """Grafana's `:percentencode` format (encodeURIComponent, plus `!'()*`): only A-Z a-z 0-9 - _ . ~ stay."""
    return quote(value, safe="-_.~")


def interpolate_link(url: str, values: Mapping[str, str]) -> str:
    """A data or dashboard link's URL as Grafana fills it in: `${name:percentencode}` percent-encoded, `${name}`
    and `$name` as they are (names like `__data.fields.run_id`, `__value.raw`, `__url_time_range`).
    Raises KeyError naming a variable without a value and ValueError for a format Grafana would not apply."""

    def repl(m: re.Match[str]) -> str:
        name, fmt = m.group(1) or m.group(3), m.group(2)
        if name not in values:
            raise KeyError(name)
        if fmt not in (None, "percentencode"):
            raise ValueError(f"format {fmt!r} in {url!r}: links use :percentencode")
        return percentencode(values[name]) if fmt else values[name]

    return _VAR.sub(repl, url)


def _maps(value: object) -> list[Mapping[str, object]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _map(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def links_in(dashboard: Mapping[str, object]) -> Iterator[tuple[str, str]]:
    """`(panel title, url)` for every link of a dashboard's JSON: panel links, field links, override links."""
    for link in _maps(dashboard.get("links")):
        if link.get("url"):
            yield "dashboard", str(link["url"])
    for p in _maps(dashboard.get("panels")):
        where = str(p.get("title", ""))
        fc = _map(p.get("fieldConfig"))
        found = _maps(p.get("links")) + _maps(_map(fc.get("defaults")).get("links"))
        for o in _maps(fc.get("overrides")):
            for prop in _maps(o.get("properties")):
                if prop.get("id") == "links":
                    found += _maps(prop.get("value"))
        yield from ((where, str(link["url"])) for link in found if link.get("url"))


def queries(boards: Iterable[Board]) -> list[Query]:
    """Every panel target and every variable of every dashboard (variables as label_values_query())."""
    out: list[Query] = []
    for b in boards:
        for v in b.variables:
            if v.kind == "query":
                gpu = "carbonwatch_gpu_" in v.query  # values only where there are GPUs
                out.append(Query(b.uid, f"variable {v.name}", label_values_query(v.query), gpu, v.ledger_only))
        for p in b.model.panels or []:
            if not isinstance(p, dm.Panel):
                continue  # a row
            title = p.title or ""
            for t in p.targets or []:
                if not isinstance(t, pm.Dataquery):
                    raise TypeError(f"{b.uid}: {title}: not a Prometheus query: {t!r}")
                out.append(Query(b.uid, title, t.expr, title in b.gpu_only, title in b.ledger_only))
    return out


def check_live(prometheus: Prometheus, qs: Iterable[Query], values: Mapping[str, str]) -> list[tuple[Query, str, int]]:
    """Run every query, variables substituted, as an instant query: `(query, error or "", result count)`."""
    results: list[tuple[Query, str, int]] = []
    for q in qs:
        try:
            results.append((q, "", len(prometheus.query(substitute(q.expr, values)))))
        except CarbonwatchError as exc:
            results.append((q, str(exc), 0))
    return results
