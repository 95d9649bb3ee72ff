from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.config import NETNS_SELF, Config
from exporter.engine import collector, poller
from exporter.engine.collector import render
from exporter.engine.poller import Poller
from exporter.engine.registry import COLLECTORS, FEEDS, SOURCES
from exporter.sources.declare import FULL, DetailView, NetnsPoll, Rows, Scope, Source
from exporter.sources.netstat import parse_netstat
from tests.conftest import TREES


def test_neither_the_poller_nor_the_collector_names_a_source() -> None:
    names = {s.name for s in SOURCES} | {f.name for f in FEEDS}
    for module in (poller, collector):
        text = Path(module.__file__ or "").read_text()
        found = {name for name in names if re.search(rf"\b{name}\b", text)}
        assert found == set(), f"{module.__name__} names {found}"


def test_every_source_has_a_collector_flag_and_help() -> None:
    assert list(COLLECTORS) == list(dict.fromkeys(s.name for s in SOURCES))
    assert all(COLLECTORS.values())


def _read_udp(poll: NetnsPoll) -> dict[str, int]:
    return parse_netstat(poll.files.read_net("snmp"), "Udp")


def _render_udp(rows: Rows[dict[str, int]], config: Config, detail: DetailView) -> Iterator[Metric]:
    family = GaugeMetricFamily("test_udp_in_datagrams", "Udp InDatagrams", labels=["netns"])
    for netns, values in rows:
        family.add_metric([netns], values["InDatagrams"])
    yield family


def test_a_new_source_needs_only_its_declaration() -> None:
    """A source declared here, given to the engine as the registry would: its file is
    opened in the namespace, read, and rendered, with nothing else edited."""
    udp = Source[dict[str, int]](
        "udp", "Udp counters", Scope.NETNS, _render_udp, read_netns=_read_udp, net_files=("snmp",)
    )
    config = Config(procfs=TREES / "linux-6.18" / "proc", netns=NETNS_SELF, netns_name="t")
    engine = Poller(config, sources=(udp,))
    try:
        snapshot = engine.poll_once()
    finally:
        engine.close()
    (result,) = snapshot.results
    assert result.ok and result.source == "udp"
    recorded = parse_netstat((TREES / "linux-6.18/proc/net/snmp").read_text(), "Udp")
    assert result.data == recorded
    families = {m.name: m for m in udp.render([(result.netns, result.data)], config, FULL)}
    assert families["test_udp_in_datagrams"].samples[0].value == recorded["InDatagrams"]
    assert "test_udp_in_datagrams" not in {m.name for m in render(snapshot, config)}
