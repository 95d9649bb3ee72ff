"""The generated alerting and recording rules, the PrometheusRule and the runbooks: promtool
accepts them and their unit tests pass; every alert is labelled, annotated and linked to its
runbook; one alert name per condition; every selector carries the job matcher; and every
alert has promtool cases that make it fire and near misses that keep it silent."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from mixin import alerts, recording, runbooks
from mixin.config import DEFAULT, Durations
from tests.conftest import tool

REPO = Path(__file__).resolve().parent.parent
PROM_DIR = REPO / "deploy" / "prometheus"
RUNBOOKS = REPO / "docs" / "runbooks"
RULE_FILES = ("recording.yml", "alerts.yml")
SEVERITIES = {"warning", "critical"}


def promtool() -> str:
    return tool("promtool", "Debian package prometheus")


def run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules(name: str) -> list[dict[str, Any]]:
    return [rule for group in load(PROM_DIR / name)["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return rules("alerts.yml")


def seconds(duration: str) -> float:
    """A Prometheus duration ("1m45s") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwy])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


# --- promtool ---------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    out = run([promtool(), "check", "rules", *RULE_FILES], PROM_DIR)
    assert out.count("SUCCESS") == len(RULE_FILES)


def test_promtool_rule_unit_tests() -> None:
    run([promtool(), "test", "rules", "alerts_test.yml"], PROM_DIR)


def test_unit_tests_and_prometheus_load_both_rule_files() -> None:
    assert load(PROM_DIR / "alerts_test.yml")["rule_files"] == list(RULE_FILES)
    assert load(PROM_DIR / "prometheus.yml")["rule_files"] == list(RULE_FILES)


def test_rules_of_another_config_pass_promtool(tmp_path: Path) -> None:
    """Another job, no cluster label and other durations: every `for:` and window comes
    from the config, the job matcher follows it, and promtool still accepts the rules."""
    durations = Durations(
        exhaustion="11s",
        exhaustion_keep_firing="12s",
        predicted="13s",
        timewait="14s",
        exporter_down="15s",
        source_failing="16s",
        stale="17s",
        overrun="18s",
        connect_failing="23s",
    )
    config = replace(
        DEFAULT,
        job="tw",
        cluster_label="",
        smoothing_window="19s",
        prediction_window="21s",
        rate_window="22s",
        failure_window="24s",
        durations=durations,
    )
    allowed = set(vars(durations).values())
    for group in alerts.groups(config):
        for rule in group["rules"]:
            assert rule["for"] in allowed, rule["alert"]
            assert rule.get("keep_firing_for", "12s") == "12s", rule["alert"]
    exprs = [
        rule["expr"]
        for groups in (recording.groups(config), alerts.groups(config))
        for group in groups
        for rule in group["rules"]
    ]
    for expr in exprs:
        assert "timewait-exporter" not in expr and "cluster" not in expr, expr
        for window in re.findall(r"\[(\w+)\]", expr):
            assert window in {"19s", "21s", "22s", "24s"}, expr
    for window in ("19s", "21s", "22s", "24s"):
        assert any(f"[{window}]" in expr for expr in exprs), window
    records = [rule["record"] for group in recording.groups(config) for rule in group["rules"]]
    assert records == list(recording.names(config))
    assert "tcptw:outbound_connections_closed:rate22s" in records
    assert "tcptw:connect_failures:rate22s" in records
    for name, groups in (
        ("recording.yml", recording.groups(config)),
        ("alerts.yml", alerts.groups(config)),
    ):
        (tmp_path / name).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    run([promtool(), "check", "rules", *RULE_FILES], tmp_path)


# --- labels, annotations, runbooks --------------------------------------------------------


def test_every_alert_is_labelled_annotated_and_has_its_runbook() -> None:
    names = set()
    for rule in alert_rules():
        name = rule["alert"]
        names.add(name)
        assert set(rule["labels"]) == {"severity"}, name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert annotations["runbook_url"] == DEFAULT.runbook_url(name)
        assert annotations["runbook_url"].endswith(f"/{name}.md")
        page = RUNBOOKS / f"{name}.md"
        assert page.is_file(), f"{name} has no runbook"
        text = page.read_text()
        assert text.startswith(f"# {name}\n")
        assert {"## Meaning", "## Confirm", "## Fix"} <= set(text.splitlines()), name
    assert {path.stem for path in RUNBOOKS.glob("*.md")} == names, "a runbook without alert"
    assert set(runbooks.pages(DEFAULT)) == names


def test_runbooks_of_network_alerts_say_how_to_confirm_inside_the_namespace() -> None:
    for name in runbooks.IN_NAMESPACE:
        text = (RUNBOOKS / f"{name}.md").read_text()
        for needle in ("nsenter -t", "ip netns exec", "crictl inspect", "kubectl debug"):
            assert needle in text, f"{name}: {needle}"
        assert re.search(r"^(ss|nstat|sysctl) ", text, re.MULTILINE), name
    exhaustion = (RUNBOOKS / "TcpEphemeralPortExhaustion.md").read_text()
    for needle in (
        "ip_local_port_range",
        "ip_local_reserved_ports",
        "tcp_tw_reuse=1",
        "tcp_timestamps",
        "keep-alive",
        "destination ports or addresses",
        "Never `net.ipv4.tcp_tw_recycle`",
        "tcp_fin_timeout",
        "ss -Htan state time-wait '( dst <remote_addr> and dport = :<remote_port> )'",
    ):
        assert needle in exhaustion, needle


def test_one_alert_name_per_condition() -> None:
    """Severity pairs share one name, so Alertmanager's inhibit rule (equal alertname and
    labels) delivers the critical one only."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for rule in alert_rules():
        by_name.setdefault(rule["alert"], []).append(rule)
    for name, group in by_name.items():
        severities = [rule["labels"]["severity"] for rule in group]
        assert len(severities) == len(set(severities)), f"{name}: {severities}"
        assert not re.search(r"(Warning|Critical|Imminent|High)$", name), name
        keep = {rule.get("keep_firing_for") for rule in group}
        assert len(keep) == 1, name
    assert {r["labels"]["severity"] for r in by_name["TcpEphemeralPortExhaustion"]} == SEVERITIES


def test_exhaustion_is_smoothed_and_its_thresholds_reachable() -> None:
    for rule in alert_rules():
        if rule["alert"] == "TcpEphemeralPortExhaustion":
            assert f"[{DEFAULT.smoothing_window}]" in rule["expr"]
            assert "max_over_time" in rule["expr"]
            assert " > " not in rule["expr"], "an upper-bound capacity needs >="
            assert rule["keep_firing_for"] == DEFAULT.durations.exhaustion_keep_firing
            assert rule["for"] == DEFAULT.durations.exhaustion


# --- selectors ----------------------------------------------------------------------------

AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
}
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
WORD = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
NUMBER = re.compile(r"[0-9.][0-9.eE+x]*")


def _skip(expr: str, i: int, close: str) -> int:
    """Index just past the `close` that ends the bracket at expr[i], skipping strings."""
    i += 1
    while expr[i] != close:
        string = STRING.match(expr, i)
        i = string.end() if string else i + 1
    return i + 1


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matchers) of every vector selector of a PromQL expression."""
    found = []
    i = 0
    while i < len(expr):
        char = expr[i]
        string = STRING.match(expr, i)
        if string:
            i = string.end()
        elif char == "[":
            i = _skip(expr, i, "]")
        elif char == "{":
            end = _skip(expr, i, "}")
            found.append(("", expr[i + 1 : end - 1]))
            i = end
        elif char.isalpha() or char in "_:":
            word = WORD.match(expr, i).group()  # type: ignore[union-attr]
            i += len(word)
            rest = expr[i:].lstrip()
            j = len(expr) - len(rest)
            if word in LABEL_LISTS and rest.startswith("("):
                i = _skip(expr, j, ")")
            elif word in KEYWORDS or word in AGGREGATIONS or rest.startswith("("):
                continue
            elif rest.startswith("{"):
                end = _skip(expr, j, "}")
                found.append((word, expr[j + 1 : end - 1]))
                i = end
            else:
                found.append((word, ""))
        elif char.isdigit() or char == ".":
            i = NUMBER.match(expr, i).end()  # type: ignore[union-attr]
        else:
            i += 1
    return found


def test_selector_parser() -> None:
    expr = (
        'max by (cluster, instance) (max_over_time(a{job="x", b!="c}"}[2m]))\n'
        '* on (instance) group_left (pod) b{job="x"} >= 0.9 or absent(up{job="x"})'
        ' or label_replace(c{job="x"}, "d", "e", "", "") or time() - d'
    )
    assert selectors(expr) == [
        ("a", 'job="x", b!="c}"'),
        ("b", 'job="x"'),
        ("up", 'job="x"'),
        ("c", 'job="x"'),
        ("d", ""),
    ]


@pytest.mark.parametrize("name", RULE_FILES)
def test_every_selector_carries_the_job_matcher(name: str) -> None:
    job = f'job="{DEFAULT.job}"'
    for rule in rules(name):
        found = selectors(rule["expr"])
        assert found, rule["expr"]
        for metric, matchers in found:
            assert job in matchers, f"{rule.get('alert') or rule['record']}: {metric}"


def test_recording_rule_names_and_the_cluster_label() -> None:
    records = [rule["record"] for rule in rules("recording.yml")]
    assert records == list(recording.names(DEFAULT))
    for rule in rules("recording.yml"):
        for clause in re.findall(r"\b(?:by|on) \(([^)]*)\)", rule["expr"]):
            assert clause.split(", ")[0] == DEFAULT.cluster_label, rule["record"]


def test_prometheusrule_holds_exactly_both_files() -> None:
    rule = load(REPO / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    expected = [group for name in RULE_FILES for group in load(PROM_DIR / name)["groups"]]
    assert rule["spec"]["groups"] == expected
    names = [group["name"] for group in expected]
    assert len(names) == len(set(names))


def test_rule_files_are_generated_from_the_mixin() -> None:
    text = {name: (PROM_DIR / name).read_text() for name in RULE_FILES}
    assert yaml.safe_load(text["alerts.yml"])["groups"] == alerts.groups(DEFAULT)
    assert yaml.safe_load(text["recording.yml"])["groups"] == recording.groups(DEFAULT)
    for name, page in runbooks.pages(DEFAULT).items():
        assert (RUNBOOKS / f"{name}.md").read_text() == page, name


# --- the promtool cases -------------------------------------------------------------------


def expand(values: str) -> list[float | None]:
    """promtool's series notation ("1 2 _ 3+1x2 5x3") as a list (None: no sample)."""
    out: list[float | None] = []
    for token in values.split():
        match = re.fullmatch(r"(-?[0-9.e]+)(?:([+-][0-9.e]+))?x(\d+)", token)
        if token in ("_", "stale"):
            out.append(None)
        elif match:
            start, step, count = float(match[1]), float(match[2] or 0), int(match[3])
            out.extend(start + step * k for k in range(count + 1))
        else:
            out.append(float(token))
    return out


def series_labels(series: str) -> tuple[str, dict[str, str]]:
    name, _, rest = series.partition("{")
    return name, dict(re.findall(r'(\w+)="([^"]*)"', rest))


def cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    document = load(PROM_DIR / "alerts_test.yml")
    return [(group, case) for group in document["tests"] for case in group["alert_rule_test"]]


def test_expand() -> None:
    assert expand("1 _ 2+1x2 0.5x1") == [1, None, 2, 3, 4, 0.5, 0.5]


@pytest.mark.parametrize(
    "rule", alert_rules(), ids=lambda rule: f"{rule['alert']}-{rule['labels']['severity']}"
)
def test_every_alert_has_firing_and_near_miss_cases(rule: dict[str, Any]) -> None:
    name, severity = rule["alert"], rule["labels"]["severity"]
    mine = [(group, case) for group, case in cases() if case["alertname"] == name]
    fires = [
        case
        for _, case in mine
        if any(alert["exp_labels"]["severity"] == severity for alert in case["exp_alerts"])
    ]
    assert fires, f"no promtool case makes {name} fire at {severity}"
    silent = [
        case
        for group, case in mine
        if group["input_series"]
        and seconds(case["eval_time"]) >= seconds(rule["for"])
        and all(alert["exp_labels"]["severity"] != severity for alert in case["exp_alerts"])
    ]
    assert silent, f"no near miss keeps {name} silent at {severity} after its for:"


def test_exhaustion_fires_through_single_sample_dips() -> None:
    """A bucket whose utilisation dips below the critical threshold for single samples
    between full ones still fires critical."""
    dipping = set()
    for group, case in cases():
        if case["alertname"] != "TcpEphemeralPortExhaustion":
            continue
        series: dict[tuple[str, tuple[tuple[str, str], ...]], list[float | None]] = {}
        for entry in group["input_series"]:
            metric, labels = series_labels(entry["series"])
            series[metric, tuple(sorted(labels.items()))] = expand(str(entry["values"]))
        for alert in case["exp_alerts"]:
            labels = alert["exp_labels"]
            if labels["severity"] != "critical" or "remote_addr" not in labels:
                continue
            key = tuple(
                sorted(
                    (k, v)
                    for k, v in labels.items()
                    if k not in ("severity", "k8s_namespace_name", "k8s_pod_name")
                )
            )
            used = series["tcptw_outbound_ports_used", key]
            capacity = series["tcptw_outbound_ports_capacity", key]
            ratio = [
                u / c if u is not None and c else 1.0 for u, c in zip(used, capacity, strict=True)
            ]
            critical = DEFAULT.thresholds.port_critical
            for k in range(1, len(ratio) - 1):
                low = ratio[k] < critical
                if low and ratio[k - 1] >= critical and ratio[k + 1] >= critical:
                    dipping.add(labels["netns"])
    assert dipping, "no jittery series (single-sample dips) that still fires critical"


def test_near_miss_of_the_critical_threshold_fires_warning_only() -> None:
    warning_only = [
        case
        for _, case in cases()
        if case["alertname"] == "TcpEphemeralPortExhaustion"
        and case["exp_alerts"]
        and {a["exp_labels"]["severity"] for a in case["exp_alerts"]} == {"warning"}
    ]
    assert warning_only
