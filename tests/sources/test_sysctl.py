from __future__ import annotations

import itertools
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.engine.poller import wanted
from exporter.netns.context import NetnsContext
from exporter.sources import SourceError, sysctl
from exporter.sources.sysctl import (
    Sysctls,
    parse_int,
    parse_port_list,
    parse_port_range,
    read_sysctls,
)
from tests.conftest import FIXTURES, TREES
from tests.fuzzing import FUZZ, mutated, parses_or_rejects
from tests.kernel import Netns


def read_tree(root: Path) -> Sysctls:
    context = NetnsContext.open(root / "proc", None, None, wanted([sysctl.SOURCE]))
    try:
        return read_sysctls(context)
    finally:
        context.close()


def test_recorded_tree() -> None:
    data = read_tree(TREES / "linux-6.18")
    assert data.port_range == (40000, 40999)
    assert data.reserved_ports == ((40100, 40109), (40500, 40500))
    assert data.reserved_count() == 11
    assert data.values == {
        "tcp_tw_reuse": 0,
        "tcp_tw_reuse_delay": 1.0,
        "tcp_max_tw_buckets": 5000,
        "tcp_timestamps": 1,
        "tcp_fin_timeout": 60,
        "tcp_ehash_entries": -262144,
    }


def test_old_kernel_tree_has_recycle_and_lacks_newer_sysctls() -> None:
    data = read_tree(TREES / "linux-4.9")
    assert data.values == {
        "tcp_tw_reuse": 1,
        "tcp_tw_recycle": 0,
        "tcp_max_tw_buckets": 262144,
        "tcp_timestamps": 1,
        "tcp_fin_timeout": 60,
    }
    assert data.port_range == (32768, 61000)
    assert data.reserved_count() == 0


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("", ()),
        ("\n", ()),
        ("8080\n", ((8080, 8080),)),
        ("9000-9010,8080", ((8080, 8080), (9000, 9010))),
        ("1-5,3-8,9", ((1, 9),)),
    ],
)
def test_port_list(text: str, ranges: tuple[tuple[int, int], ...]) -> None:
    assert parse_port_list(text) == ranges


@pytest.mark.parametrize(
    "name", ["ip_local_port_range", "ip_local_reserved_ports", "tcp_max_tw_buckets"]
)
def test_corrupt_value_is_a_source_error(tree: Path, name: str) -> None:
    target = tree / "proc/sys/net/ipv4" / name
    shutil.copyfile(FIXTURES / "corrupt" / f"{name}-garbage", target)
    with pytest.raises(SourceError, match=name):
        read_tree(tree)


def test_namespace_values_set_by_the_test(netns: Netns) -> None:
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")
    netns.sysctl("net.ipv4.tcp_max_tw_buckets", "5000")
    netns.sysctl("net.ipv4.ip_local_reserved_ports", "40010-40019,40500")
    netns.sysctl("net.ipv4.tcp_fin_timeout", "17")
    with netns.context() as context:
        data = read_sysctls(context)
    assert data.port_range == (40000, 40999)
    assert data.values["tcp_max_tw_buckets"] == 5000
    assert data.values["tcp_fin_timeout"] == 17
    assert data.values["tcp_tw_reuse"] == 0
    assert data.reserved_count() == 11
    host = read_tree(Path("/"))
    assert host.port_range != (40000, 40999)  # per-namespace, not the host's


# -- property tests (hypothesis); fuzz/targets.py runs the same parsers under atheris -----

RECORDED = [
    path.read_bytes()
    for path in sorted(TREES.glob("*/proc/sys/net/ipv4/*"))
    + sorted((FIXTURES / "corrupt").glob("ip_local_*"))
]
_RANGE = st.tuples(st.integers(0, 65535), st.integers(0, 65535)).map(sorted).map(tuple)


@FUZZ
@given(st.lists(_RANGE, max_size=20), st.booleans())
def test_port_list_covers_exactly_the_listed_ports(
    ranges: list[tuple[int, int]], newline: bool
) -> None:
    text = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges) + "\n" * newline
    parsed = parse_port_list(text)
    covered = {p for a, b in parsed for p in range(a, b + 1)}
    assert covered == {p for a, b in ranges for p in range(a, b + 1)}
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(parsed))  # sorted, merged


@FUZZ
@given(st.integers(1, 65535), st.integers(1, 65535), st.sampled_from([" ", "\t", "  "]))
def test_port_range_round_trip(low: int, high: int, sep: str) -> None:
    low, high = sorted((low, high))
    assert parse_port_range(f"{low}{sep}{high}\n") == (low, high)


@FUZZ
@given(st.integers(-(2**63), 2**63 - 1))
def test_integer_round_trip(value: int) -> None:
    assert parse_int("tcp_max_tw_buckets", f"{value}\n") == value


@FUZZ
@given(mutated(st.sampled_from(RECORDED)) | st.binary())
def test_mutated_values_parse_or_raise_source_error(data: bytes) -> None:
    parses_or_rejects(lambda text: parse_int("tcp_tw_reuse", text), data)
    parses_or_rejects(parse_port_range, data)
    for ranges in parses_or_rejects(parse_port_list, data):
        assert all(0 <= a <= b <= 65535 for a, b in ranges)


@pytest.mark.parametrize("text", ["9" * 4400, "1-" + "9" * 4400, "²", "-", ",", "1--2"])
def test_port_list_garbage_is_a_source_error(text: str) -> None:
    with pytest.raises(SourceError):
        parse_port_list(text)


def most_common_by_name(readings: list[Sysctls]) -> dict[str, object]:
    """The reference for usual_values: one Counter per sysctl."""
    counts: dict[str, Counter[object]] = {}
    for data in readings:
        profile: dict[str, object] = {name: data.values.get(name) for name in sysctl.COMPARED}
        profile["ip_local_port_range"] = data.port_range
        profile["ip_local_reserved_ports"] = data.reserved_ports
        for name, value in profile.items():
            counts.setdefault(name, Counter())[value] += 1
    return {name: count.most_common(1)[0][0] for name, count in counts.items()}


_SYSCTLS = st.builds(
    Sysctls,
    st.sampled_from([None, (32768, 60999), (1024, 65535)]),
    st.sampled_from([None, (), ((8080, 8080),)]),
    st.dictionaries(
        st.sampled_from(list(sysctl.INTEGER_SYSCTLS)), st.sampled_from([0, 1, 1.0, 2, 60])
    ),
)


@FUZZ
@given(st.lists(_SYSCTLS, max_size=8))
def test_usual_values_are_the_most_common_first_seen(readings: list[Sysctls]) -> None:
    """Ties go to the value seen first, and of equal values (1 and 1.0) the first seen
    is the one named (notable reasons print it)."""
    expected = most_common_by_name(readings)
    got = sysctl.usual_values(readings)
    assert [(name, repr(value)) for name, value in got.items()] == [
        (name, repr(value)) for name, value in expected.items()
    ]
