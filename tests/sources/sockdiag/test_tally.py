from __future__ import annotations

from exporter.sources.sockdiag.buckets import BucketOptions
from exporter.sources.sockdiag.capacity import PortPolicy
from exporter.sources.sockdiag.codec import REPORTED_STATES, decode_batch
from exporter.sources.sockdiag.tally import SocketTally
from tests.kernel import Netns, populate_all_states, server_closes_first, time_wait_pairs
from tests.sources.sockdiag.test_codec import load


def test_state_counts_equal_ss(netns: Netns) -> None:
    populate_all_states(netns)
    for _ in range(5):
        before = netns.ss_states()
        stats = netns.socket_stats()
        if before == netns.ss_states():
            break
    ours = {key: count for key, count in stats.states.items() if count}
    assert ours == dict(before)
    assert ours[("ipv4", "time_wait")] == 8
    assert ours[("ipv6", "time_wait")] == 2
    assert ours[("ipv6", "established")] == 1  # the v4-mapped accepted socket
    assert len(stats.states) == 2 * len(REPORTED_STATES)  # every state of both families


def test_many_time_wait_sockets_across_batches(netns: Netns) -> None:
    """More records than one receive buffer holds, so several batches are decoded."""
    netns.sysctl("net.ipv4.ip_local_port_range", "20000 60999")
    listener = netns.listen("127.0.0.1", 8080, backlog=4096)
    time_wait_pairs(netns, listener, 12000)
    stats = netns.socket_stats()
    assert stats.states[("ipv4", "time_wait")] == 12000 == netns.ss_states()[("ipv4", "time_wait")]
    assert stats.states[("ipv4", "listen")] == 1


def test_empty_tally_reports_zero_for_every_state() -> None:
    stats = SocketTally().result(("ipv6",))
    assert stats.missing_families == ("ipv6",)
    assert set(stats.states) == {("ipv4", s) for s in REPORTED_STATES.values()}
    assert set(stats.states.values()) == {0}


def test_kernel_port_filter_returns_what_ss_filters(netns: Netns) -> None:
    """With --buckets.inbound-ports the kernel runs our INET_DIAG_REQ_BYTECODE program: the
    non-listening sockets it returns are exactly those `ss` selects with the same filter."""
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")
    for port in (80, 443, 8080):
        listener = netns.listen("127.0.0.1", port)
        time_wait_pairs(netns, listener, 3)  # outbound TIME-WAIT, ports in the range
        server_closes_first(netns, listener, 2)  # inbound TIME-WAIT on 80, 443, 8080
    policy = PortPolicy((40000, 40999), (), 0, 1)
    options = BucketOptions(inbound_ports=frozenset({80, 443}))
    stats = netns.socket_stats(policy, options)
    expression = "( sport >= :40000 and sport <= :40999 ) or sport = :80 or sport = :443"
    expected = netns.ss_states("state", "all", expression)
    expected[("ipv4", "listen")] = 3  # listeners are always dumped whole
    assert {k: v for k, v in stats.states.items() if v} == dict(expected)
    assert stats.states[("ipv4", "time_wait")] == 9 + 4  # 8080's inbound 2 filtered out
    assert stats.scope == "local port 40000-40999 or 80,443"


def test_a_state_past_the_last_tcp_state_is_not_counted() -> None:
    """idiag_state is a u8; an IPv4 record claiming state 20 (no kernel sends one) must not
    spill into the IPv6 counts, nor anywhere else reported."""
    data, seq, pid = load("ipv4-other")
    clean = SocketTally()
    clean.add(decode_batch(memoryview(data), len(data), seq, pid)[0])
    first_state = data[17]  # nlmsghdr (16 bytes), then idiag_family, idiag_state
    data[17] = 20
    tampered = SocketTally()
    tampered.add(decode_batch(memoryview(data), len(data), seq, pid)[0])
    before, after = clean.result(()).states, tampered.result(()).states
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    name = REPORTED_STATES[first_state]
    assert changed == {("ipv4", name): (before[("ipv4", name)], before[("ipv4", name)] - 1)}
