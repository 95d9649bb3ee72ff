"""What a parser or the tally must return for an input it accepts, computed the plain way
(one line, one record at a time): the exact expectations of the property tests, shared
with the atheris targets in fuzz/targets.py."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Mapping

from exporter.sources.slab import SlabCache
from exporter.sources.sockdiag.codec import FAMILIES, REPORTED_STATES, Batch


def two_line_group(text: str, group: str) -> dict[str, str]:
    """The words of the `group:` header line over those of its value line (the layout of
    /proc/net/netstat and /proc/net/snmp), for a text that has exactly those two."""
    names, values = (line.split()[1:] for line in text.splitlines() if line.startswith(group + ":"))
    return dict(zip(names, values, strict=True))


def slabinfo_caches(text: str, page_size: int) -> dict[str, SlabCache]:
    """/proc/slabinfo accepted: every line after the header but comments and blank ones is
    a cache (the last of a name wins), its figures the line's words."""
    lines = [line.split() for line in text.splitlines()[1:] if not line.startswith("#")]
    return {
        words[0]: SlabCache(
            name=words[0],
            objects=int(words[2]),
            active_objects=int(words[1]),
            object_size=int(words[3]),
            memory_bytes=int(words[14]) * int(words[5]) * page_size,
            merged=False,
            shared_cache="",
        )
        for words in lines
        if words
    }


def sysfs_cache(name: str, texts: Mapping[str, str], page_size: int) -> SlabCache:
    """A cache's sysfs files accepted: the first number of each."""
    first = {key: int(text.split()[0]) for key, text in texts.items()}
    return SlabCache(
        name=name,
        objects=first["total_objects"],
        active_objects=first["objects"],
        object_size=first["slab_size"],
        memory_bytes=first["slabs"] * (page_size << first["order"]),
        merged=False,
        shared_cache="",
    )


def state_counts(batches: list[Batch]) -> dict[tuple[str, str], int]:
    """SocketStats.states after adding `batches`: every (family, reported state) of both
    families, any family but AF_INET6 counted as IPv4, other states in no series."""
    counts: Counter[tuple[str, str]] = Counter()
    for batch in batches:
        for family, state in zip(batch.family.tolist(), batch.state.tolist(), strict=True):
            if state in REPORTED_STATES:
                name = FAMILIES[socket.AF_INET6 if family == socket.AF_INET6 else socket.AF_INET]
                counts[(name, REPORTED_STATES[state])] += 1
    return {
        (family, state): counts[(family, state)]
        for family in FAMILIES.values()
        for state in REPORTED_STATES.values()
    }
