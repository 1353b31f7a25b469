"""The Grafana dashboards, as code, on grafana-foundation-sdk (the build matching the Grafana the stack pins).

`python -m carbonwatch.dashboards [DIR]` (or `make dashboards`) writes grafana/dashboards/*.json; the committed
JSON is this package's output (tests/monitoring/test_dashboards.py checks it, validates it against Grafana's
dashboard schema and parses every query offline). One module per dashboard; `panels` and `board` hold what
they share; `checks` substitutes variables, renders links and runs the live check through carbonwatch.promql.

This is a repository tool: nothing the installed commands run imports it, and its SDK comes with the `test`
extra (`pip install -e '.[test]'`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

try:
    import grafana_foundation_sdk  # noqa: F401
except ImportError as exc:  # installed without the test extra
    raise ImportError("carbonwatch.dashboards needs grafana-foundation-sdk==1769699590!11.3.0 (Python 3.11+): "
                      "pip install -e '.[test]'") from exc

from carbonwatch.dashboards import budgets, fleet, ledger, node, run
from carbonwatch.dashboards.board import Board
from carbonwatch.dashboards.checks import BUILTINS, Query, label_values_query, substitute, variables_in
from carbonwatch.dashboards.checks import check_live as _check_live
from carbonwatch.dashboards.checks import queries as _queries
from carbonwatch.promql import Prometheus

__all__ = ["BUILTINS", "DASHBOARDS", "Board", "Prometheus", "Query", "check_live", "default_values", "definitions",
           "label_values_query", "queries", "substitute", "variables_in", "write_all"]

DASHBOARDS: dict[str, Callable[[], Board]] = {
    "fleet": fleet.dashboard,
    "run": run.dashboard,
    "node": node.dashboard,
    "budgets": budgets.dashboard,
    "ledger": ledger.dashboard,
}


def definitions() -> dict[str, Board]:
    """`{file stem: Board}` for every dashboard."""
    return {name: make() for name, make in DASHBOARDS.items()}


def write_all(dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, b in definitions().items():
        path = dest / f"{name}.json"
        path.write_text(b.json(), encoding="utf-8")
        written.append(path)
    return written


def queries() -> list[Query]:
    """Every panel target and every variable (as the PromQL its label_values() amounts to) of every dashboard."""
    return _queries(definitions().values())


def default_values() -> dict[str, str]:
    """A value for every variable: a custom variable's default, `.*` for the others."""
    return {v.name: v.default or ".*" for b in definitions().values() for v in b.variables}


def check_live(prometheus_url: str, values: dict[str, str], timeout: float = 10.0) -> list[tuple[Query, str, int]]:
    """Run every query, variables substituted, as an instant query: `(query, error or "", result count)`."""
    return _check_live(Prometheus(prometheus_url, timeout, what="dashboards --check"), queries(), values)
