"""The report as JSON, in the shape docs/report.schema.json documents."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from exporter.report.engine import Report


def to_dict(report: Report) -> dict[str, Any]:
    doc: dict[str, Any] = dataclasses.asdict(report)
    for ns, source in zip(doc["namespaces"], report.namespaces, strict=True):
        ns["has_sockets"] = source.has_sockets
        for out, b in zip(ns["outbound"], source.outbound, strict=True):
            out["destination"] = b.destination
            out["sentence"] = b.sentence()
        for out, i in zip(ns["inspections"], source.inspections, strict=True):
            out["destination"] = i.destination
        if source.connect_failures is not None:
            ns["connect_failures"]["total"] = source.connect_failures.total
    # tuples become lists, as they would through a round trip
    result: dict[str, Any] = json.loads(json.dumps(doc))
    return result


def render(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, sort_keys=False) + "\n"
