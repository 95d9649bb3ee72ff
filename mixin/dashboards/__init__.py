"""The Grafana dashboards, built with grafana-foundation-sdk (Grafana's own builders, generated
from its schemas): `fleet` and `node` return the dashboard JSON as a dict.

`queries(dashboard)` lists every query of a generated dashboard (panel targets, then query
variables), and `substitute` fills in the template variables, so that a test can run each of
them against a real Prometheus.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from mixin.dashboards.fleet import fleet
from mixin.dashboards.node import node

__all__ = [
    "DEFAULTS",
    "fleet",
    "label_values_promql",
    "node",
    "queries",
    "substitute",
    "variable_query",
]

_LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>\w+)\s*\)\s*$", re.S
)


def label_values_promql(query: str) -> str:
    """Grafana's `label_values(selector, label)` as PromQL, `group by (label) (selector)`: it
    returns one series per value the variable would offer (a series without the label, too).
    Any other variable query is returned unchanged (it is PromQL already)."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        return query
    return f"group by ({match['label']}) ({match['selector']})"


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def variable_query(variable: Mapping[str, Any]) -> str:
    """The query string of a query variable (Grafana stores a string or {"query": ...})."""
    query = variable.get("query", "")
    if isinstance(query, Mapping):
        query = query.get("query", "")
    return str(query)


def queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, then ("variable <name>", query)
    for every query variable, in dashboard order. A variable's query is what Grafana runs,
    `label_values(selector, label)` (the HTTP API's /api/v1/label/<label>/values with
    match[]=selector answers it; label_values_promql turns it into PromQL)."""
    found = [
        (str(panel.get("title", "")), str(target["expr"]))
        for panel in _panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    found += [
        (f"variable {variable['name']}", variable_query(variable))
        for variable in dashboard.get("templating", {}).get("list", [])
        if variable.get("type") == "query"
    ]
    return found


# Values for variables that `substitute` is not given: every label variable matches anything
# (the "All" option, which the dashboards define as .*), Grafana's intervals get a minute.
DEFAULTS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::[\w-]+)?\}"  # ${name}, ${name:format}
    r"|\[\[(?P<bracketed>\w+)(?::[\w-]+)?\]\]"  # [[name]] (deprecated)
    r"|\$(?P<plain>\w+)"  # $name
)


def substitute(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replace $name, ${name}, ${name:format} and [[name]] with values[name] (verbatim: regex-
    escape them yourself where a value goes into =~), else DEFAULTS[name], else ".*"."""
    given = dict(values or {})

    def replace(match: re.Match[str]) -> str:
        name = match["braced"] or match["bracketed"] or match["plain"]
        if name in given:
            return given[name]
        return DEFAULTS.get(name, ".*")

    return _VARIABLE.sub(replace, expr)
