from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.sources import PAGE_SIZE, SourceError
from exporter.sources.slab import (
    CACHES,
    MAX_ORDER,
    SYSFS_FILES,
    SlabCache,
    parse_slabinfo,
    read_slab,
    read_sysfs_cache,
    sysfs_cache,
)
from tests import oracles
from tests.conftest import FIXTURES, TREES, skip_or_fail
from tests.fuzzing import FUZZ, mutated
from tests.fuzzing import texts as decodings


def by_name(root: Path) -> dict[str, SlabCache]:
    return {c.name: c for c in read_slab(root / "proc", root / "sys", 4096)}


def test_recorded_tree_reports_merged_caches_from_sysfs() -> None:
    caches = by_name(TREES / "linux-6.18")
    assert set(caches) == set(CACHES)
    tw = caches["tw_sock_TCP"]
    assert tw.merged is False and tw.shared_cache == ""
    assert tw.object_size == 256
    bind = caches["tcp_bind_bucket"]
    assert bind.merged is True and bind.shared_cache == ":A-0000128"
    # The shared cache's figures (sys/kernel/slab/:A-0000128: 8 slabs of order 0).
    assert (bind.objects, bind.active_objects, bind.object_size) == (256, 256, 128)
    assert bind.memory_bytes == 8 * 4096
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


@pytest.mark.kernel  # root: /sys/kernel/slab/*/slabs are 0400
def test_live_figures_equal_sys_kernel_slab() -> None:
    """Host-wide caches move all the time: retry until sysfs reads the same before and
    after our read, then the figures must be equal."""
    if not Path("/sys/kernel/slab").is_dir():
        skip_or_fail("needs SLUB's /sys/kernel/slab")
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


# -- property tests (hypothesis); fuzz/targets.py runs the same parsers under atheris -----

RECORDED = [
    (TREES / "linux-6.18/proc/slabinfo").read_bytes(),
    (TREES / "linux-4.9/proc/slabinfo").read_bytes(),
]
COUNT = st.integers(0, 2**64 - 1)
_CACHE_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_:.-]{0,30}", fullmatch=True)


@st.composite
def slabinfo_files(draw: st.DrawFn) -> tuple[str, dict[str, SlabCache], int]:
    page = draw(st.sampled_from([4096, 16384, 65536]))
    lines = ["slabinfo - version: 2.1", "# name <active_objs> <num_objs> ..."]
    caches = {}
    for name in draw(st.lists(_CACHE_NAME, unique=True, max_size=8)):
        active, total, size, per_slab, pages, slabs = (draw(COUNT) for _ in range(6))
        lines.append(
            f"{name:<20} {active} {total} {size} {per_slab} {pages} : tunables 0 0 0"
            f" : slabdata {draw(COUNT)} {slabs} 0"
        )
        caches[name] = SlabCache(name, total, active, size, slabs * pages * page, False, "")
    return "\n".join(lines) + "\n", caches, page


@FUZZ
@given(slabinfo_files())
def test_generated_slabinfo_parses_to_exactly_its_caches(
    doc: tuple[str, dict[str, SlabCache], int],
) -> None:
    text, caches, page = doc
    assert parse_slabinfo(text, page) == caches


@FUZZ
@given(mutated(st.sampled_from(RECORDED)) | st.binary())
def test_mutated_slabinfo_parses_or_raises_source_error(data: bytes) -> None:
    for text in decodings(data):
        try:
            caches = parse_slabinfo(text, 4096)
        except SourceError:
            continue
        assert caches == oracles.slabinfo_caches(text, 4096)


def parsed(text: str, only: tuple[str, ...] | None) -> dict[str, SlabCache] | str:
    try:
        return parse_slabinfo(text, 4096, only)
    except SourceError as exc:
        return str(exc)


@FUZZ
@given(
    mutated(st.sampled_from(RECORDED)) | slabinfo_files().map(lambda d: d[0].encode()),
    st.lists(_CACHE_NAME | st.sampled_from(CACHES), max_size=4),
)
def test_only_the_named_caches_are_those_of_the_whole_file(data: bytes, names: list[str]) -> None:
    """read_slab builds only CACHES: the same figures, and the same error for any line."""
    only = (*CACHES, *names)
    for text in decodings(data):
        whole = parsed(text, None)
        expected = (
            whole
            if isinstance(whole, str)
            else {name: cache for name, cache in whole.items() if name in only}
        )
        assert parsed(text, only) == expected


@FUZZ
@given(
    st.fixed_dictionaries({key: COUNT for key in SYSFS_FILES}).filter(
        lambda values: values["order"] <= MAX_ORDER
    )
)
def test_generated_sysfs_cache_figures(values: dict[str, int]) -> None:
    texts = {key: f"{value} N0={value}\n" for key, value in values.items()}
    cache = sysfs_cache("tw_sock_TCP", texts, 4096)
    assert (cache.objects, cache.active_objects, cache.object_size) == (
        values["total_objects"],
        values["objects"],
        values["slab_size"],
    )
    assert cache.memory_bytes == values["slabs"] * 4096 * 2 ** values["order"]


@FUZZ
@given(st.lists(mutated(st.sampled_from([b"0\n", b"1 N0=1\n", b"3\n", b"256\n"])), min_size=5))
def test_mutated_sysfs_files_give_figures_or_source_error(files: list[bytes]) -> None:
    texts = {
        k: v.decode("utf-8", "surrogateescape") for k, v in zip(SYSFS_FILES, files[:5], strict=True)
    }
    try:
        cache = sysfs_cache("tw_sock_TCP", texts, 4096)
    except SourceError:
        return
    assert cache == oracles.sysfs_cache("tw_sock_TCP", texts, 4096)


@pytest.mark.parametrize("order", ["64", "99999999999999999999", "9" * 4400, "²"])
def test_sysfs_order_that_is_no_page_order_is_a_source_error(order: str) -> None:
    """Found by fuzzing: `page_size << order` with order 10**20 from a corrupt sysfs file
    never returned (an unbounded allocation); "²" and 4400 digits raised ValueError."""
    texts = {key: "1\n" for key in SYSFS_FILES} | {"order": order + "\n"}
    with pytest.raises(SourceError, match="order"):
        sysfs_cache("tw_sock_TCP", texts, 4096)


@pytest.mark.parametrize("value", ["²", "9" * 4400])
def test_slabinfo_number_int_cannot_read_is_a_source_error(value: str) -> None:
    line = f"tw_sock_TCP {value} 1 256 16 1 : tunables 0 0 0 : slabdata 1 1 0"
    with pytest.raises(SourceError, match="non-numeric"):
        parse_slabinfo(f"slabinfo - version: 2.1\n{line}\n", 4096)


def test_memory_counts_every_slab_not_only_active_ones() -> None:
    """Found by the generated-slabinfo property: memory came from active_slabs, but the
    cache holds num_slabs slabs (they differ under SLAB; SLUB prints the same number)."""
    line = "tw_sock_TCP 10 30 256 15 1 : tunables 0 0 0 : slabdata 1 2 0"
    cache = parse_slabinfo(f"slabinfo - version: 2.1\n{line}\n", 4096)["tw_sock_TCP"]
    assert cache.memory_bytes == 2 * 4096
