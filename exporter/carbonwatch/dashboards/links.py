"""Links to the Run dashboard. Every run id in a link goes through Grafana's `:percentencode` format, so a run
id with `/ = & # + ?` or spaces opens its own run (tests/monitoring/test_dashboards.py renders each link)."""

from __future__ import annotations

from carbonwatch.dashboards.panels import Link

RUN_UID = "carbonwatch-run"
RUN_PATH = f"/d/{RUN_UID}/carbonwatch-run"


def run_url(run_id_ref: str) -> str:
    """The Run dashboard at the run named by `run_id_ref`, a Grafana variable such as `__data.fields.run_id`,
    keeping the time range."""
    return f"{RUN_PATH}?var-run_id=${{{run_id_ref}:percentencode}}&${{__url_time_range}}"


def run_column(title: str = "Open the run") -> Link:
    """A link on a table's run_id column (the cell's own raw value)."""
    return Link(title, run_url("__value.raw"), field="run_id")


def run_series(title: str = "Open the run") -> Link:
    """A link on every value of a panel whose series carry a run_id label (bar gauges, stats)."""
    return Link(title, run_url("__field.labels.run_id"))
