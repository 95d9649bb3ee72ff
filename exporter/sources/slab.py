"""Slab caches that hold TIME-WAIT and bind state (host-wide, not per namespace).

tw_sock_TCP / tw_sock_TCPv6 hold struct tcp_timewait_sock; tcp_bind_bucket and (since
6.1) tcp_bind2_bucket hold the bind hash entries of locally bound ports.

/proc/slabinfo (mm/slab_common.c, cache_show) is used when readable. Under SLUB a cache
may be merged into a shared one (mm/slub.c, __kmem_cache_alias): /sys/kernel/slab/<name>
is then a symlink to a unique ":A-0000128"-style directory, the name is missing from
/proc/slabinfo, and the figures are those of the shared cache. We report those figures
with merged="true"; the memory they show is shared with every alias.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.config import Config
from exporter.sources import PAGE_SIZE, SourceError, read_text
from exporter.sources.declare import LAST_POLL, DetailView, Rows, Scope, Source
from exporter.sources.netstat import is_counter

CACHES = ("tw_sock_TCP", "tw_sock_TCPv6", "tcp_bind_bucket", "tcp_bind2_bucket")
# The sysfs files of one cache that read_sysfs_cache reads.
SYSFS_FILES = ("slabs", "order", "total_objects", "objects", "slab_size")
MAX_ORDER = 63  # a slab's page order (MAX_PAGE_ORDER is 10 or so); bounds page_size << order


@dataclass(frozen=True, slots=True)
class SlabCache:
    name: str
    objects: int  # allocated object slots (num_objs / total_objects)
    active_objects: int  # slots in use (active_objs / objects)
    object_size: int  # bytes per slot, metadata included (objsize / slab_size)
    memory_bytes: int  # pages held by the cache's slabs
    merged: bool
    shared_cache: str  # the cache whose figures these are ("" when not merged)


def parse_slabinfo(
    text: str, page_size: int, only: Collection[str] | None = None
) -> dict[str, SlabCache]:
    """Every cache of /proc/slabinfo, or those named in `only`; every line is checked
    either way (a malformed one is a SourceError)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("slabinfo - version: 2."):
        raise SourceError("slabinfo does not start with a version 2.x header")
    caches: dict[str, SlabCache] = {}
    for line in lines[1:]:
        if line.startswith("#") or not line.strip():
            continue
        words = line.split()
        # name active num objsize objperslab pagesperslab : tunables l b s : slabdata a n s
        if len(words) != 16 or words[6] != ":" or words[11] != ":":
            raise SourceError(f"malformed slabinfo line: {line[:80]!r}")
        # 14: num_slabs, every slab held
        numbers = (words[1], words[2], words[3], words[5], words[14])
        joined = "".join(numbers)  # each a non-empty word: all is_counter when this is
        if not (joined.isascii() and joined.isdigit() and len(max(numbers, key=len)) <= 20):
            raise SourceError(f"non-numeric slabinfo line: {line[:80]!r}")
        if only is not None and words[0] not in only:
            continue
        active, total, size, pages_per_slab, slabs = map(int, numbers)
        caches[words[0]] = SlabCache(
            name=words[0],
            objects=total,
            active_objects=active,
            object_size=size,
            memory_bytes=slabs * pages_per_slab * page_size,
            merged=False,
            shared_cache="",
        )
    return caches


def parse_first_number(text: str, where: object) -> int:
    words = text.split()
    if not words or not is_counter(words[0]):
        raise SourceError(f"{where} does not start with a number")
    return int(words[0])


def sysfs_cache(
    name: str,
    texts: dict[str, str],
    page_size: int,
    merged: bool = False,
    shared_cache: str = "",
    where: object = None,
) -> SlabCache:
    """One cache's figures from the text of its SYSFS_FILES (file name → contents);
    `where` (its directory) names it in errors."""
    where = where or name
    number = {key: parse_first_number(texts[key], f"{where}/{key}") for key in SYSFS_FILES}
    if number["order"] > MAX_ORDER:
        raise SourceError(f"{where}/order {number['order']} is not a page order")
    return SlabCache(
        name=name,
        objects=number["total_objects"],
        active_objects=number["objects"],
        object_size=number["slab_size"],
        memory_bytes=number["slabs"] * (page_size << number["order"]),
        merged=merged,
        shared_cache=shared_cache,
    )


def read_sysfs_cache(sys_slab: Path, name: str, page_size: int) -> SlabCache | None:
    """Figures of one cache from /sys/kernel/slab (SLUB only); None when absent."""
    entry = sys_slab / name
    if not entry.exists():
        return None
    merged = entry.is_symlink()
    shared = os.path.basename(os.readlink(entry)) if merged else ""
    texts = {key: read_text(entry / key) for key in SYSFS_FILES}
    return sysfs_cache(name, texts, page_size, merged, shared, entry)


def read_slab(procfs: Path, sysfs: Path, page_size: int) -> list[SlabCache]:
    """One entry per cache of CACHES that the kernel has; a cache it lacks is absent."""
    sys_slab = sysfs / "kernel" / "slab"
    # /proc/slabinfo is mode 0400: unreadable without root, then sysfs alone serves.
    # A readable but malformed slabinfo is an error, not a reason to guess.
    try:
        slabinfo_text: str | None = read_text(procfs / "slabinfo")
    except SourceError:
        if not sys_slab.is_dir():
            raise
        slabinfo_text = None
    from_proc = (
        parse_slabinfo(slabinfo_text, page_size, CACHES) if slabinfo_text is not None else {}
    )
    result: list[SlabCache] = []
    for name in CACHES:
        merged = (sys_slab / name).is_symlink()
        if name in from_proc and not merged:
            result.append(from_proc[name])
            continue
        cache = read_sysfs_cache(sys_slab, name, page_size)
        if cache is not None:
            result.append(cache)
    if not result:
        raise SourceError("none of the TIME-WAIT slab caches found in slabinfo or sysfs")
    return result


def render_slab(
    rows: Rows[tuple[SlabCache, ...]], config: Config, detail: DetailView
) -> Iterator[Metric]:
    caches = rows[0][1] if rows else ()
    labels = ["cache", "merged", "shared_cache"]
    spec = [
        ("tcptw_slab_objects", "Object slots allocated in the slab cache", "objects"),
        ("tcptw_slab_active_objects", "Object slots in use in the slab cache", "active_objects"),
        ("tcptw_slab_object_size_bytes", "Bytes per object slot, metadata included", "object_size"),
        ("tcptw_slab_memory_bytes", "Memory held by the cache's slabs", "memory_bytes"),
    ]
    note = '; merged="true": SLUB merged the cache, figures are the shared cache\'s' + LAST_POLL
    for name, text, attribute in spec:
        family = GaugeMetricFamily(name, text + note, labels=labels)
        for cache in caches:
            merged = "true" if cache.merged else "false"
            family.add_metric([cache.name, merged, cache.shared_cache], getattr(cache, attribute))
        yield family


def _read_host(config: Config) -> tuple[SlabCache, ...]:
    return tuple(read_slab(config.procfs, config.sysfs, PAGE_SIZE))


SOURCE = Source[tuple[SlabCache, ...]](
    "slab",
    "tw_sock_TCP/tcp_bind_bucket slab caches (/proc/slabinfo or /sys/kernel/slab)",
    Scope.HOST,
    render_slab,
    read_host=_read_host,
)
