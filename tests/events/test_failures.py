"""connect() failures with EADDRNOTAVAIL from the destroy events (exporter/events/
failures.py), made on the kernel in a real namespace among lookalikes."""

from __future__ import annotations

import errno
import socket
import struct

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.config import Config
from exporter.engine.collector import SnapshotCollector
from exporter.engine.poller import Poller
from exporter.engine.registry import FEEDS
from tests.exposition import Key, samples, series
from tests.kernel import Netns, connect, wait_until

FAILURES = "tcptw_connect_failures_total"
OUT = "tcptw_outbound_connections_closed_total"
IN = "tcptw_inbound_connections_closed_total"


def fails(netns: Netns, family: int, remote: tuple[str, int], bind: tuple[str, int] | None) -> None:
    """One connect() refused EADDRNOTAVAIL, its socket then closed (the event)."""
    sock = netns.new_socket(family)
    if bind is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(bind)
    with pytest.raises(OSError) as raised:
        sock.connect(remote)
    assert raised.value.errno == errno.EADDRNOTAVAIL
    netns.held.remove(sock)
    sock.close()


def held_open(netns: Netns, listener: socket.socket, family: int, remote: tuple[str, int]) -> None:
    netns.held.append(connect(netns, "", remote, family))
    netns.held.append(listener.accept()[0])


def test_each_eaddrnotavail_counts_once_per_destination_and_lookalikes_never(
    netns: Netns,
) -> None:
    """Two usable ports. 5 unbound IPv4, 3 bound IPv4, 4 IPv6 and 2 IPv4-mapped connect()s
    fail with EADDRNOTAVAIL toward four destinations, among 3 refused connects, 2
    SO_LINGER 0 aborts and a connection reset by its peer: the counter rises by exactly
    5, 3, 4 and 2, names the destination address, and counts nothing else; the close
    counters count only the connections that were established: the 2 servers whose
    clients aborted, and the client whose server aborted."""
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40001")
    v4 = netns.listen("127.0.0.2", 7000)
    bound = netns.listen("127.0.0.3", 7000)
    mapped = netns.listen("127.0.0.6", 7000)
    v6 = netns.listen("::1", 7001, family=socket.AF_INET6)
    aborted = netns.listen("127.0.0.5", 7002)
    config = Config(netns=frozenset({netns.name}))
    poller = Poller(config, feeds=FEEDS)
    collector = SnapshotCollector(config)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    def scrape() -> dict[Key, float]:
        collector.update(poller.poll_once())
        return samples(generate_latest(registry).decode())

    try:
        scrape()  # opens the namespace's listener: every event from here on is seen
        for _ in range(2):  # both ports, toward each destination
            held_open(netns, v4, socket.AF_INET, ("127.0.0.2", 7000))
            held_open(netns, mapped, socket.AF_INET, ("127.0.0.6", 7000))
            held_open(netns, v6, socket.AF_INET6, ("::1", 7001))
        for _ in range(5):
            fails(netns, socket.AF_INET, ("127.0.0.2", 7000), None)
        first = netns.new_socket()  # held by the namespace until the test ends
        first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        first.bind(("127.0.0.1", 41000))
        first.connect(("127.0.0.3", 7000))

        netns.held.append(bound.accept()[0])
        for _ in range(3):  # the same quadruplet again
            fails(netns, socket.AF_INET, ("127.0.0.3", 7000), ("127.0.0.1", 41000))
        for _ in range(4):
            fails(netns, socket.AF_INET6, ("::1", 7001), None)
        for _ in range(2):
            fails(netns, socket.AF_INET6, ("::ffff:127.0.0.6", 7000), None)
        # Lookalikes: destination port 0 too, but a SYN went out.
        for _ in range(3):
            refused = netns.new_socket()
            with pytest.raises(ConnectionRefusedError):
                refused.connect(("127.0.0.4", 9))
            netns.held.remove(refused)
            refused.close()
        for _ in range(2):
            client = connect(netns, "", ("127.0.0.5", 7002))
            server, _ = aborted.accept()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            netns.held.remove(client)
            client.close()  # RST: the client's record has no destination port
            server.close()  # the server's end was established: one inbound close
        client = connect(netns, "", ("127.0.0.5", 7002))
        server, _ = aborted.accept()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()  # RST: the server's record has no destination port
        netns.held.remove(client)
        client.close()  # reset by its peer, but it was established: one outbound close
        expected = {"127.0.0.2": 5, "127.0.0.3": 3, "::1": 4, "127.0.0.6": 2}
        seen: dict[str, float] = {}

        def counted() -> bool:
            parsed = scrape()
            seen.clear()
            for labels, value in series(parsed, FAILURES).items():
                fields = dict(labels)
                assert fields["netns"] == netns.name and fields["error"] == "eaddrnotavail"
                seen[fields["remote_addr"]] = value
            return seen == expected

        wait_until(counted, 10, f"failures {expected}, last seen {seen}")
        parsed = scrape()
        assert sum(series(parsed, OUT).values()) == 1  # the client its peer reset
        assert sum(series(parsed, IN).values()) == 2  # the aborted clients' servers
    finally:
        poller.close()
