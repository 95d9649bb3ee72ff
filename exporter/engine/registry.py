"""Every source and feed, in the spirit of node_exporter's registerCollector. The CLI,
the poller and the collector iterate these and name no source: adding a source is its
module (exporter/sources/) plus one line here.

Order matters only for the exposition: families render in this order, per-namespace
sources first, then host-wide ones.
"""

from __future__ import annotations

from typing import Any

from exporter.events import feed as events
from exporter.sources import netstat, slab, snmp, sockstat, sysctl
from exporter.sources.declare import Feed, Source
from exporter.sources.sockdiag import source as sockdiag

SOURCES: tuple[Source[Any], ...] = (
    sysctl.SOURCE,
    netstat.SOURCE,
    snmp.SOURCE,
    sockstat.SOURCE,
    sockdiag.SOURCE,
    sockstat.HOST_SOURCE,
    slab.SOURCE,
)
FEEDS: tuple[Feed, ...] = (events.FEED,)

# One --collector.<name> flag per name, with the first help text given for it.
COLLECTORS: dict[str, str] = {}
for _source in SOURCES:
    COLLECTORS.setdefault(_source.name, _source.help)
