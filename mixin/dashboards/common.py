"""Building blocks of the generated dashboards, on grafana-foundation-sdk's builders.

Every panel and every target reads the `${datasource}` variable; every query is written with
mixin.promql's selectors, so it carries the configured $cluster and $job matchers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders.common import (
    GraphThresholdsStyleConfig,
    LineStyle,
    ReduceDataOptions,
    StackingConfig,
    TableSortByFieldState,
    VizLegendOptions,
)
from grafana_foundation_sdk.builders.dashboard import Dashboard as DashboardBuilder
from grafana_foundation_sdk.builders.dashboard import (
    DashboardLink,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BarGaugeValueMode,
    BigValueColorMode,
    BigValueGraphMode,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    StackingMode,
    TableBarGaugeCellOptions,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    DynamicConfigValue,
    Panel,
    RowPanel,
    Threshold,
    ThresholdsMode,
    VariableModel,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from mixin.config import MixinConfig
from mixin.promql import dashboard_matchers, selector

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# The variable query editor's own refId, as Grafana saves it.
VARIABLE_REF_ID = "PrometheusVariableQueryEditor-VariableQuery"
TAGS = ["tcp", "time-wait", "timewait-exporter"]

Steps = tuple[tuple[float | None, str], ...]


def port_steps(config: MixinConfig) -> Steps:
    """Port utilisation colours, the alerts' thresholds: orange from warning, red from
    critical (also the dashed lines of threshold_lines panels)."""
    t = config.thresholds
    return ((None, "green"), (t.port_warning, "orange"), (t.port_critical, "red"))


def limit_steps(warning: float) -> Steps:
    """A ratio to a hard limit (TIME-WAIT / tcp_max_tw_buckets, rate / sustainable): orange
    from its alert's threshold, red at the limit itself."""
    return ((None, "green"), (warning, "orange"), (1.0, "red"))


def pct(ratio: float) -> str:
    """0.8 -> "80 %", for panel descriptions that quote a threshold."""
    return f"{100 * ratio:g} %"


def by(config: MixinConfig, *labels: str) -> str:
    """`by (<cluster label>, labels...)`: aggregations keep the cluster apart when configured."""
    keep = [config.cluster_label, *labels] if config.cluster_label else list(labels)
    return f"by ({', '.join(keep)})"


def on(config: MixinConfig, *labels: str) -> str:
    """`on (<cluster label>, labels...)` for vector matching."""
    return "on" + by(config, *labels).removeprefix("by")


def sel(
    config: MixinConfig, metric: str, *extra: str, instance: bool = True, netns: bool = False
) -> str:
    """A metric selector with the dashboard's $cluster/$job (and $instance, $netns) matchers."""
    return selector(metric, dashboard_matchers(config, instance=instance, netns=netns), *extra)


POD = 'k8s_pod_name=~"$pod"'


# --- targets and panels -------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = "__auto"


def _ref(index: int) -> str:
    return chr(ord("A") + index)


def _targets(targets: Sequence[Target], *, instant: bool, table_format: bool) -> list[Dataquery]:
    built = []
    for index, spec in enumerate(targets):
        query = (
            Dataquery()
            .expr(spec.expr)
            .legend_format(spec.legend)
            .ref_id(_ref(index))
            .datasource(DATASOURCE)
        )
        query = query.instant() if instant else query.range()
        if table_format:
            query = query.format(PromQueryFormat.TABLE)
        built.append(query)
    return built


def _steps(steps: Sequence[tuple[float | None, str]]) -> ThresholdsConfig:
    return (
        ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


@dataclass(frozen=True)
class Look:
    """Field settings shared by the panel kinds."""

    unit: str = "short"
    min: float | None = 0
    max: float | None = None
    decimals: float | None = None
    steps: Sequence[tuple[float | None, str]] = ((None, "green"),)
    # Regex of series names drawn as dashed lines (capacity, limits).
    dashed: str = ""
    # Show the thresholds as lines on a time series.
    threshold_lines: bool = False
    stack: bool = False
    width: int = 12
    height: int = 8


B = TypeVar("B", timeseries.Panel, stat.Panel, bargauge.Panel)


def _common(panel: B, title: str, description: str, look: Look) -> B:
    panel = (
        panel.title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(look.unit)
        .thresholds(_steps(look.steps))
        .span(look.width)
        .height(look.height)
    )
    if look.min is not None:
        panel = panel.min(look.min)
    if look.max is not None:
        panel = panel.max(look.max)
    if look.decimals is not None:
        panel = panel.decimals(look.decimals)
    return panel


def graph(
    title: str, description: str, targets: Sequence[Target], look: Look = Look()
) -> timeseries.Panel:
    panel = _common(timeseries.Panel(), title, description, look).targets(
        list(_targets(targets, instant=False, table_format=False))
    )
    panel = (
        panel.legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
            .sort_by("Max")
            .sort_desc(True)
        )
        .fill_opacity(10 if look.stack else 0)
        .line_width(1)
    )
    if look.stack:
        panel = panel.stacking(StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(30)
    if look.threshold_lines:
        panel = panel.thresholds_style(
            GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.DASHED)
        )
    if look.dashed:
        panel = panel.override_by_regexp(
            look.dashed,
            [
                DynamicConfigValue(
                    id_val="custom.lineStyle", value=LineStyle().fill("dash").dash([10, 10]).build()
                ),
                DynamicConfigValue(id_val="custom.fillOpacity", value=0),
            ],
        )
    return panel


def single(
    title: str, description: str, targets: Sequence[Target], look: Look = Look()
) -> stat.Panel:
    """A stat panel of instant values, coloured by the thresholds."""
    return (
        _common(stat.Panel(), title, description, look)
        .targets(list(_targets(targets, instant=True, table_format=False)))
        .color_mode(BigValueColorMode.BACKGROUND)
        .graph_mode(BigValueGraphMode.NONE)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def bars(
    title: str, description: str, targets: Sequence[Target], look: Look = Look()
) -> bargauge.Panel:
    """A horizontal bar gauge of instant values, one bar per series."""
    return (
        _common(bargauge.Panel(), title, description, look)
        .targets(list(_targets(targets, instant=True, table_format=False)))
        .orientation(VizOrientation.HORIZONTAL)
        .display_mode(BarGaugeDisplayMode.GRADIENT)
        .show_unfilled(True)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


@dataclass(frozen=True)
class Column:
    """A value column of a table: one target, its header, unit and colouring."""

    target: Target
    header: str
    unit: str = "short"
    steps: Sequence[tuple[float | None, str]] = ()
    gauge: bool = False
    max: float | None = None
    # value -> (text, colour), e.g. tcp_tw_reuse's 0/1/2.
    mappings: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    columns: Sequence[Column]
    # Label columns, in this order, first; other labels are hidden.
    labels: Sequence[str]
    sort_by: str = ""
    width: int = 24
    height: int = 8
    extra_hidden: Sequence[str] = field(default_factory=tuple)


def grid(config: MixinConfig, title: str, description: str, spec: Table) -> table.Panel:
    """An instant table: one row per label set, one column per target, merged."""
    labels = [config.cluster_label, *spec.labels] if config.cluster_label else list(spec.labels)
    single_value = len(spec.columns) == 1
    value_names = (
        ["Value"] if single_value else [f"Value #{_ref(i)}" for i in range(len(spec.columns))]
    )
    index = {name: position for position, name in enumerate([*labels, *value_names])}
    rename = {value: column.header for value, column in zip(value_names, spec.columns, strict=True)}
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(spec.width)
        .height(spec.height)
        .targets(list(_targets([c.target for c in spec.columns], instant=True, table_format=True)))
        .with_transformation(DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            DataTransformerConfig(
                id_val="organize",
                options={
                    # Every label the table does not show (job, __name__, ...) and Time.
                    "excludeByName": {"Time": True, "job": True, "__name__": True}
                    | dict.fromkeys(spec.extra_hidden, True),
                    "indexByName": index,
                    "renameByName": rename,
                },
            )
        )
        .filterable(True)
    )
    if spec.sort_by:
        panel = panel.sort_by([TableSortByFieldState().display_name(spec.sort_by).desc(True)])
    for column in spec.columns:
        properties = [DynamicConfigValue(id_val="unit", value=column.unit)]
        if column.steps:
            properties.append(
                DynamicConfigValue(id_val="thresholds", value=_steps(column.steps).build())
            )
            properties.append(
                DynamicConfigValue(
                    id_val="custom.cellOptions",
                    value=TableBarGaugeCellOptions(
                        mode=BarGaugeDisplayMode.BASIC, value_display_mode=BarGaugeValueMode.TEXT
                    )
                    if column.gauge
                    else {"type": "color-text"},
                )
            )
        if column.mappings:
            options = {
                value: {"text": text, "color": color, "index": position}
                for position, (value, (text, color)) in enumerate(column.mappings.items())
            }
            properties.append(
                DynamicConfigValue(id_val="mappings", value=[{"type": "value", "options": options}])
            )
            if not column.steps:
                properties.append(
                    DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"})
                )
        if column.max is not None:
            properties.append(DynamicConfigValue(id_val="min", value=0))
            properties.append(DynamicConfigValue(id_val="max", value=column.max))
        panel = panel.override_by_name(column.header, properties)
    return panel


# --- variables ----------------------------------------------------------------------------


def _query_variable(name: str, label: str, query: str, description: str) -> QueryVariable:
    return (
        QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query({"query": query, "refId": VARIABLE_REF_ID})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )


def _all(variable: QueryVariable, multi: bool = True) -> QueryVariable:
    """Offer "All" as the regex .*, which also matches an empty label (the host's pod name)."""
    return (
        variable.multi(multi)
        .include_all(True)
        .all_value(".*")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def variables(config: MixinConfig, *, many_instances: bool) -> list[Builder[VariableModel]]:
    """datasource, job, [cluster,] instance, netns, pod. $job comes before $cluster so that
    every query but $job's own carries a job matcher."""
    found: list[Builder[VariableModel]] = [
        DatasourceVariable("datasource")
        .label("Data source")
        .description("The Prometheus that scrapes timewait-exporter.")
        .type("prometheus")
        .current(VariableOption(selected=True, text="default", value="default")),
        _query_variable(
            "job",
            "Job",
            "label_values(tcptw_build_info, job)",
            "The job label of the exporter's targets (mixin/config.py: job).",
        )
        .current(VariableOption(selected=True, text=config.job, value=config.job))
        .multi(False)
        .include_all(False),
    ]
    if config.cluster_label:
        job_only = selector("tcptw_build_info", 'job=~"$job"')
        found.append(
            _all(
                _query_variable(
                    "cluster",
                    "Cluster",
                    f"label_values({job_only}, {config.cluster_label})",
                    f"The {config.cluster_label} label (mixin/config.py: cluster_label).",
                ),
                multi=many_instances,
            )
        )
    instance = _query_variable(
        "instance",
        "Node",
        f"label_values({sel(config, 'up', instance=False)}, instance)",
        "The exporter's instance label (the node name with the ServiceMonitor).",
    )
    instance = _all(instance) if many_instances else instance.multi(False).include_all(False)
    found += [
        instance,
        _all(
            _query_variable(
                "netns",
                "Network namespace",
                f"label_values({sel(config, 'tcptw_netns_info')}, netns)",
                'The netns label: "host", "<k8s namespace>/<pod>", an ip netns name, '
                "or ino-<inode>.",
            )
        ),
        _all(
            _query_variable(
                "pod",
                "Pod",
                f"label_values({sel(config, 'tcptw_netns_info', netns=True)}, k8s_pod_name)",
                "The pod behind a namespace (tcptw_netns_info's k8s_pod_name); filters the panels "
                "that carry pod labels.",
            )
        ),
    ]
    return found


# --- the dashboard ------------------------------------------------------------------------


def dashboard(
    config: MixinConfig,
    *,
    uid: str,
    title: str,
    description: str,
    many_instances: bool,
    sections: Sequence[tuple[str, Sequence[Builder[Panel]]]],
) -> dict[str, Any]:
    builder = (
        DashboardBuilder(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .readonly()
        .time("now-3h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .variables(variables(config, many_instances=many_instances))
        .link(
            DashboardLink("TIME-WAIT dashboards")
            .type(DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )
    for row_title, panels in sections:
        builder = builder.with_row(Row(row_title))
        for panel in panels:
            builder = builder.with_panel(panel)
    model = builder.build()
    for number, built in enumerate(_walk(model.panels or []), start=1):
        built.id_val = number
    document: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(model))
    return document


def _walk(panels: Sequence[Panel | RowPanel | Any]) -> Iterator[Panel | RowPanel]:
    for panel in panels:
        if isinstance(panel, Panel | RowPanel):
            yield panel
        if isinstance(panel, RowPanel):
            yield from _walk(panel.panels)


def legend(config: MixinConfig, text: str) -> str:
    """A legend that names the cluster first when there can be several."""
    return f"{{{{{config.cluster_label}}}}} {text}" if config.cluster_label else text
