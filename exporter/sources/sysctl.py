"""The sysctls that decide TIME-WAIT and port-exhaustion outcomes (/proc/sys/net/ipv4).

All of these are per network namespace (net/ipv4/sysctl_net_ipv4.c, ipv4_net_table), so
they are read by a thread that has entered the namespace. A sysctl the kernel lacks
(tcp_tw_recycle since 4.12, tcp_tw_reuse_delay before 6.x, tcp_ehash_entries and
tcp_child_ehash_entries before 6.1) is absent from the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.sources import NetnsFiles, SourceError

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
