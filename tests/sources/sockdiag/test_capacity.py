"""Port capacity against the kernel: connect() until EADDRNOTAVAIL and compare."""

from __future__ import annotations

import errno
import socket
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.sources.netstat import parse_netstat
from exporter.sources.sockdiag.buckets import Buckets
from exporter.sources.sockdiag.capacity import (
    Folded,
    InboundRow,
    OutboundRow,
    PortPolicy,
    PortUsage,
    ephemeral_available,
    outbound_capacity,
    select_node_top,
    timewait_reusable,
)
from tests.exposition import samples, series, value
from tests.kernel import Netns, connect

IP_BIND_ADDRESS_NO_PORT = 24  # include/uapi/linux/in.h


def client(netns: Netns, local: str, remote: tuple[str, int]) -> socket.socket:
    """connect() from `local` with the port left to connect() (as an unbound socket would)."""
    sock = netns.new_socket()
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((local, 0))
    sock.connect(remote)
    return sock


def exhaust(netns: Netns, listener: socket.socket, close_every: int, limit: int = 400) -> int:
    """Connect 127.0.0.1 → listener until EADDRNOTAVAIL; every `close_every`-th connection
    is closed by the client first (TIME-WAIT), the others stay ESTABLISHED."""
    remote = listener.getsockname()
    for count in range(limit):
        try:
            sock = client(netns, "127.0.0.1", remote)
        except OSError as exc:
            assert exc.errno == errno.EADDRNOTAVAIL, exc
            return count
        accepted, _ = listener.accept()
        if close_every and count % close_every == 0:
            sock.close()
            accepted.recv(1)
            accepted.close()
        else:
            netns.held.append(accepted)
    raise AssertionError(f"connect() never failed in {limit} attempts")


def exhaustion_namespace(netns: Netns, tw_reuse: str) -> socket.socket:
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40099")
    netns.sysctl("net.ipv4.ip_local_reserved_ports", "40000-40009")
    netns.sysctl("net.ipv4.tcp_tw_reuse", tw_reuse)
    netns.listen("127.0.0.9", 40050)  # a bind()-owned port inside the range
    return netns.listen("127.0.0.2", 8080)


def bucket(remote_port: str) -> dict[str, str]:
    return {"local_addr": "127.0.0.1", "remote_addr": "127.0.0.2", "remote_port": remote_port}


def test_used_equals_capacity_when_connect_fails(netns: Netns) -> None:
    listener = exhaustion_namespace(netns, "0")
    connected = exhaust(netns, listener, close_every=3)
    other = netns.listen("127.0.0.2", 8081)
    for _ in range(5):  # ports are shared across destinations: these still succeed
        client(netns, "127.0.0.1", other.getsockname())
        netns.held.append(other.accept()[0])
    parsed = samples(netns.exporter("dump").stdout)
    ns = {"netns": netns.name}
    assert connected == 89  # 100 ports - 10 reserved - 1 held by the listener
    assert value(parsed, "tcptw_outbound_ports_capacity", **ns, **bucket("8080")) == connected
    assert value(parsed, "tcptw_outbound_ports_used", **ns, **bucket("8080")) == connected
    assert value(parsed, "tcptw_outbound_timewait_sockets", **ns, **bucket("8080")) == 30
    assert value(parsed, "tcptw_outbound_port_utilization_max_ratio", **ns) == 1.0
    assert value(parsed, "tcptw_outbound_ports_used", **ns, **bucket("8081")) == 5
    assert value(parsed, "tcptw_outbound_ports_capacity", **ns, **bucket("8081")) == 89
    assert value(parsed, "tcptw_ephemeral_ports_available", **ns) == 90
    assert value(parsed, "tcptw_ephemeral_ports_in_use", **ns) == 90  # 89 + the listener's
    states = netns.ss_states()
    assert states[("ipv4", "time_wait")] == 30


def reuse_wait(netns: Netns) -> float:
    """How long after a TIME-WAIT last heard from its peer connect() may take it over
    (tcp_twsk_unique, net/ipv4/tcp_ipv4.c): tcp_tw_reuse_delay from Linux 6.13; before,
    once the kernel's seconds clock (ktime_get_seconds) has ticked past the second it heard
    in, which is at most 1 s later, whichever second that was."""
    try:
        return int(netns.read("sys/net/ipv4/tcp_tw_reuse_delay")) / 1000
    except FileNotFoundError:
        return 1.0


def test_tw_reuse_2_lets_loopback_connects_take_over_time_wait(netns: Netns) -> None:
    """The bucket is filled with tcp_tw_reuse 0, so that no connect() of the fill can take
    over an earlier TIME-WAIT (before 6.13 one may as soon as the seconds clock ticks, which
    a slow fill crosses), then 2 is set; the takeover waits from the fill's end for the
    longest the kernel's rule can take, so no outcome depends on the clock's phase."""
    listener = exhaustion_namespace(netns, "0")
    remote = listener.getsockname()
    for _ in range(89):  # fill the bucket with TIME-WAIT only
        sock = client(netns, "127.0.0.1", remote)
        accepted, _ = listener.accept()
        sock.close()
        accepted.recv(1)
        accepted.close()
    filled = time.monotonic()  # every TIME-WAIT has heard its last segment by now
    netns.sysctl("net.ipv4.tcp_tw_reuse", "2")
    parsed = samples(netns.exporter("dump").stdout)
    ns = {"netns": netns.name}
    assert value(parsed, "tcptw_outbound_ports_used", **ns, **bucket("8080")) == 89
    assert value(parsed, "tcptw_outbound_timewait_sockets", **ns, **bucket("8080")) == 89
    # Reusable (after tcp_tw_reuse_delay, or the seconds clock's next tick before 6.13):
    # none of them counts as used.
    assert value(parsed, "tcptw_outbound_port_utilization_max_ratio", **ns) == 0.0
    recycled = parse_netstat(netns.read("net/netstat"))["TWRecycled"]
    # Under test: past the kernel's reuse rule, every TIME-WAIT is reusable.
    time.sleep(max(0.0, filled + reuse_wait(netns) + 0.2 - time.monotonic()))
    taken = client(netns, "127.0.0.1", remote)  # no EADDRNOTAVAIL: a TIME-WAIT is taken over
    netns.held.append(listener.accept()[0])
    assert taken.getsockname()[1] in range(40010, 40100)
    assert parse_netstat(netns.read("net/netstat"))["TWRecycled"] == recycled + 1
    parsed = samples(netns.exporter("dump").stdout)
    assert value(parsed, "tcptw_outbound_ports_used", **ns, **bucket("8080")) == 89
    assert (
        value(parsed, "tcptw_outbound_port_utilization_max_ratio", **ns) == 1 / 89
    )  # the one ESTABLISHED socket


def test_top_k_folds_into_other_and_keeps_sums(netns: Netns) -> None:
    netns.sysctl("net.ipv4.ip_local_port_range", "20000 60999")
    listener = netns.listen("0.0.0.0", 8080, backlog=4096)
    expected: dict[str, int] = {}
    for i in range(300):
        destination = f"127.0.{2 + i // 250}.{1 + i % 250}"
        count = 1 + (i * 7) % 5 + (12 if i == 123 else 0)  # one clear maximum
        for _ in range(count):
            sock = connect(netns, "", (destination, 8080))
            accepted, _ = listener.accept()
            sock.close()
            accepted.recv(1)
            accepted.close()
        expected[destination] = count
    total = sum(expected.values())
    capacity = 41000
    for args, kept in (
        (("--buckets.top", "20"), 20),
        (("--buckets.top", "1", "--buckets.min-sockets", "1000"), 0),
    ):
        parsed = samples(netns.exporter("dump", *args).stdout)
        ns = {"netns": netns.name}
        for metric in ("tcptw_outbound_ports_used", "tcptw_outbound_timewait_sockets"):
            rows = series(parsed, metric)
            assert len(rows) == kept + 1
            assert sum(rows.values()) == total
        assert value(parsed, "tcptw_buckets_folded", direction="outbound") == 300 - kept
        other = {"local_addr": "other", "remote_addr": "other", "remote_port": "other"}
        top = sorted(expected.values(), reverse=True)[:kept]
        assert value(parsed, "tcptw_outbound_ports_used", **ns, **other) == total - sum(top)
        assert value(parsed, "tcptw_outbound_ports_capacity", **ns, **other) == capacity * (
            300 - kept
        )
        true_max = max(expected.values()) / capacity  # computed before folding
        assert value(parsed, "tcptw_outbound_port_utilization_max_ratio", **ns) == true_max


def policy(
    low: int = 40000,
    high: int = 40099,
    reserved: tuple[tuple[int, int], ...] = (),
    tw_reuse: int = 0,
    timestamps: int = 1,
) -> PortPolicy:
    return PortPolicy((low, high), reserved, tw_reuse, timestamps)


def test_capacity_arithmetic() -> None:
    listen = np.zeros(65536, dtype=bool)
    listen[[40050, 40005, 8080]] = True  # 40005 is also reserved: not subtracted twice
    rule = policy(reserved=((39990, 40009), (40099, 40200)))
    assert ephemeral_available(rule) == 100 - 10 - 1
    assert outbound_capacity(rule, listen) == 100 - 10 - 1 - 1


@pytest.mark.parametrize(
    ("tw_reuse", "timestamps", "local", "remote", "reusable"),
    [
        (0, 1, 0x7F000001, 0x7F000002, False),
        (1, 1, 0x0A000001, 0x0A000002, True),
        (2, 1, 0x0A000001, 0x0A000002, False),
        (2, 1, 0x0A000001, 0x7F000002, True),
        (2, 1, 0x7F000001, 0x0A000002, True),
        (1, 0, 0x0A000001, 0x0A000002, False),
    ],
)
def test_timewait_reusable(
    tw_reuse: int, timestamps: int, local: int, remote: int, reusable: bool
) -> None:
    rule = policy(tw_reuse=tw_reuse, timestamps=timestamps)
    assert timewait_reusable(rule, one_bucket(False, [local], [remote]))[0] == reusable
    ipv6 = one_bucket(True, [0, 0, 0, 1], [0x20010DB8, 0, 0, 5])  # ::1 → 2001:db8::5
    assert timewait_reusable(policy(tw_reuse=2), ipv6)[0]
    assert not timewait_reusable(policy(tw_reuse=2), one_bucket(True, [0, 0, 0, 2], [0, 0, 0, 3]))


def one_bucket(v6: bool, local: list[int], remote: list[int]) -> Buckets:
    """One IPv4 bucket (an address each) or one IPv6 bucket (four words each)."""
    four = np.array([local[0]] if not v6 else [], dtype=np.uint32)
    four_remote = np.array([remote[0]] if not v6 else [], dtype=np.uint32)
    six = np.array([local] if v6 else [], dtype=np.uint32).reshape(-1, 4)
    six_remote = np.array([remote] if v6 else [], dtype=np.uint32).reshape(-1, 4)
    one = np.array([1])
    return Buckets(four, four_remote, six, six_remote, np.array([443], np.uint16), one, one)


def test_zero_capacity_means_exhausted(netns: Netns) -> None:
    """Every port of the range reserved: connect() fails at once, and the utilisation is
    1.0 (not +Inf), with and without sockets; capacity shows 0."""
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40009")
    netns.sysctl("net.ipv4.ip_local_reserved_ports", "40000-40009")
    listener = netns.listen("127.0.0.2", 8080)
    ns = {"netns": netns.name}
    parsed = samples(netns.exporter("dump").stdout)
    assert value(parsed, "tcptw_outbound_port_utilization_max_ratio", **ns) == 1.0
    sock = netns.new_socket()
    with pytest.raises(OSError) as failed:
        sock.connect(listener.getsockname())
    assert failed.value.errno == errno.EADDRNOTAVAIL
    netns.sysctl("net.ipv4.ip_local_reserved_ports", "40000-40008")  # 40009 left
    taken = client(netns, "127.0.0.1", listener.getsockname())
    assert taken.getsockname()[1] == 40009
    netns.held.append(listener.accept()[0])
    netns.sysctl("net.ipv4.ip_local_reserved_ports", "40000-40009")
    parsed = samples(netns.exporter("dump").stdout)
    assert value(parsed, "tcptw_outbound_ports_capacity", **ns, **bucket("8080")) == 0
    assert value(parsed, "tcptw_outbound_port_utilization_max_ratio", **ns) == 1.0


row_counts = st.lists(st.tuples(st.integers(1, 50), st.integers(0, 50)), max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    namespaces=st.lists(
        st.tuples(st.integers(1, 200), row_counts, st.integers(0, 5), row_counts), max_size=6
    ),
    top=st.integers(0, 10),
)
def test_node_top_k_keeps_the_largest_and_every_namespace_sum(
    namespaces: list[tuple[int, list[tuple[int, int]], int, list[tuple[int, int]]]], top: int
) -> None:
    """Top-K across the node: the K largest buckets of all namespaces survive, the others
    join their own namespace's `other`, and every namespace's sum stays exact."""
    usages = []
    for index, (capacity, outbound, folded, inbound) in enumerate(namespaces):
        out_rows = tuple(
            OutboundRow("127.0.0.1", f"10.0.{index}.{i}", "80", n, min(tw, n), capacity)
            for i, (n, tw) in enumerate(sorted(outbound, reverse=True))
        )
        in_rows = tuple(
            InboundRow("127.0.0.1", "80", f"10.1.{index}.{i}", n, min(tw, n))
            for i, (n, tw) in enumerate(sorted(inbound, reverse=True))
        )
        out_rest = Folded(folded, 3 * folded, folded, capacity * folded)
        usages.append(
            (f"ns{index}", PortUsage(capacity, 0, capacity, 0.0, out_rows, in_rows, out_rest))
        )
    node = select_node_top(usages, top)
    candidates = [(n, r) for n, u in usages for r in u.outbound]
    assert len(node.outbound) == min(top, len(candidates))
    ratios = sorted((r.sockets / r.capacity for _, r in candidates), reverse=True)
    assert [r.sockets / r.capacity for _, r in node.outbound] == ratios[: len(node.outbound)]
    assert len(node.inbound) == min(top, sum(len(u.inbound) for _, u in usages))
    for netns, usage in usages:
        kept = [r for n, r in node.outbound if n == netns]
        other = node.outbound_other.get(netns, Folded())
        total = sum(r.sockets for r in usage.outbound) + usage.outbound_rest.sockets
        assert sum(r.sockets for r in kept) + other.sockets == total
        assert len(kept) + other.buckets == len(usage.outbound) + usage.outbound_rest.buckets
        capacities = sum(r.capacity for r in usage.outbound) + usage.outbound_rest.capacity
        assert sum(r.capacity for r in kept) + other.capacity == capacities
        kept_in = [r for n, r in node.inbound if n == netns]
        other_in = node.inbound_other.get(netns, Folded())
        assert sum(r.sockets for r in kept_in) + other_in.sockets == sum(
            r.sockets for r in usage.inbound
        )
