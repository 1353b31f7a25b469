"""Panel and query builders shared by every dashboard, on grafana-foundation-sdk's typed builders.

A panel is made by one call naming its title, unit, description and queries; the look of each kind (stat,
time series, bar gauge, table, state timeline) is decided here once, so the dashboards only say what to show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Self, TypeVar

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

DATASOURCE_UID = "carbonwatch-prometheus"  # grafana/provisioning/datasources/prometheus.yml
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Units (Grafana unit ids).
WATT = "watt"
JOULE = "joule"
GRAMS = "massg"
RATIO = "percentunit"
SECONDS = "s"
DATETIME = "dateTimeAsIso"
INTENSITY = "suffix: gCO₂e/kWh"
GRAMS_PER_SECOND = "suffix: gCO₂e/s"
COUNT = "short"
NONE = "none"


@dataclass(frozen=True)
class Q:
    """One PromQL query of a panel: a range query drawn over time, or an instant query (`table` for rows)."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


@dataclass(frozen=True)
class Link:
    """A link on the values of one field of a panel (a table column, or every value when `field` is "")."""

    title: str
    url: str
    field: str = ""


@dataclass
class Cell:
    """A panel and its place: width and height on the 24-column grid, and what its data needs."""

    panel: cogbuilder.Builder[dm.Panel]
    w: int = 12
    h: int = 8
    gpu_only: bool = False  # no data on a node without GPUs
    ledger_only: bool = False  # no data where no ledger runs

    @property
    def title(self) -> str:
        return self.panel.build().title or ""


class _Common(Protocol):
    def title(self, title: str) -> Self: ...
    def description(self, description: str) -> Self: ...
    def datasource(self, datasource: dm.DataSourceRef) -> Self: ...
    def unit(self, unit: str) -> Self: ...
    def with_target(self, target: cogbuilder.Builder[cogvariants.Dataquery]) -> Self: ...
    def data_links(self, links: list[cogbuilder.Builder[dm.DashboardLink]]) -> Self: ...
    def override_by_name(self, name: str, properties: list[dm.DynamicConfigValue]) -> Self: ...


P = TypeVar("P", bound=_Common)


def target(q: Q, ref: str) -> prometheus.Dataquery:
    t = (prometheus.Dataquery().expr(q.expr).ref_id(ref).datasource(DS).editor_mode(pm.QueryEditorMode.CODE)
         .legend_format(q.legend or "__auto"))
    t = t.instant() if q.instant else t.range()
    return t.format(pm.PromQueryFormat.TABLE if q.table else pm.PromQueryFormat.TIME_SERIES)


def _common(b: P, title: str, unit: str, description: str, queries: tuple[Q, ...], links: tuple[Link, ...]) -> P:
    if not queries:
        raise ValueError(f"panel {title!r} has no query")
    b = b.title(title).description(description).datasource(DS).unit(unit)
    for i, q in enumerate(queries):
        b = b.with_target(target(q, chr(ord("A") + i)))
    whole: list[cogbuilder.Builder[dm.DashboardLink]] = [
        db.DashboardLink(k.title).type(dm.DashboardLinkType.LINK).url(k.url) for k in links if not k.field]
    if whole:
        b = b.data_links(whole)
    for k in links:
        if k.field:
            value = [{"title": k.title, "url": k.url, "targetBlank": False}]
            b = b.override_by_name(k.field, [dm.DynamicConfigValue(id_val="links", value=value)])
    return b


def _reduce_last() -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def stat_panel(title: str, unit: str, description: str, *queries: Q, w: int = 6, h: int = 5,
               text: cm.BigValueTextMode = cm.BigValueTextMode.AUTO, graph: bool = True,
               background: bool = False, thresholds: tuple[tuple[float, str], ...] = (),
               links: tuple[Link, ...] = ()) -> Cell:
    # The first step is the base colour (Grafana reads it as from -Infinity; the schema wants a number).
    steps = [dm.Threshold(value=0, color="green")] + [dm.Threshold(value=v, color=c) for v, c in thresholds]
    b = (stat.Panel().color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
         .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps))
         .reduce_options(_reduce_last()).text_mode(text)
         .color_mode(cm.BigValueColorMode.BACKGROUND if background else cm.BigValueColorMode.VALUE)
         .graph_mode(cm.BigValueGraphMode.AREA if graph else cm.BigValueGraphMode.NONE)
         .justify_mode(cm.BigValueJustifyMode.AUTO).orientation(cm.VizOrientation.AUTO))
    return Cell(_common(b, title, unit, description, queries, links), w, h)


def timeseries_panel(title: str, unit: str, description: str, *queries: Q, w: int = 12, h: int = 8,
                     stack: bool = False) -> Cell:
    mode = cm.StackingMode.NORMAL if stack else cm.StackingMode.NONE
    b = (timeseries.Panel().color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
         .draw_style(cm.GraphDrawStyle.LINE).line_width(1).fill_opacity(20 if stack else 0)
         .show_points(cm.VisibilityMode.NEVER).span_nulls(False)
         .stacking(cb.StackingConfig().mode(mode).group("A"))
         .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                 .placement(cm.LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"]))
         .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)))
    return Cell(_common(b, title, unit, description, queries, ()), w, h)


def bargauge_panel(title: str, unit: str, description: str, *queries: Q, w: int = 12, h: int = 8,
                   lcd: bool = False, links: tuple[Link, ...] = ()) -> Cell:
    mode = cm.BarGaugeDisplayMode.LCD if lcd else cm.BarGaugeDisplayMode.GRADIENT
    b = (bargauge.Panel().color_scheme(db.FieldColor().mode(dm.FieldColorModeId.CONTINUOUS_GR_YL_RD))
         .reduce_options(_reduce_last()).display_mode(mode).orientation(cm.VizOrientation.HORIZONTAL)
         .show_unfilled(True))
    return Cell(_common(b, title, unit, description, queries, links), w, h)


def table_panel(title: str, unit: str, description: str, *queries: Q, w: int = 12, h: int = 8,
                links: tuple[Link, ...] = (), sort_desc: str = "",
                columns: tuple[tuple[str, str, str], ...] = ()) -> Cell:
    """A table of instant queries merged on their labels; `columns`: (field, shown name, unit) of value
    columns (`Value #A` for query A when there are several), `sort_desc` a shown name to sort by."""
    b = (table.Panel().show_header(True).cell_height(cm.TableCellHeight.SM)
         .footer(cb.TableFooterOptions().show(False).reducer(["sum"]))
         .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
         .with_transformation(dm.DataTransformerConfig(
             id_val="organize", options={"excludeByName": {"Time": True, "__name__": True}})))
    if sort_desc:
        b = b.sort_by([cb.TableSortByFieldState().display_name(sort_desc).desc(True)])
    for name, shown, column_unit in columns:
        b = b.override_by_name(name, [dm.DynamicConfigValue(id_val="displayName", value=shown),
                                      dm.DynamicConfigValue(id_val="unit", value=column_unit)])
    return Cell(_common(b, title, unit, description, queries, links), w, h)


def timeline_panel(title: str, unit: str, description: str, *queries: Q, w: int = 12, h: int = 5) -> Cell:
    b = (statetimeline.Panel().color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
         .show_value(cm.VisibilityMode.NEVER).merge_values(True).row_height(0.8))
    return Cell(_common(b, title, unit, description, queries, ()), w, h)
