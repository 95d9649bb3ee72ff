"""Bucket aggregation: against `ss` in real namespaces, and against a brute-force model on
generated socket tables (hypothesis)."""

from __future__ import annotations

import ipaddress
import socket
import struct
import subprocess
from collections import Counter

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from exporter.sources.sockdiag.buckets import BucketOptions, BucketTally
from exporter.sources.sockdiag.capacity import PortPolicy, summarize
from exporter.sources.sockdiag.codec import (
    TCP_LISTEN,
    TCP_TIME_WAIT,
    Batch,
    DiagProtocolError,
    DumpInterrupted,
    decode_batch,
)
from exporter.sources.sockdiag.tally import SocketTally
from tests import oracles
from tests.exposition import Key, samples, series
from tests.fuzzing import mutated
from tests.kernel import Netns, connect, server_closes_first, time_wait_pairs
from tests.sources.sockdiag.test_codec import DUMPS
from tests.sources.sockdiag.test_codec import NAMES as DUMP_NAMES


def labels_of(parsed: dict[Key, float], metric: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(v for k, v in sorted(key) if k != "netns"): count
        for key, count in series(parsed, metric).items()
    }


def test_inbound_buckets_equal_the_seed_ss_grouping(netns: Netns) -> None:
    listener = netns.listen("127.0.0.1", 8080)
    for i in range(1, 6):
        server_closes_first(netns, listener, i, local=f"127.0.1.{i}")  # TIME-WAIT here
        time_wait_pairs(netns, listener, 6 - i, local=f"127.0.1.{i}")  # TIME-WAIT there
        connect(netns, f"127.0.1.{i}", ("127.0.0.1", 8080))
        netns.held.append(listener.accept()[0])
    # ss -tan 'sport = :8080' | awk '{print $(NF)" "$(NF-1)}' | sed 's/:[^ ]*//g' | sort | uniq -c
    ss = netns.run("ss", "-tanH", "sport = :8080").stdout
    pipeline = subprocess.run(
        "awk '$1 != \"LISTEN\" {print $(NF)\" \"$(NF-1)}' | sed 's/:[^ ]*//g' | sort | uniq -c",
        input=ss,
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seed = {}
    for line in pipeline.splitlines():
        count, remote, local = line.split()
        seed[(local, "8080", remote)] = int(count)
    parsed = samples(netns.exporter("dump").stdout)
    assert labels_of(parsed, "tcptw_inbound_sockets") == seed
    assert seed == {("127.0.0.1", "8080", f"127.0.1.{i}"): i + 1 for i in range(1, 6)}
    timewait = labels_of(parsed, "tcptw_inbound_timewait_sockets")
    assert timewait == {("127.0.0.1", "8080", f"127.0.1.{i}"): i for i in range(1, 6)}
    outbound = labels_of(parsed, "tcptw_outbound_ports_used")
    assert outbound == {(f"127.0.1.{i}", "127.0.0.1", "8080"): 7 - i for i in range(1, 6)}


def test_ipv6_and_ipv4_mapped_sockets(netns: Netns) -> None:
    v6 = netns.listen("::1", 8443, family=socket.AF_INET6)
    time_wait_pairs(netns, v6, 3, family=socket.AF_INET6)
    server_closes_first(netns, v6, 2, family=socket.AF_INET6)
    dual = netns.listen("::", 8081, family=socket.AF_INET6, v6only=False)
    connect(netns, "127.0.0.1", ("127.0.0.1", 8081))  # IPv4 client, AF_INET6 accepted socket
    netns.held.append(dual.accept()[0])
    v4 = netns.listen("127.0.0.1", 8080)
    mapped = connect(netns, "", ("::ffff:127.0.0.1", 8080), family=socket.AF_INET6)
    netns.held.append(v4.accept()[0])
    connect(netns, "127.0.0.1", ("127.0.0.1", 8080))
    netns.held.append(v4.accept()[0])
    assert mapped.family == socket.AF_INET6
    parsed = samples(netns.exporter("dump").stdout)
    assert labels_of(parsed, "tcptw_outbound_ports_used") == {
        ("::1", "::1", "8443"): 3,
        ("127.0.0.1", "127.0.0.1", "8081"): 1,
        ("127.0.0.1", "127.0.0.1", "8080"): 2,  # the mapped socket shares the IPv4 bucket
    }
    assert labels_of(parsed, "tcptw_inbound_sockets") == {
        ("::1", "8443", "::1"): 2,
        ("127.0.0.1", "8081", "127.0.0.1"): 1,  # accepted as ::ffff:127.0.0.1
        ("127.0.0.1", "8080", "127.0.0.1"): 2,
    }


def test_prefix_grouping_and_inbound_port_filter(netns: Netns) -> None:
    listener = netns.listen("0.0.0.0", 8080)
    other = netns.listen("0.0.0.0", 9090)
    for last in (1, 2, 200):
        time_wait_pairs(netns, listener, 1, local="127.0.0.1")
        connect(netns, "", (f"127.0.5.{last}", 8080))
        netns.held.append(listener.accept()[0])
    connect(netns, "", ("127.0.0.1", 9090))
    netns.held.append(other.accept()[0])
    parsed = samples(
        netns.exporter(
            "dump", "--buckets.ipv4-prefix", "24", "--buckets.inbound-ports", "8080"
        ).stdout
    )
    outbound = labels_of(parsed, "tcptw_outbound_ports_used")
    assert outbound[("127.0.0.1", "127.0.5.0/24", "8080")] == 3
    inbound = labels_of(parsed, "tcptw_inbound_sockets")
    assert {key[1] for key in inbound} == {"8080"}  # 9090's inbound bucket is not kept


def test_ipv6_prefix_grouping() -> None:
    options = BucketOptions(ipv6_prefix=64)
    tally = BucketTally((LOW, HIGH), options)
    local = address_bytes("v6", 0, 1)
    rows = [
        ("v6", TCP_TIME_WAIT, local, LOW + i, address_bytes("v6", 0, (0x20010DB8 << 96) | i), 443)
        for i in range(1, 4)
    ] + [("v6", 1, local, LOW + 9, address_bytes("v6", 0, (0x20010DB9 << 96) | 1), 443)]
    tally.add(make_batch(rows))
    usage = summarize(tally, PortPolicy((LOW, HIGH), (), 0, 1), options)
    assert {(r.remote_addr, r.sockets, r.timewait) for r in usage.outbound} == {
        ("2001:db8::/64", 3, 3),
        ("2001:db9::/64", 1, 0),
    }


# -- property-based tests on generated socket tables -------------------------------------

LOW, HIGH = 40000, 40011
ports = st.one_of(st.integers(LOW - 2, HIGH + 2), st.sampled_from([80, 8080]))
# Few addresses (shared buckets, loopback) or many (every bucket distinct, not loopback).
v4_addr = st.one_of(st.integers(0x7F000001, 0x7F000003), st.integers(0x0A000000, 0x0AFFFFFF))
v6_addr = st.one_of(
    st.sampled_from([1, 0x20010DB8 << 96 | 1, 0x20010DB8 << 96 | 2]),
    st.integers(0, (1 << 128) - 1),
)
Sock = tuple[str, int, int, int, int, int, int, int]  # kind, state, local 4/6, port, remote
Listener = tuple[str, bool, int, int]  # kind, wildcard, address, port
sock = st.tuples(
    st.sampled_from(["v4", "v6", "mapped"]),
    st.sampled_from([1, 6, 8]),
    v4_addr,
    v6_addr,
    ports,
    v4_addr,
    v6_addr,
    ports,
)
listener = st.tuples(st.sampled_from(["v4", "v6"]), st.booleans(), v4_addr, ports)


def address_bytes(kind: str, a4: int, a6: int) -> bytes:
    if kind == "v4":
        return a4.to_bytes(4, "big") + bytes(12)
    if kind == "mapped":
        return bytes(10) + b"\xff\xff" + a4.to_bytes(4, "big")
    return a6.to_bytes(16, "big")


def make_batch(rows: list[tuple[str, int, bytes, int, bytes, int]]) -> Batch:
    return Batch(
        family=np.array(
            [socket.AF_INET if r[0] == "v4" else socket.AF_INET6 for r in rows], dtype=np.uint8
        ),
        state=np.array([r[1] for r in rows], dtype=np.uint8),
        sport=np.array([r[3] for r in rows], dtype=np.uint16),
        dport=np.array([r[5] for r in rows], dtype=np.uint16),
        src=np.frombuffer(b"".join(r[2] for r in rows), dtype="<u4").reshape(-1, 4),
        dst=np.frombuffer(b"".join(r[4] for r in rows), dtype="<u4").reshape(-1, 4),
    )


@settings(max_examples=200, deadline=None)
@given(
    sockets=st.lists(sock, max_size=300),
    listeners=st.lists(listener, max_size=6),
    reserved=st.lists(st.tuples(st.integers(LOW - 3, HIGH), st.integers(0, 8)), max_size=3),
    top=st.integers(0, 8),
    min_sockets=st.integers(1, 3),
    tw_reuse=st.integers(0, 2),
    prefixes=st.tuples(st.sampled_from([32, 24, 8]), st.sampled_from([128, 64])),
    batches=st.integers(1, 4),
    index_limit=st.sampled_from([1 << 15, 1]),  # 1: the wide keys of many local addresses
)
# Found by hypothesis: wide keys of two local ports that differ in their lowest bit were
# folded together (the TIME-WAIT fold compared 11 of the 12 key bytes).
@example(
    sockets=[("v4", 1, 0x7F000001, 1, 39998, 0x7F000001, 1, 39998)] * 6
    + [("v4", 1, 0x7F000001, 1, 39999, 0x7F000001, 1, 39998),
       ("v4", 1, 0x7F000002, 1, 39998, 0x7F000001, 1, 39998)],
    listeners=[], reserved=[], top=1, min_sockets=1, tw_reuse=0,
    prefixes=(32, 128), batches=1, index_limit=1,
)  # fmt: skip
def test_aggregation_matches_brute_force(
    sockets: list[Sock],
    listeners: list[Listener],
    reserved: list[tuple[int, int]],
    top: int,
    min_sockets: int,
    tw_reuse: int,
    prefixes: tuple[int, int],
    batches: int,
    index_limit: int,
) -> None:
    options = BucketOptions(
        top=top, min_sockets=min_sockets, ipv4_prefix=prefixes[0], ipv6_prefix=prefixes[1]
    )
    reserved_ranges = tuple((a, a + n) for a, n in reserved)
    policy = PortPolicy((LOW, HIGH), reserved_ranges, tw_reuse, 1)
    listen_rows = []
    for kind, wildcard, a4, port in listeners:
        addr = address_bytes(kind, 0 if wildcard else a4, 0 if wildcard else 1)
        listen_rows.append((kind, TCP_LISTEN, addr, port, bytes(16), 0))
    rows = [
        (kind, state, address_bytes(kind, la4, la6), lport, address_bytes(kind, ra4, ra6), rport)
        for kind, state, la4, la6, lport, ra4, ra6, rport in sockets
    ]
    tally = BucketTally((LOW, HIGH), options)
    tally.index_limit = index_limit
    if listen_rows:
        tally.add(make_batch(listen_rows))
    step = -(-len(rows) // batches) if rows else 1
    for start in range(0, len(rows), step):  # several runs to merge
        tally.add(make_batch(rows[start : start + step]))
    usage = summarize(tally, policy, options)

    # Brute force: one socket at a time, the rules as the README states them.
    def canon(kind: str, raw: bytes) -> str:
        ip = ipaddress.ip_address(raw[:4] if kind == "v4" else raw)
        mapped = getattr(ip, "ipv4_mapped", None)
        return str(mapped or ip)

    def network(kind: str, raw: bytes) -> str:
        """The remote label: the address, or its network under the prefix options."""
        ip = ipaddress.ip_address(canon(kind, raw))
        bits = prefixes[0] if ip.version == 4 else prefixes[1]
        if bits == ip.max_prefixlen:
            return str(ip)
        return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))

    owners = {(canon(k, a), p) for k, _, a, p, _, _ in listen_rows}
    wild = {p for k, _, a, p, _, _ in listen_rows if not any(a)}
    reserved_ports = {p for a, b in reserved_ranges for p in range(a, b + 1)}
    out: Counter[tuple[str, str, str]] = Counter()
    out_tw: Counter[tuple[str, str, str]] = Counter()
    inn: Counter[tuple[str, str, str]] = Counter()
    used_ports = {p for _, _, _, p, _, _ in listen_rows if LOW <= p <= HIGH}
    for kind, state, local, lport, remote, rport in rows:
        la, ra = canon(kind, local), network(kind, remote)
        if LOW <= lport <= HIGH:
            used_ports.add(lport)
        if LOW <= lport <= HIGH and lport not in wild and (la, lport) not in owners:
            out[(la, ra, str(rport))] += 1
            out_tw[(la, ra, str(rport))] += state == TCP_TIME_WAIT
        else:
            inn[(la, str(lport), ra)] += 1
    listen_ports = {p for _, _, _, p, _, _ in listen_rows}
    capacity = len(set(range(LOW, HIGH + 1)) - reserved_ports - listen_ports)
    assert usage.capacity == capacity
    assert usage.ephemeral_available == len(set(range(LOW, HIGH + 1)) - reserved_ports)
    assert usage.ephemeral_in_use == len(used_ports)

    def loopback(address: str) -> bool:  # a bucket's remote is its (masked) network
        return ipaddress.ip_network(address, strict=False).network_address.is_loopback

    expected_max = 0.0 if capacity else 1.0  # no port left: the next connect() fails
    for key, n in out.items():
        reusable = tw_reuse == 1 or (tw_reuse == 2 and (loopback(key[0]) or loopback(key[1])))
        used = n - (out_tw[key] if reusable else 0)
        if capacity:
            expected_max = max(expected_max, used / capacity)
    assert usage.max_ratio == expected_max

    kept = {(r.local_addr, r.remote_addr, r.remote_port): r for r in usage.outbound}
    rest = usage.outbound_rest
    assert sum(r.sockets for r in usage.outbound) + rest.sockets == sum(out.values())
    assert sum(r.timewait for r in usage.outbound) + rest.timewait == sum(out_tw.values())
    n_kept = min(top, sum(1 for n in out.values() if n >= min_sockets))
    assert len(usage.outbound) == n_kept
    assert rest.buckets == len(out) - n_kept
    assert rest.capacity == capacity * rest.buckets
    for key, row in kept.items():
        assert (row.sockets, row.timewait, row.capacity) == (out[key], out_tw[key], capacity)
    largest = sorted(out.values(), reverse=True)[:n_kept]
    assert [r.sockets for r in usage.outbound] == largest
    assert sum(r.sockets for r in usage.inbound) + usage.inbound_rest.sockets == sum(inn.values())
    for inbound_row in usage.inbound:
        local_key = (inbound_row.local_addr, inbound_row.local_port, inbound_row.remote_addr)
        assert inn[local_key] == inbound_row.sockets


# -- whatever the decoder returns must aggregate (fuzz/targets.py "tally" under atheris) --


@settings(max_examples=100, deadline=None)
@given(
    mutated(st.sampled_from([(DUMPS / f"{n}.bin").read_bytes() for n in DUMP_NAMES])),
    st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(sorted),
    st.integers(0, 32),
    st.integers(0, 128),
    st.none() | st.frozensets(st.integers(1, 65535), max_size=4),
    st.booleans(),
)
def test_any_decoded_records_aggregate(
    data: bytes,
    port_range: list[int],
    v4_prefix: int,
    v6_prefix: int,
    inbound: frozenset[int] | None,
    wide: bool,
) -> None:
    """Records with any family, state, ports and addresses (mutated recorded dumps that
    still decode) are counted and bucketed without an exception."""
    seq, pid = struct.unpack_from("=II", data, 8) if len(data) >= 16 else (7, 99)
    try:
        batch, _ = decode_batch(memoryview(data), len(data), seq, pid)
    except (DiagProtocolError, DumpInterrupted):
        return
    options = BucketOptions(
        top=3, ipv4_prefix=v4_prefix, ipv6_prefix=v6_prefix, inbound_ports=inbound or None
    )
    tally = SocketTally(PortPolicy((port_range[0], port_range[1]), (), 0, 1), options)
    if wide and tally._buckets is not None:
        tally._buckets.index_limit = 1  # the wide-key path
    tally.add(batch)
    tally.add(batch)
    stats = tally.result(())
    assert stats.ports is not None
    assert stats.states == oracles.state_counts([batch, batch])
