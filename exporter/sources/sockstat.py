"""The TCP line of /proc/net/sockstat (net/ipv4/proc.c, sockstat_seq_show).

    TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 293

`inuse` counts this namespace's hashed TCP sockets (sock_prot_inuse_get(net, ...)) and `tw`
its TIME-WAIT sockets (the per-netns tcp_death_row count): these two are per namespace.
`orphan`, `alloc` and `mem` (pages of TCP buffer memory) are global counters
(tcp_orphan_count, tcp_sockets_allocated, tcp_memory_allocated): every namespace shows the
host's values, so they are a separate host-wide reading without a namespace label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exporter.sources import NetnsFiles, SourceError, read_text
from exporter.sources.netstat import is_counter

TCP_FIELDS = ("inuse", "orphan", "tw", "alloc", "mem")
HOST_FIELDS = ("orphan", "alloc", "mem")


@dataclass(frozen=True, slots=True)
class SockstatCounts:
    """The per-namespace part."""

    inuse: int
    tw: int

    @property
    def no_tcp_socket(self) -> bool:
        """Nothing a sock_diag dump of TCP could return: no hashed socket (listeners,
        connections, SYN-SENT; request sockets need a listener) and no TIME-WAIT one."""
        return self.inuse == 0 and self.tw == 0


def parse_sockstat(text: str) -> dict[str, int]:
    for line in text.splitlines():
        if not line.startswith("TCP:"):
            continue
        words = line.split()[1:]
        if len(words) % 2:
            raise SourceError(f"odd number of words in sockstat TCP line: {line[:80]!r}")
        fields: dict[str, int] = {}
        for key, value in zip(words[::2], words[1::2], strict=True):
            if not is_counter(value):
                raise SourceError(f"sockstat TCP {key} is not a number: {value[:32]!r}")
            fields[key] = int(value)
        missing = [name for name in ("inuse", "tw") if name not in fields]
        if missing:
            raise SourceError(f"sockstat TCP line lacks {', '.join(missing)}")
        return {name: fields[name] for name in TCP_FIELDS if name in fields}
    raise SourceError("no TCP line in sockstat")


def read_sockstat(files: NetnsFiles) -> SockstatCounts:
    fields = parse_sockstat(files.read_net("sockstat"))
    return SockstatCounts(inuse=fields["inuse"], tw=fields["tw"])


def read_sockstat_host(procfs: Path) -> dict[str, int]:
    """orphan, alloc, mem: the same in every namespace, read from the exporter's own."""
    fields = parse_sockstat(read_text(procfs / "net" / "sockstat"))
    return {name: fields[name] for name in HOST_FIELDS if name in fields}
