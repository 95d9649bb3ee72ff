"""The socket-destroy events as a feed of the engine: its flag (--events), its handle in
each namespace (the listener), what it demands of the sockdiag source there (the dump's
Classifier), and its metric families."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.config import Config
from exporter.events.socket import EventListener
from exporter.events.table import EventsSnapshot, EventTable
from exporter.sources import SourceError
from exporter.sources.declare import DetailView, Feed, NetnsPoll, Opener, Option
from exporter.sources.sockdiag import source as sockdiag
from exporter.sources.sockdiag.source import INBOUND_LABELS, OUTBOUND_LABELS

LISTENER = Opener("sock_diag destroy listener", EventListener, required=False)

ENABLED = Option(
    "events",
    True,
    "count connections closed per bucket from the kernel's socket-destroy events (serve "
    "and report; default on where the kernel allows; needs sockdiag)",
    lambda text: text == "true",
    group="polling",
)


class EventsSession:
    """The feed while a Poller runs: one EventTable and its reader thread."""

    def __init__(self, config: Config) -> None:
        self.table = EventTable(sockdiag.bucket_options(config))

    def after_poll(self, key: int | None, label: str, poll: NetnsPoll) -> str:
        refused = poll.files.missing(LISTENER)
        if refused:
            error = f"cannot join the sock_diag destroy groups: {refused}"
            self.table.update(key, label, None, error, None)
            return error
        listener = poll.files.handle(LISTENER)
        try:
            stats = poll.result(sockdiag.SOURCE)
        except SourceError:
            stats = None
        assert isinstance(listener, EventListener)
        classifier = stats.classifier if stats is not None else None
        self.table.update(key, label, listener, "", classifier)
        return ""

    def forget(self, key: int | None) -> None:
        self.table.forget(key)

    def result(self, detail: DetailView) -> EventsSnapshot:
        return self.table.snapshot(detail)

    def close(self) -> None:
        self.table.close()


EVENTS_TOP = (
    ": the node-wide --buckets.top buckets by recent rate count the closes made while "
    "they are in the top; each namespace's other series counts its buckets' closes while "
    "outside it (with --metrics.detail=compact, the quiet namespaces' closes are summed "
    'into one series labelled netns=""), so sum(increase()) over every series is the '
    "number of connections closed"
)


def render_events(events: EventsSnapshot) -> Iterator[Metric]:
    """The socket-destroy counters (exporter/events/table.py); current at the last poll."""
    outbound = CounterMetricFamily(
        "tcptw_outbound_connections_closed",
        "Outbound connections closed (each destroyed socket that had connected, from the "
        "kernel's sock_diag destroy events) per bucket" + EVENTS_TOP,
        labels=OUTBOUND_LABELS,
    )
    for row in events.outbound:
        outbound.add_metric([row.netns, row.local_addr, *row.port_or_remote], row.value)
    inbound = CounterMetricFamily(
        "tcptw_inbound_connections_closed",
        "Inbound connections closed (each destroyed socket that a peer had connected) per "
        "bucket" + EVENTS_TOP,
        labels=INBOUND_LABELS,
    )
    for row in events.inbound:
        inbound.add_metric([row.netns, row.local_addr, *row.port_or_remote], row.value)
    lost = CounterMetricFamily(
        "tcptw_socket_events_lost",
        "Socket-destroy events the kernel dropped because the exporter's receive buffer "
        "was full (the socket's Drops in /proc/net/netlink): closes missing from the "
        "connections_closed counters (compact detail: shown once a namespace lost any, first "
        "at 0)",
        labels=["netns"],
    )
    for netns, value in events.lost:
        lost.add_metric([netns], value)
    up = GaugeMetricFamily(
        "tcptw_socket_events_up",
        "1 when the namespace's socket-destroy listener counts connections closed, 0 when "
        "the kernel refused it (the connections_closed counters are then absent); compact "
        "detail shows the 1s of namespaces shown in full only",
        labels=["netns"],
    )
    for netns, value in events.up:
        up.add_metric([netns], value)
    failures = CounterMetricFamily(
        "tcptw_connect_failures",
        "connect() calls that failed before sending their SYN, per namespace and destination "
        "address (the destination port is lost), from the kernel's socket-destroy events: "
        'error="eaddrnotavail", no local port free toward that destination. Counted when the '
        "application closes the failed socket. The node-wide --buckets.top destinations by "
        "recent rate have series of their own; each namespace's other series, present once it "
        "has any, counts the rest, so sum(increase()) over every series is every failure",
        labels=["netns", "remote_addr", "error"],
    )
    for failure in events.failures:
        failures.add_metric([failure.netns, failure.remote_addr, failure.error], failure.value)
    yield from (outbound, inbound, lost, up, failures)


def render(result: object, config: Config, detail: DetailView) -> Iterator[Metric]:
    return render_events(cast(EventsSnapshot, result))


FEED = Feed(
    "events",
    enabled=lambda config: ENABLED.value(config) and config.enabled(sockdiag.SOURCE.name),
    start=EventsSession,
    render=render,
    openers=(LISTENER,),
    options=(ENABLED,),
    requires=(sockdiag.SOURCE,),
    demands=(sockdiag.CLASSIFIER,),
)
