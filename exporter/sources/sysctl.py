"""The sysctls that decide TIME-WAIT and port-exhaustion outcomes (/proc/sys/net/ipv4).

All of these are per network namespace (net/ipv4/sysctl_net_ipv4.c, ipv4_net_table), so
they are read by a thread that has entered the namespace. A sysctl the kernel lacks
(tcp_tw_recycle since 4.12, tcp_tw_reuse_delay before 6.13, tcp_ehash_entries and
tcp_child_ehash_entries before 6.1) is absent from the result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter

from prometheus_client.core import Metric

from exporter.config import Config
from exporter.sources import NetnsFiles, SourceError
from exporter.sources.declare import (
    DetailView,
    NetnsPoll,
    Notable,
    Rows,
    Scope,
    Source,
    netns_gauge,
)

# name → unit divisor (tcp_tw_reuse_delay is in milliseconds).
INTEGER_SYSCTLS: dict[str, int] = {
    "tcp_tw_reuse": 1,
    "tcp_tw_reuse_delay": 1000,
    "tcp_tw_recycle": 1,
    "tcp_max_tw_buckets": 1,
    "tcp_timestamps": 1,
    "tcp_fin_timeout": 1,
    "tcp_ehash_entries": 1,  # negative: the namespace shares the host's hash table
    # Size of the established hash a namespace created from this one gets; 0 (default):
    # it shares the host's, and every sock_diag dump in it walks the whole node's table.
    "tcp_child_ehash_entries": 1,
}
PORT_SYSCTLS = ("ip_local_port_range", "ip_local_reserved_ports")
SYSCTL_FILES = (*INTEGER_SYSCTLS, *PORT_SYSCTLS)


@dataclass(frozen=True, slots=True)
class Sysctls:
    port_range: tuple[int, int] | None
    # ip_local_reserved_ports as inclusive (first, last) ranges, sorted and merged.
    reserved_ports: tuple[tuple[int, int], ...] | None
    values: dict[str, float]

    def reserved_count(self) -> int | None:
        if self.reserved_ports is None:
            return None
        return sum(last - first + 1 for first, last in self.reserved_ports)


def parse_int(name: str, text: str) -> int:
    stripped = text.strip()
    try:
        return int(stripped)
    except ValueError:
        raise SourceError(f"sysctl {name} is not an integer: {stripped[:32]!r}") from None


def parse_port_range(text: str) -> tuple[int, int]:
    words = text.split()
    if len(words) != 2:
        raise SourceError(f"ip_local_port_range must hold two numbers, got {text.strip()[:32]!r}")
    low, high = (parse_int("ip_local_port_range", word) for word in words)
    if not 0 < low <= high <= 65535:
        raise SourceError(f"ip_local_port_range {low} {high} is not a valid range")
    return low, high


def parse_port_list(text: str) -> tuple[tuple[int, int], ...]:
    """ip_local_reserved_ports: "" or "8080,9000-9010" (proc_do_large_bitmap's format)."""
    ranges: list[tuple[int, int]] = []
    stripped = text.strip()
    if not stripped:
        return ()
    for part in stripped.split(","):
        first_text, _, last_text = part.partition("-")
        first = parse_int("ip_local_reserved_ports", first_text)
        last = parse_int("ip_local_reserved_ports", last_text) if last_text else first
        if not 0 <= first <= last <= 65535:
            raise SourceError(f"ip_local_reserved_ports has an invalid range {part!r}")
        ranges.append((first, last))
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def read_sysctls(files: NetnsFiles) -> Sysctls:
    if not files.has_sysctls():
        raise SourceError("/proc/sys/net/ipv4 cannot be opened")
    values: dict[str, float] = {}
    for name, divisor in INTEGER_SYSCTLS.items():
        text = files.read_sysctl(name)
        if text is None:
            continue
        raw = parse_int(name, text)
        values[name] = raw / divisor if divisor != 1 else raw
    range_text = files.read_sysctl("ip_local_port_range")
    port_range = parse_port_range(range_text) if range_text is not None else None
    reserved_text = files.read_sysctl("ip_local_reserved_ports")
    reserved = parse_port_list(reserved_text) if reserved_text is not None else None
    return Sysctls(port_range=port_range, reserved_ports=reserved, values=values)


SYSCTL_METRICS = {
    "tcp_tw_reuse": ("tcp_tw_reuse", "net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only"),
    "tcp_tw_reuse_delay": (
        "tcp_tw_reuse_delay_seconds",
        "net.ipv4.tcp_tw_reuse_delay (Linux 6.13+): minimum TIME-WAIT age before "
        "tcp_tw_reuse lets connect() take it over; absent before 6.13, where that happens "
        "once the kernel's seconds clock ticks (within 1 s)",
    ),
    "tcp_tw_recycle": ("tcp_tw_recycle", "net.ipv4.tcp_tw_recycle (kernels before 4.12 only)"),
    "tcp_max_tw_buckets": (
        "tcp_max_tw_buckets",
        "net.ipv4.tcp_max_tw_buckets: TIME-WAIT sockets beyond this are destroyed at once",
    ),
    "tcp_timestamps": ("tcp_timestamps", "net.ipv4.tcp_timestamps (tcp_tw_reuse needs them)"),
    "tcp_fin_timeout": ("tcp_fin_timeout_seconds", "net.ipv4.tcp_fin_timeout: FIN-WAIT-2 lifetime"),
    "tcp_ehash_entries": (
        "tcp_ehash_entries",
        "net.ipv4.tcp_ehash_entries: established hash size; negative when shared with the host",
    ),
    "tcp_child_ehash_entries": (
        "tcp_child_ehash_entries",
        "net.ipv4.tcp_child_ehash_entries: established hash size of namespaces created from "
        "this one; 0 means they share the host's, so each of their dumps walks the whole table",
    ),
}


# Shown for every namespace, quiet or not: the alerts read them per namespace.
ALWAYS = ("tcp_tw_reuse", "tcp_max_tw_buckets")
# Compared with most namespaces': one unlike theirs makes its namespace notable. (The
# ehash sizes differ by design between the host and the namespaces that share its table.)
COMPARED = (
    "tcp_tw_reuse",
    "tcp_tw_reuse_delay",
    "tcp_tw_recycle",
    "tcp_max_tw_buckets",
    "tcp_timestamps",
    "tcp_fin_timeout",
)


_PROFILE = (*COMPARED, "ip_local_port_range", "ip_local_reserved_ports")


def _profile_values(data: Sysctls) -> tuple[object, ...]:
    """The values of _PROFILE, in its order."""
    return (*map(data.values.get, COMPARED), data.port_range, data.reserved_ports)


def usual_values(readings: Sequence[Sysctls]) -> dict[str, object]:
    """Per sysctl, the value most namespaces have (the first seen among equals)."""
    # Namespaces mostly share one profile: count the profiles, then each value over
    # them. A value's first profile (in first-seen order) holds its first occurrence.
    profiles: dict[tuple[object, ...], int] = {}
    for data in readings:
        profile = _profile_values(data)
        profiles[profile] = profiles.get(profile, 0) + 1
    if not profiles:
        return {}
    usual: dict[str, object] = {}
    for at, name in enumerate(_PROFILE):
        counts: dict[object, int] = {}
        for profile, count in profiles.items():
            counts[profile[at]] = counts.get(profile[at], 0) + count
        usual[name] = max(counts.items(), key=itemgetter(1))[0]  # Counter.most_common(1)
    return usual


def unusual(seen: Notable[Sysctls]) -> str:
    if seen.data.values.get("tcp_tw_recycle"):
        return "tcp_tw_recycle is on"
    usual = seen.peers if isinstance(seen.peers, dict) else {}
    for name, value in zip(_PROFILE, _profile_values(seen.data), strict=True):
        if name in usual and value != usual[name]:
            return f"{name} {value} unlike most namespaces' {usual[name]}"
    return ""


def render_sysctls(rows: Rows[Sysctls], config: Config, detail: DetailView) -> Iterator[Metric]:
    """Every sysctl where shown in full; ALWAYS for the quiet namespaces too."""
    if not rows:
        return
    port_min = netns_gauge(
        "tcptw_sysctl_ip_local_port_range_min",
        "net.ipv4.ip_local_port_range: first ephemeral port",
    )
    port_max = netns_gauge(
        "tcptw_sysctl_ip_local_port_range_max",
        "net.ipv4.ip_local_port_range: last ephemeral port",
    )
    reserved = netns_gauge(
        "tcptw_sysctl_ip_local_reserved_ports",
        "Number of ports listed in net.ipv4.ip_local_reserved_ports",
    )
    values = {
        name: netns_gauge(f"tcptw_sysctl_{suffix}", text)
        for name, (suffix, text) in SYSCTL_METRICS.items()
    }
    for netns, data in rows:
        if not detail.shows(netns):
            for name in ALWAYS:
                if name in data.values:
                    values[name].add_metric([netns], data.values[name])
            continue
        if data.port_range is not None:
            port_min.add_metric([netns], data.port_range[0])
            port_max.add_metric([netns], data.port_range[1])
        count = data.reserved_count()
        if count is not None:
            reserved.add_metric([netns], count)
        for name, value in data.values.items():
            values[name].add_metric([netns], value)
    yield from (family for family in (port_min, port_max, reserved) if family.samples)
    yield from (family for family in values.values() if family.samples)


def _read(poll: NetnsPoll) -> Sysctls:
    return read_sysctls(poll.files)


SOURCE = Source[Sysctls](
    "sysctl",
    "TIME-WAIT and port-range sysctls from /proc/sys/net/ipv4",
    Scope.NETNS,
    render_sysctls,
    read_netns=_read,
    sysctl_files=SYSCTL_FILES,
    notable=unusual,
    peers=usual_values,
)
