"""TcpExt counters from /proc/net/netstat (net/ipv4/proc.c, netstat_seq_show).

The file holds pairs of lines per group: a header line naming the counters and a value
line, both starting with the group name ("TcpExt:"). Counters are parsed by header name,
so a counter the running kernel does not have (PAWSPassive, i.e. LINUX_MIB_PAWSPASSIVEREJECTED,
went away with tcp_tw_recycle in Linux 4.12; PAWSOldAck exists only on recent kernels) is
absent from the result, never 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from exporter.config import Config
from exporter.sources import NetnsFiles, SourceError
from exporter.sources.declare import (
    FOLDED,
    LAST_POLL,
    DetailView,
    NetnsPoll,
    Notable,
    Option,
    Rows,
    Scope,
    Source,
)

# The counters TIME-WAIT handling moves; the rest of TcpExt is a flag away. Every one is a
# series per namespace, so the default stays short.
DEFAULT_FIELDS = (
    r"^(TW|TWRecycled|TWKilled|TCPTimeWaitOverflow|PAWS\w*|TSEcrRejected"
    r"|TCPACKSkippedTimeWait|TCPACKSkippedPAWS|ListenOverflows|ListenDrops)$"
)


def parse_netstat(
    text: str, group: str = "TcpExt", signed: frozenset[str] = frozenset()
) -> dict[str, int]:
    """All counters of one group, in file order (the same layout serves /proc/net/snmp).
    `signed`: fields the kernel prints signed. Raises SourceError on malformed input."""
    prefix = group + ":"
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    if not lines:
        raise SourceError(f"no {group} lines")
    if len(lines) != 2:
        raise SourceError(f"expected a {group} header and value line, found {len(lines)} lines")
    names = lines[0].split()[1:]
    values = lines[1].split()[1:]
    if len(names) != len(values):
        raise SourceError(f"{group} has {len(names)} names but {len(values)} values")
    if len(set(names)) != len(names):
        raise SourceError(f"{group} header repeats a counter name")
    counters: dict[str, int] = {}
    for name, value in zip(names, values, strict=True):
        if not is_counter(value.removeprefix("-") if name in signed else value):
            raise SourceError(f"{group} counter {name} is not a number: {value[:32]!r}")
        counters[name] = int(value)
    return counters


def is_counter(word: str) -> bool:
    """A kernel u64 counter as seq_file prints it: at most 20 ASCII digits. (str.isdigit
    alone takes "²", which int() rejects, and int() refuses over 4300 digits.)"""
    return len(word) <= 20 and word.isascii() and word.isdigit()


def select_fields(counters: dict[str, int], pattern: re.Pattern[str]) -> dict[str, int]:
    return {name: value for name, value in counters.items() if pattern.search(name)}


def read_netstat(files: NetnsFiles) -> dict[str, int]:
    return parse_netstat(files.read_net("netstat"))


# One word of a kernel counter name: a plural acronym (ACKs), an acronym before a
# capitalised word (PAWS in PAWSOldAck), a capitalised word, or what is left.
_WORD = re.compile(
    r"[A-Z]{2,}s(?=[A-Z]|$)|[A-Z]+[0-9]*(?=[A-Z][a-z]|$)|[A-Z][a-z]+[0-9]*|[A-Z]+[0-9]*"
    r"|[a-z]+[0-9]*|[0-9]+"
)


def snake_case(name: str) -> str:
    """Kernel counter name to snake_case: TCPACKSkippedTimeWait → tcp_ack_skipped_time_wait.

    A leading "TCP" is split off first: the kernel glues it to the next acronym.
    """
    words = []
    if name.startswith("TCP") and len(name) > 3 and name[3].isupper():
        words.append("tcp")
        name = name[3:]
    words += (word.lower() for word in _WORD.findall(name))
    return "_".join(words)


NAME = "netstat"
# Counters that move only when something goes wrong: one that moved makes its namespace
# notable (shown in full, exporter/engine/detail.py). TW, TWRecycled, TWKilled and the
# ACK-skipping ones move with ordinary traffic.
PROBLEM_COUNTERS = (
    "TCPTimeWaitOverflow",
    "ListenOverflows",
    "ListenDrops",
    "PAWSPassive",
    "PAWSActive",
    "TSEcrRejected",
)


def render_tcpext(
    rows: Rows[dict[str, int]], config: Config, detail: DetailView
) -> Iterator[Metric]:
    families: dict[str, CounterMetricFamily] = {}
    for netns, counters in rows:
        shown = detail.shows(netns)
        for name, value in counters.items():
            metric = families.get(name)
            if metric is None:
                metric = CounterMetricFamily(
                    f"tcptw_tcpext_{snake_case(name)}",
                    f"TcpExt {name} counter from /proc/net/netstat" + LAST_POLL,
                    labels=["netns"],
                )
                families[name] = metric
            if shown:
                metric.add_metric([netns], detail.counter(NAME, netns, name, value))
    if not detail.full:
        for name, metric in families.items():
            metric.add_metric([FOLDED], detail.fold(NAME, name))
    yield from families.values()


def problem_moved(seen: Notable[dict[str, int]]) -> str:
    if seen.previous is None:
        return ""
    for name in PROBLEM_COUNTERS:
        if seen.data.get(name, 0) > seen.previous.get(name, seen.data.get(name, 0)):
            return f"TcpExt {name} moved"
    return ""


def _pattern(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"--collector.netstat.fields is not a valid regex: {exc}") from None


FIELDS = Option(
    "collector.netstat.fields",
    re.compile(DEFAULT_FIELDS),
    "regex of TcpExt counters to export",
    _pattern,
)


def _read(poll: NetnsPoll) -> dict[str, int]:
    return select_fields(read_netstat(poll.files), FIELDS.value(poll.config))


SOURCE = Source[dict[str, int]](
    NAME,
    "TcpExt counters from /proc/net/netstat",
    Scope.NETNS,
    render_tcpext,
    read_netns=_read,
    net_files=("netstat",),
    options=(FIELDS,),
    notable=problem_moved,
    counters=dict,
)
