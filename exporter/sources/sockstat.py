"""The TCP line of /proc/net/sockstat (net/ipv4/proc.c, sockstat_seq_show).

    TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 293

`inuse` counts this namespace's sockets, `tw` its TIME-WAIT sockets (the per-netns
tcp_death_row count), `orphan` and `alloc` are host-wide, and `mem` is host-wide
pages of TCP buffer memory (converted to bytes by the collector).
"""

from __future__ import annotations

from exporter.sources import NetnsView, SourceError, read_text

TCP_FIELDS = ("inuse", "orphan", "tw", "alloc", "mem")


def parse_sockstat(text: str) -> dict[str, int]:
    for line in text.splitlines():
        if not line.startswith("TCP:"):
            continue
        words = line.split()[1:]
        if len(words) % 2:
            raise SourceError(f"odd number of words in sockstat TCP line: {line[:80]!r}")
        fields: dict[str, int] = {}
        for key, value in zip(words[::2], words[1::2], strict=True):
            if not value.isdigit():
                raise SourceError(f"sockstat TCP {key} is not a number: {value[:32]!r}")
            fields[key] = int(value)
        missing = [name for name in ("inuse", "tw") if name not in fields]
        if missing:
            raise SourceError(f"sockstat TCP line lacks {', '.join(missing)}")
        return {name: fields[name] for name in TCP_FIELDS if name in fields}
    raise SourceError("no TCP line in sockstat")


def read_sockstat(netns: NetnsView) -> dict[str, int]:
    return parse_sockstat(read_text(netns.proc_net / "sockstat"))
