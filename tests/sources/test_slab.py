from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from exporter.sources import PAGE_SIZE, SourceError
from exporter.sources.slab import CACHES, parse_slabinfo, read_slab, read_sysfs_cache
from tests.conftest import FIXTURES, TREES


def by_name(root: Path) -> dict[str, object]:
    return {c.name: c for c in read_slab(root / "proc", root / "sys", 4096)}


def test_recorded_tree_reports_merged_caches_from_sysfs() -> None:
    caches = by_name(TREES / "linux-6.18")
    assert set(caches) == set(CACHES)
    tw = caches["tw_sock_TCP"]
    assert tw.merged is False and tw.shared_cache == ""
    assert tw.object_size == 256
    bind = caches["tcp_bind_bucket"]
    assert bind.merged is True and bind.shared_cache == ":A-0000128"
    assert bind.objects > 0 and bind.memory_bytes > 0  # never 0 for a merged cache
    bind2 = caches["tcp_bind2_bucket"]
    assert (bind2.objects, bind2.memory_bytes) == (bind.objects, bind.memory_bytes)


def test_old_kernel_without_sysfs_and_without_bind2() -> None:
    caches = by_name(TREES / "linux-4.9")
    assert set(caches) == {"tw_sock_TCP", "tcp_bind_bucket"}
    tw = caches["tw_sock_TCP"]
    assert (tw.objects, tw.active_objects, tw.object_size) == (50955, 49725, 256)
    assert tw.memory_bytes == 3397 * 4096
    assert caches["tcp_bind_bucket"].merged is False


def test_unreadable_slabinfo_falls_back_to_sysfs(tree: Path) -> None:
    (tree / "proc/slabinfo").unlink()
    caches = by_name(tree)
    assert caches["tw_sock_TCP"].object_size == 256
    assert set(caches) == set(CACHES)


@pytest.mark.parametrize("name", ["slabinfo-truncated", "slabinfo-non-numeric"])
def test_corrupt_slabinfo_is_an_error(tree: Path, name: str) -> None:
    shutil.copyfile(FIXTURES / "corrupt" / name, tree / "proc/slabinfo")
    with pytest.raises(SourceError, match="slabinfo"):
        read_slab(tree / "proc", tree / "sys", 4096)


def test_no_source_at_all_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        read_slab(tmp_path, tmp_path, 4096)


def test_header_must_be_version_2() -> None:
    with pytest.raises(SourceError, match="version"):
        parse_slabinfo("slabinfo - version: 1.1\n", 4096)


def test_live_figures_equal_sys_kernel_slab() -> None:
    """Host-wide caches move all the time: retry until sysfs reads the same before and
    after our read, then the figures must be equal."""
    if not Path("/sys/kernel/slab").is_dir() or os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("needs root and SLUB's /sys/kernel/slab")
        pytest.skip("needs root and SLUB's /sys/kernel/slab")
    sysfs = Path("/sys/kernel/slab")
    for _ in range(50):
        before = {n: read_sysfs_cache(sysfs, n, PAGE_SIZE) for n in CACHES}
        ours = {c.name: c for c in read_slab(Path("/proc"), Path("/sys"), PAGE_SIZE)}
        after = {n: read_sysfs_cache(sysfs, n, PAGE_SIZE) for n in CACHES}
        if before == after:
            break
    else:
        pytest.fail("slab caches never held still for a read")
    for name, cache in before.items():
        if cache is None:
            assert name not in ours
            continue
        mine = ours[name]
        assert (mine.objects, mine.active_objects, mine.object_size, mine.memory_bytes) == (
            cache.objects,
            cache.active_objects,
            cache.object_size,
            cache.memory_bytes,
        ), name
        assert mine.merged == (sysfs / name).is_symlink()
