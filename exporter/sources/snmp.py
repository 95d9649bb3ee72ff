"""The Tcp group of /proc/net/snmp (net/ipv4/proc.c, snmp_seq_show_tcp_udp): the TCP-MIB
counters of RFC 4022, per namespace (each namespace has its own net->mib.tcp_statistics).

    Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails ...
    Tcp: 1 200 120000 -1 1294 1008 261 175 0 14165 12362 0 0 405 0

Same two-line layout as /proc/net/netstat. MaxConn is the one field the kernel prints
signed (-1: no fixed limit, as RFC 2012 asks); CurrEstab is a gauge (connections in
ESTABLISHED or CLOSE-WAIT now, tcp_set_state's TCP_MIB_CURRESTAB), the others are
counters since the namespace was created.

- ActiveOpens: connect()s that sent a SYN (SYN-SENT entered); a connect() that failed
  before its SYN, EADDRNOTAVAIL included, is not counted.
- AttemptFails: SYN-SENT or SYN-RECV connections that went back to CLOSED or LISTEN
  (refused, timed out, reset before being established).
- EstabResets: ESTABLISHED or CLOSE-WAIT connections reset.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter.config import Config
from exporter.sources import SourceError
from exporter.sources.declare import FOLDED, LAST_POLL, DetailView, NetnsPoll, Rows, Scope, Source
from exporter.sources.netstat import parse_chosen

# field → (metric name, is a counter, help)
FIELDS: dict[str, tuple[str, bool, str]] = {
    "ActiveOpens": (
        "tcptw_tcp_active_opens",
        True,
        "Tcp ActiveOpens from /proc/net/snmp: connect()s that sent a SYN",
    ),
    "AttemptFails": (
        "tcptw_tcp_attempt_fails",
        True,
        "Tcp AttemptFails from /proc/net/snmp: connection attempts that failed after their "
        "SYN (refused, reset or timed out before being established)",
    ),
    "EstabResets": (
        "tcptw_tcp_estab_resets",
        True,
        "Tcp EstabResets from /proc/net/snmp: established connections reset",
    ),
    "CurrEstab": (
        "tcptw_tcp_curr_estab",
        False,
        "Tcp CurrEstab from /proc/net/snmp: connections in ESTABLISHED or CLOSE-WAIT",
    ),
}
SIGNED = frozenset({"MaxConn"})


_CHOSEN = tuple(FIELDS)


def parse_snmp_tcp(text: str) -> dict[str, int]:
    """The exported Tcp fields; one the kernel lacks is absent, never 0. Every field of
    the group is checked (parse_netstat's errors)."""
    return parse_chosen(text, _CHOSEN, "Tcp", SIGNED)


def read_snmp(poll: NetnsPoll) -> dict[str, int]:
    values = parse_snmp_tcp(poll.files.read_net("snmp"))
    if not values:
        raise SourceError("no known Tcp field in /proc/net/snmp")
    return values


NAME = "snmp"


def render_snmp(rows: Rows[dict[str, int]], config: Config, detail: DetailView) -> Iterator[Metric]:
    for field, (name, counter, text) in FIELDS.items():
        family: CounterMetricFamily | GaugeMetricFamily
        if counter:
            family = CounterMetricFamily(name, text + LAST_POLL, labels=["netns"])
        else:
            family = GaugeMetricFamily(name, text + LAST_POLL, labels=["netns"])
        quiet = 0
        for netns, values in rows:
            if field not in values:
                continue
            if not detail.shows(netns):
                quiet += values[field]
            elif counter:
                family.add_metric([netns], detail.counter(NAME, netns, field, values[field]))
            else:
                family.add_metric([netns], values[field])
        if not detail.full and any(field in values for _, values in rows):
            # netns="": the quiet namespaces' increments (counters) or sum (CurrEstab).
            family.add_metric([FOLDED], detail.fold(NAME, field) if counter else quiet)
        if family.samples:
            yield family


def _counters(values: dict[str, int]) -> dict[str, int]:
    return {name: value for name, value in values.items() if FIELDS[name][1]}


SOURCE = Source[dict[str, int]](
    NAME,
    "Tcp counters from /proc/net/snmp (active opens, attempt fails, resets, established)",
    Scope.NETNS,
    render_snmp,
    read_netns=read_snmp,
    net_files=("snmp",),
    counters=_counters,
)
