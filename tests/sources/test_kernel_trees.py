"""Every recorded kernel replayed without booting it: /proc, /sys and sock_diag recorded by
tests/fixtures/record.py inside each kernel (linux-6.18 on this machine; linux-6.1,
linux-6.12 and linux-5.10 in the guests of scripts/test-kernels --record), each read by
the sources' own parsers and held to what that kernel has and lacks.

The golden expositions of the same trees are in tests/engine/test_collector.py."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2.netlink.diag import inet_diag_msg

from exporter.engine.poller import wanted
from exporter.netns.context import NetnsContext
from exporter.sources import sysctl
from exporter.sources.netstat import parse_netstat
from exporter.sources.slab import read_slab
from exporter.sources.sockdiag.codec import TCP_STATES, TCP_TIME_WAIT, decode_batch
from exporter.sources.sysctl import read_sysctls
from tests.conftest import FIXTURES, TREES
from tests.kernel import SS_STATES

DUMP_NAMES = ("ipv4-listen", "ipv4-other", "ipv6-listen", "ipv6-other")
NEWER_PAWS = {"PAWSOldAck", "PAWSTimewait", "TSEcrRejected"}  # Linux 6.13+ (6.18 here)
ALL_SYSCTLS = {"tcp_tw_reuse", "tcp_max_tw_buckets", "tcp_timestamps", "tcp_fin_timeout"}


@dataclass(frozen=True)
class Kernel:
    """What a recorded kernel has: TcpExt names, the sysctls beyond ALL_SYSCTLS, the
    slab caches of slab.CACHES, tw_sock_TCP's object size, a TIME-WAIT record's length."""

    tcpext: int
    sysctls: frozenset[str]
    caches: frozenset[str]
    tw_object_size: int
    tw_record: int


BOTH_BIND = frozenset({"tw_sock_TCP", "tw_sock_TCPv6", "tcp_bind_bucket", "tcp_bind2_bucket"})
ONE_BIND = BOTH_BIND - {"tcp_bind2_bucket"}  # tcp_bind2_bucket from Linux 6.1
EHASH = frozenset({"tcp_ehash_entries", "tcp_child_ehash_entries"})  # Linux 6.1+
KERNELS = {
    # recorded before the recorder read tcp_child_ehash_entries
    "linux-6.18": Kernel(
        135, frozenset({"tcp_tw_reuse_delay", "tcp_ehash_entries"}), BOTH_BIND, 256, 96
    ),
    "linux-6.12": Kernel(131, EHASH, BOTH_BIND, 256, 96),
    "linux-6.1": Kernel(125, EHASH, BOTH_BIND, 272, 96),
    "linux-5.10": Kernel(123, frozenset(), ONE_BIND, 248, 88),
}


def dumps(kernel: str) -> Path:
    """Where a tree's sock_diag recording is (linux-6.18's predates per-tree recordings)."""
    return FIXTURES / "sockdiag" if kernel == "linux-6.18" else TREES / kernel / "sockdiag"


@pytest.mark.parametrize("kernel", KERNELS)
def test_tcpext_fields_present_and_absent(kernel: str) -> None:
    counters = parse_netstat((TREES / kernel / "proc/net/netstat").read_text())
    assert len(counters) == KERNELS[kernel].tcpext
    newer = KERNELS[kernel].sysctls >= {"tcp_tw_reuse_delay"}
    assert set(counters) & NEWER_PAWS == (NEWER_PAWS if newer else set())
    assert {"TW", "TWRecycled", "TWKilled", "TCPTimeWaitOverflow"} <= set(counters)


@pytest.mark.parametrize("kernel", KERNELS)
def test_sysctls_present_and_absent(kernel: str) -> None:
    context = NetnsContext.open(TREES / kernel / "proc", None, None, wanted([sysctl.SOURCE]))
    try:
        data = read_sysctls(context)
    finally:
        context.close()
    assert set(data.values) == ALL_SYSCTLS | KERNELS[kernel].sysctls
    # what the recorder set in its namespace
    assert data.port_range == (40000, 40999)
    assert data.reserved_ports == ((40100, 40109), (40500, 40500))
    assert data.values["tcp_max_tw_buckets"] == 5000
    if "tcp_tw_reuse_delay" in data.values:
        assert data.values["tcp_tw_reuse_delay"] == 1.0  # 1000 ms, in seconds


@pytest.mark.parametrize("kernel", KERNELS)
def test_slab_caches_present_and_absent(kernel: str) -> None:
    caches = {c.name: c for c in read_slab(TREES / kernel / "proc", TREES / kernel / "sys", 4096)}
    assert set(caches) == KERNELS[kernel].caches
    assert caches["tw_sock_TCP"].object_size == KERNELS[kernel].tw_object_size
    for cache in caches.values():
        assert 0 <= cache.active_objects <= cache.objects


def decoded_states(kernel: str) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for name in DUMP_NAMES:
        meta = json.loads((dumps(kernel) / f"{name}.json").read_text())
        data = (dumps(kernel) / f"{name}.bin").read_bytes()
        batch, end = decode_batch(memoryview(data), len(data), meta["seq"], meta["pid"])
        assert end.done and not end.interrupted
        family = name.split("-")[0]
        for state in batch.state:
            counts[(family, TCP_STATES[int(state)])] += 1
    return counts


@pytest.mark.parametrize("kernel", KERNELS)
def test_dump_states_equal_the_recorded_ss(kernel: str) -> None:
    """The decoded dumps and `ss -tan`, run in the same namespace right after, agree on
    every (state) count; IPv4-mapped sockets are IPv6 in both."""
    ss: Counter[str] = Counter()
    for line in (dumps(kernel) / "ss-tan.txt").read_text().splitlines()[1:]:
        ss[SS_STATES[line.split()[0]]] += 1
    decoded: Counter[str] = Counter()
    for (_, state), n in decoded_states(kernel).items():
        decoded[state] += n
    assert decoded == ss
    assert decoded["time_wait"] == 10 and decoded["listen"] == 4


@pytest.mark.parametrize("kernel", KERNELS)
def test_time_wait_record_length(kernel: str) -> None:
    """A TIME-WAIT record is inet_diag_msg alone on 5.10 (88 bytes with the header) and
    carries INET_DIAG_MARK from 6.1 (96): the decoder reads both."""
    meta = json.loads((dumps(kernel) / "ipv4-other.json").read_text())
    data = (dumps(kernel) / "ipv4-other.bin").read_bytes()
    lengths = set()
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        kind = int.from_bytes(data[offset + 4 : offset + 6], "little")
        if kind == 20 and data[offset + 17] == TCP_TIME_WAIT:  # SOCK_DIAG_BY_FAMILY
            lengths.add(length)
        offset += (length + 3) & ~3
    assert lengths == {KERNELS[kernel].tw_record}, meta


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", DUMP_NAMES)
def test_decoder_matches_pyroute2(kernel: str, name: str) -> None:
    """Every record of every kernel's dumps decodes as pyroute2 decodes it."""
    meta = json.loads((dumps(kernel) / f"{name}.json").read_text())
    data = (dumps(kernel) / f"{name}.bin").read_bytes()
    batch, _ = decode_batch(memoryview(data), len(data), meta["seq"], meta["pid"])
    expected = []
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        if int.from_bytes(data[offset + 4 : offset + 6], "little") == 20:
            msg = inet_diag_msg(data[offset : offset + length])
            msg.decode()
            expected.append((msg["idiag_state"], msg["idiag_sport"], msg["idiag_dport"]))
        offset += (length + 3) & ~3
    ours = [
        (int(batch.state[i]), int(batch.sport[i]), int(batch.dport[i])) for i in range(len(batch))
    ]
    assert ours == expected and len(ours) > 0
