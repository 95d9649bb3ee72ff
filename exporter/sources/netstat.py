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
from dataclasses import dataclass

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
    header, row = group_lines(text, group)
    names = header.split()[1:]
    values = row.split()[1:]
    _check(group, names, values, _signed_at(names, signed))
    return dict(zip(names, map(int, values), strict=True))


# What to read of a group: the counters a pattern matches, in file order, or the names
# listed, in their order.
Choice = re.Pattern[str] | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Layout:
    """What one header line says: its names, and where the chosen and signed ones are."""

    names: list[str]
    unique: bool
    signed: tuple[int, ...]
    chosen: tuple[tuple[int, str], ...]  # (position, name), in the output's order


# (header line, group, signed, choice) → layout. A kernel prints the same header line for
# as long as it runs: a namespace's read costs a lookup, not a parse of the header.
_LAYOUTS: dict[tuple[str, str, frozenset[str], Choice], _Layout] = {}
_MAX_LAYOUTS = 64  # bounds it against headers that change (recorded trees, tests)


def parse_chosen(
    text: str, choice: Choice, group: str = "TcpExt", signed: frozenset[str] = frozenset()
) -> dict[str, int]:
    """The counters `choice` picks of one group: what parse_netstat's result holds of
    them, with the same SourceError for malformed input (every counter is checked)."""
    header, row = group_lines(text, group)
    key = (header, group, signed, choice)
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _layout(header, choice, signed)
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    values = row.split()[1:]
    if not (
        layout.unique and len(values) == len(layout.names) and _all_counters(values, layout.signed)
    ):
        _check(group, layout.names, values, layout.signed)  # raises for the first fault
    return {name: int(values[at]) for at, name in layout.chosen}


def _layout(header: str, choice: Choice, signed: frozenset[str]) -> _Layout:
    names = header.split()[1:]
    if isinstance(choice, tuple):
        where: dict[str, int] = {}
        for at, name in enumerate(names):
            where.setdefault(name, at)
        chosen = tuple((where[name], name) for name in choice if name in where)
    else:
        chosen = tuple((at, name) for at, name in enumerate(names) if choice.search(name))
    return _Layout(names, len(set(names)) == len(names), _signed_at(names, signed), chosen)


def _signed_at(names: list[str], signed: frozenset[str]) -> tuple[int, ...]:
    return tuple(at for at, name in enumerate(names) if name in signed) if signed else ()


def group_lines(text: str, group: str) -> tuple[str, str]:
    """The header and value lines of `group`; SourceError unless there is one of each."""
    prefix = group + ":"
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    if not lines:
        raise SourceError(f"no {group} lines")
    if len(lines) != 2:
        raise SourceError(f"expected a {group} header and value line, found {len(lines)} lines")
    return lines[0], lines[1]


def _all_counters(values: list[str], signed: tuple[int, ...]) -> bool:
    """Whether every value is_counter (a signed one after its "-"), checked at C speed."""
    if signed:
        values = values.copy()
        for at in signed:
            values[at] = values[at].removeprefix("-")
            if not values[at]:
                return False
    if not values:
        return True
    # Each value is a non-empty word (str.split): all are ASCII digits when their
    # concatenation is.
    joined = "".join(values)
    return joined.isascii() and joined.isdigit() and len(max(values, key=len)) <= 20


def _check(group: str, names: list[str], values: list[str], signed: tuple[int, ...]) -> None:
    """SourceError for the first thing wrong with a group's names and values."""
    if len(names) != len(values):
        raise SourceError(f"{group} has {len(names)} names but {len(values)} values")
    if len(set(names)) != len(names):
        raise SourceError(f"{group} header repeats a counter name")
    if _all_counters(values, signed):
        return
    for at, (name, value) in enumerate(zip(names, values, strict=True)):
        if not is_counter(value.removeprefix("-") if at in signed else value):
            raise SourceError(f"{group} counter {name} is not a number: {value[:32]!r}")


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
    if seen.previous is None or seen.data == seen.previous:
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
    """select_fields(read_netstat(...)), without parsing the counters it drops."""
    return parse_chosen(poll.files.read_net("netstat"), FIELDS.value(poll.config))


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
