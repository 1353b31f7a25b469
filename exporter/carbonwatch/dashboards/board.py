"""A dashboard from rows of panels: variables, the 24-column layout, ids, and the settings every carbonwatch
dashboard shares (fixed uid, the `carbonwatch` tag and link menu, the `${datasource}` variable, read-only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as dm

from carbonwatch.dashboards.panels import DATASOURCE_UID, DS, Cell

TAG = "carbonwatch"
GRID_WIDTH = 24


@dataclass(frozen=True)
class Var:
    """A template variable: `label_values(...)` (kind "query") or a comma-separated list (kind "custom")."""

    name: str
    label: str
    query: str
    multi: bool = True
    include_all: bool = True
    kind: str = "query"
    default: str = ""  # custom variables: the value selected by default
    ledger_only: bool = False  # values only where a ledger runs


@dataclass
class Row:
    title: str
    cells: list[Cell]


@dataclass
class Board:
    """A built dashboard: the SDK's model, with what the checks need to know about its variables and panels."""

    uid: str
    model: dm.Dashboard
    variables: list[Var]
    gpu_only: set[str] = field(default_factory=set)  # panel titles
    ledger_only: set[str] = field(default_factory=set)

    def json(self) -> str:
        return json.dumps(self.model, cls=JSONEncoder, indent=2, ensure_ascii=False) + "\n"


def _variable(v: Var) -> cogbuilder.Builder[dm.VariableModel]:
    if v.kind == "custom":
        values = [x.strip() for x in v.query.split(",")]
        chosen = v.default or values[0]
        options = [dm.VariableOption(selected=x == chosen, text=x, value=x) for x in values]
        return (db.CustomVariable(v.name).label(v.label).values(v.query).multi(v.multi).include_all(v.include_all)
                .current(dm.VariableOption(selected=True, text=chosen, value=chosen)).options(options))
    if v.kind != "query" or not v.query.startswith("label_values("):
        raise ValueError(f"variable {v.name}: a query variable is a label_values() query, got {v.query!r}")
    q = (db.QueryVariable(v.name).label(v.label).datasource(DS).query(v.query)
         .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
         .multi(v.multi).include_all(v.include_all).regex(""))
    return q.all_value(".*") if v.include_all else q


def _datasource_variable() -> db.DatasourceVariable:
    current = dm.VariableOption(selected=True, text="Prometheus (carbonwatch)", value=DATASOURCE_UID)
    return (db.DatasourceVariable("datasource").label("Data source").type("prometheus").current(current)
            .multi(False).include_all(False).regex(""))


def _layout(builder: db.Dashboard, rows: list[Row]) -> None:
    """Rows one under the other, each row's panels left to right, wrapping at the grid's width."""
    pid, y = 1, 0
    for row in rows:
        builder.with_row(db.Row(row.title).id(pid).grid_pos(dm.GridPos(h=1, w=GRID_WIDTH, x=0, y=y)))
        pid, y = pid + 1, y + 1
        x, line_h = 0, 0
        for cell in row.cells:
            if not 0 < cell.w <= GRID_WIDTH:
                raise ValueError(f"panel {cell.title!r}: width {cell.w} does not fit the grid")
            if x + cell.w > GRID_WIDTH:
                x, y, line_h = 0, y + line_h, 0
            builder.with_panel(_placed(cell.panel, pid, dm.GridPos(h=cell.h, w=cell.w, x=x, y=y)))
            pid, x, line_h = pid + 1, x + cell.w, max(line_h, cell.h)
        y += line_h


def _placed(panel: cogbuilder.Builder[dm.Panel], pid: int, pos: dm.GridPos) -> cogbuilder.Builder[dm.Panel]:
    model = panel.build()
    model.id_val, model.grid_pos = pid, pos
    return panel


def _builtin_annotations() -> db.AnnotationQuery:
    return (db.AnnotationQuery().name("Annotations & Alerts").type("dashboard").built_in(1).enable(True)
            .hide(True).icon_color("rgba(0, 211, 255, 1)")
            .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --")))


def _menu() -> db.DashboardLink:
    return (db.DashboardLink(TAG).type(dm.DashboardLinkType.DASHBOARDS).tags([TAG]).as_dropdown(True)
            .keep_time(True).include_vars(False).target_blank(False).icon("external link"))


def board(uid: str, title: str, description: str, variables: list[Var], rows: list[Row],
          time_from: str = "now-6h") -> Board:
    """The dashboard `uid` with a panel per cell of `rows`; panel ids and grid positions are assigned here."""
    b = (db.Dashboard(title).uid(uid).description(description).tags([TAG]).timezone("browser").readonly()
         .tooltip(dm.DashboardCursorSync.CROSSHAIR).version(1).refresh("30s").time(time_from, "now")
         .timepicker(db.TimePicker()).fiscal_year_start_month(0).live_now(False)
         .annotation(_builtin_annotations()).link(_menu()).with_variable(_datasource_variable()))
    for v in variables:
        b = b.with_variable(_variable(v))
    _layout(b, rows)
    cells = [c for r in rows for c in r.cells]
    titles = [c.title for c in cells]
    if len(set(titles)) != len(titles):
        raise ValueError(f"{uid}: two panels share a title (the checks name panels by title)")
    return Board(uid, b.build(), variables, {c.title for c in cells if c.gpu_only},
                 {c.title for c in cells if c.ledger_only})
