"""A lint of the generated Grafana dashboards, in the spirit of Grafana's dashboard-linter:
a datasource variable that every panel and target reads, the $job (and $cluster) matchers in
every selector, no hard-coded instance or namespace, unique panel ids, a description on
every panel, read-only dashboards, and only metrics the README's catalog or the recording
rules define. Checked for the default config, a single-cluster one and another job."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel

from mixin import dashboards
from mixin.config import DEFAULT, MixinConfig
from mixin.recording import names as recorded_names
from tests.conftest import tool

REPO = Path(__file__).resolve().parent.parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
CONFIGS = {
    "default": DEFAULT,
    "single-cluster": MixinConfig(cluster_label=""),
    "other-job-and-cluster-label": MixinConfig(job="tw", cluster_label="k8s_cluster"),
}
BUILDERS = {"fleet": dashboards.fleet, "node": dashboards.node}
UIDS = {"fleet": "timewait-fleet", "node": "timewait-node"}
# Prometheus' own series, and the exporter's process metrics (in the catalog too).
SYNTHETIC = frozenset({"up"})
# netns values a query may name: the host namespace (its label is fixed, README "The netns
# label"), and "" for host-wide sources (tcptw_source_duration_seconds).
FIXED_NETNS = frozenset({"host", ""})
GRAFANA_VARIABLES = frozenset({"__rate_interval", "__interval", "__range"})

# A selector: metric name followed by its matchers.
SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
# Metric names the mixin uses; each must be followed by {…}.
METRIC = re.compile(
    r"(?<![\w:$])(tcptw_[a-z0-9_]+|tcptw:[a-z0-9_:]+|process_[a-z0-9_]+|up)(?![\w:])"
)
MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
RATE = re.compile(r"\b(?:rate|irate|increase)\((?P<inner>.*?)\[(?P<range>[^\]]+)\]\)")
VARIABLE = re.compile(r"\$\{?(\w+)")


def _configs() -> Iterator[Any]:
    for config_name, config in CONFIGS.items():
        for board in BUILDERS:
            yield pytest.param(config, board, id=f"{board}-{config_name}")


def configs() -> list[Any]:
    return list(_configs())


def build(config: MixinConfig, board: str) -> dict[str, Any]:
    document = BUILDERS[board](config)
    # What generate.py writes: the round trip through JSON must not change anything.
    return dict(json.loads(json.dumps(document, sort_keys=True)))


def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels", []))


def variables(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in document["templating"]["list"]}


def matchers(body: str) -> list[tuple[str, str, str]]:
    found = []
    for part in split_matchers(body):
        match = MATCHER.fullmatch(part)
        assert match, f"unparsable matcher {part!r} in {{{body}}}"
        found.append((match[1], match[2], match[3]))
    return found


def split_matchers(body: str) -> list[str]:
    """Split on commas outside quotes."""
    parts, current, quoted, escaped = [], "", False, False
    for char in body:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append(current)
            current = ""
            continue
        current += char
    if current.strip():
        parts.append(current)
    return parts


def known_metrics() -> frozenset[str]:
    """Every metric the README's catalog table names, the recording rules, and `up`."""
    rows = [line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("|")]
    names = {
        name
        for row in rows
        for name in re.findall(r"`((?:tcptw|process)_[a-z0-9_]+)`", row)
        if not name.endswith("_")
    }
    return frozenset(names) | frozenset(recorded_names(DEFAULT)) | SYNTHETIC


# --- the lint -----------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "board"), configs())
def test_datasource_variable_and_every_panel_and_target_use_it(
    config: MixinConfig, board: str
) -> None:
    document = build(config, board)
    datasource = variables(document)["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    for panel in walk(document["panels"]):
        if panel["type"] == "row":
            assert "targets" not in panel or not panel["targets"]
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no target"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


@pytest.mark.parametrize(("config", "board"), configs())
def test_variables(config: MixinConfig, board: str) -> None:
    document = build(config, board)
    found = variables(document)
    expected = ["datasource", "job", "instance", "netns", "pod"]
    if config.cluster_label:
        expected.insert(2, "cluster")
    assert list(found) == expected
    assert found["job"]["current"]["value"] == config.job
    for name in ("cluster", "netns", "pod"):
        if name in found:
            # "All" is .*, so it also matches series without the label (the host's pod).
            assert found[name]["includeAll"] and found[name]["allValue"] == ".*"
    assert found["instance"]["includeAll"] is (board == "fleet")
    pod_query = dashboards.variable_query(found["pod"])
    assert pod_query.startswith("label_values(tcptw_netns_info{")
    assert pod_query.endswith(", k8s_pod_name)")
    if config.cluster_label:
        assert dashboards.variable_query(found["cluster"]).endswith(f", {config.cluster_label})")


@pytest.mark.parametrize(("config", "board"), configs())
def test_every_selector_carries_job_and_cluster_and_no_hard_coded_instance_or_netns(
    config: MixinConfig, board: str
) -> None:
    document = build(config, board)
    defined = set(variables(document)) | GRAFANA_VARIABLES
    exprs = dashboards.queries(document)
    assert len(exprs) >= 30
    for title, expr in exprs:
        own = title in {"variable job", "variable cluster"}
        for name in VARIABLE.findall(expr):
            assert name in defined, f"{title}: ${name} is not a variable: {expr}"
        bare = [m for m in METRIC.finditer(expr) if not expr[m.end() :].startswith("{")]
        if title == "variable job":  # it offers every job: label_values(tcptw_build_info, job)
            assert expr == "label_values(tcptw_build_info, job)"
            continue
        assert not bare, f"{title}: metric without matchers: {expr}"
        selectors = SELECTOR.findall(expr)
        assert selectors or expr.strip() == "", f"{title}: no selector: {expr}"
        for metric, body in selectors:
            found = matchers(body)
            labels = {label: (op, value) for label, op, value in found}
            assert len(labels) == len(found), f"{title}: a label matched twice: {expr}"
            if title != "variable job":
                assert labels.get("job") == ("=~", "$job"), f"{title}: {metric} lacks $job"
            if config.cluster_label:
                if not own:
                    assert labels.get(config.cluster_label) == ("=~", "$cluster"), (
                        f"{title}: {metric} lacks $cluster"
                    )
            else:
                assert "cluster" not in expr, f"{title}: cluster without a cluster label"
            if "instance" in labels:
                assert labels["instance"] == ("=~", "$instance"), f"{title}: hard-coded instance"
            elif not own:
                assert title.startswith("variable instance"), f"{title}: {metric} lacks $instance"
            if "netns" in labels:
                op, value = labels["netns"]
                assert (op, value) == ("=~", "$netns") or (op == "=" and value in FIXED_NETNS), (
                    f"{title}: hard-coded netns {value!r}"
                )
            if "k8s_pod_name" in labels:
                assert labels["k8s_pod_name"] == ("=~", "$pod"), f"{title}: hard-coded pod"
        # No literal address or port anywhere (a node, a pod IP, a destination).
        assert not re.search(r"\d+\.\d+\.\d+\.\d+|:\d{2,5}\b", expr), f"{title}: literal address"


@pytest.mark.parametrize(("config", "board"), configs())
def test_metrics_exist_and_rates_use_rate_interval(config: MixinConfig, board: str) -> None:
    known = known_metrics()
    assert {"tcptw_sockets", "tcptw_netns_info", "process_cpu_seconds_total"} <= known
    used = set()
    for title, expr in dashboards.queries(build(config, board)):
        used |= set(METRIC.findall(expr))
        for metric, _ in SELECTOR.findall(expr):
            assert metric in known, f"{title}: {metric} is neither in README.md nor recorded"
        for match in RATE.finditer(expr):
            assert match["range"] == "$__rate_interval", f"{title}: {match[0]}"
        assert expr.count("(") == expr.count(")"), f"{title}: unbalanced: {expr}"
    assert used - known == set()


def test_the_dashboards_read_the_recording_rules_for_fleet_queries() -> None:
    fleet = " ".join(expr for _, expr in dashboards.queries(build(DEFAULT, "fleet")))
    assert set(recorded_names(DEFAULT)) <= set(METRIC.findall(fleet))
    # The fleet never joins tcptw_netns_info itself: the recording rules carry the pod labels.
    assert "group_left" not in fleet


@pytest.mark.parametrize(("config", "board"), configs())
def test_panels_ids_descriptions_layout_and_read_only(config: MixinConfig, board: str) -> None:
    document = build(config, board)
    assert document["editable"] is False
    assert document["uid"] == UIDS[board]
    panels = list(walk(document["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    titles = [panel["title"] for panel in panels if panel["type"] != "row"]
    assert len(titles) == len(set(titles)), "panel titles must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        if panel["type"] != "row":
            # What a bad value means and what to do: a sentence or two at least.
            assert len(panel.get("description", "")) >= 80, f"{panel['title']}: no description"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


@pytest.mark.parametrize("board", BUILDERS)
def test_the_sdk_decodes_the_checked_in_json_unchanged(board: str) -> None:
    """Grafana's own schema types (the SDK's models) read every field back as written."""
    document = json.loads((REPO / "grafana" / f"{board}.json").read_text())
    register_default_plugins()
    decoded = DashboardModel.from_json(document)
    assert json.loads(JSONEncoder(sort_keys=True).encode(decoded)) == document


@pytest.mark.parametrize(("config", "board"), configs())
def test_deterministic(config: MixinConfig, board: str) -> None:
    assert json.dumps(build(config, board), sort_keys=True) == json.dumps(
        build(config, board), sort_keys=True
    )


@pytest.mark.parametrize("board", BUILDERS)
def test_checked_in_dashboards_are_the_generated_ones(board: str) -> None:
    checked_in = json.loads((REPO / "grafana" / f"{board}.json").read_text())
    assert checked_in == build(DEFAULT, board), "run `python -m mixin`"


# --- queries and substitute ---------------------------------------------------------------


def test_queries_lists_every_target_and_query_variable() -> None:
    document = build(DEFAULT, "node")
    listed = dashboards.queries(document)
    targets = [t for p in walk(document["panels"]) for t in p.get("targets", [])]
    query_variables = [v for v in document["templating"]["list"] if v["type"] == "query"]
    assert len(listed) == len(targets) + len(query_variables)
    assert [title for title, _ in listed[len(targets) :]] == [
        f"variable {v['name']}" for v in query_variables
    ]
    assert ("Sockets by state", targets_of(document, "Sockets by state")[0]) in listed


def targets_of(document: dict[str, Any], title: str) -> list[str]:
    return [
        t["expr"] for p in walk(document["panels"]) if p["title"] == title for t in p["targets"]
    ]


def test_substitute() -> None:
    expr = (
        'sum(rate(m{cluster=~"$cluster", job=~"${job}", instance=~"[[instance]]", '
        'netns=~"${netns:regex}", k8s_pod_name=~"$pod"}[$__rate_interval])) '
        "offset $__interval"
    )
    assert dashboards.substitute(expr, {"job": "tw", "instance": "a:1"}) == (
        'sum(rate(m{cluster=~".*", job=~"tw", instance=~"a:1", netns=~".*", '
        'k8s_pod_name=~".*"}[1m])) offset 1m'
    )
    assert dashboards.substitute("x[$__rate_interval]", {"__rate_interval": "5s"}) == "x[5s]"
    for config in CONFIGS.values():
        for board in BUILDERS:
            for title, query in dashboards.queries(build(config, board)):
                assert "$" not in dashboards.substitute(query, {}), title


def test_label_values_promql() -> None:
    assert (
        dashboards.label_values_promql('label_values(up{job=~"$job"}, instance)')
        == 'group by (instance) (up{job=~"$job"})'
    )
    assert dashboards.label_values_promql("up") == "up"


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    """Each query, substituted, as a recording rule: `promtool check rules` parses it."""
    promtool = tool("promtool", "Debian package prometheus")
    rules = [
        {"record": f"dashboard:query:{number}", "expr": substituted}
        for config in CONFIGS.values()
        for board in BUILDERS
        for number, (_, query) in enumerate(dashboards.queries(build(config, board)))
        for substituted in [dashboards.substitute(dashboards.label_values_promql(query), {})]
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- regeneration -------------------------------------------------------------------------


def test_python_m_mixin_check_passes() -> None:
    missing = [
        m
        for m in ("mixin.alerts", "mixin.recording", "mixin.runbooks")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        pytest.skip(f"not written yet: {', '.join(missing)}")
    result = subprocess.run(
        [sys.executable, "-m", "mixin", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
