"""Connection counters from the kernel's socket-destroy events (exporter/events/table.py), with
the real daemon polling real namespaces."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from exporter.config import Config
from exporter.engine.poller import Poller
from exporter.engine.registry import FEEDS
from exporter.events import feed
from exporter.events.socket import parse_drops
from exporter.events.table import EventsSnapshot
from exporter.sources.sockdiag.source import TOP
from tests.exposition import samples, series
from tests.kernel import Netns, wait_until
from tests.serving import Daemon, running

OUT = "tcptw_outbound_connections_closed_total"
IN = "tcptw_inbound_connections_closed_total"
LOST = "tcptw_socket_events_lost_total"

# (family, client addresses, destinations): one destination port inside the ephemeral
# range, so that only its listener makes its sockets inbound.
PLAN = [
    (socket.AF_INET, ("127.0.0.1", "127.0.0.2"), (("127.0.0.10", 7000), ("127.0.0.11", 45000))),
    (socket.AF_INET6, ("::1", "fd00::1"), (("fd00::10", 7002), ("::1", 45001))),
]


def _metrics(daemon: Daemon) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response, body = daemon.get()
    assert response.status == 200
    return samples(body.decode())


def _counters(daemon: Daemon, netns: str) -> dict[tuple[str, ...], float]:
    parsed = _metrics(daemon)
    out: dict[tuple[str, ...], float] = {}
    for name, kind, second, third in (
        (OUT, "out", "remote_addr", "remote_port"),
        (IN, "in", "local_port", "remote_addr"),
    ):
        for labels, value in series(parsed, name).items():
            d = dict(labels)
            if d["netns"] == netns:
                out[(kind, d["local_addr"], d[second], d[third])] = value
    for labels, value in series(parsed, LOST).items():
        if dict(labels)["netns"] == netns:
            out[("lost",)] = value
    return out


@contextmanager
def _listeners(netns: Netns) -> Iterator[dict[tuple[str, int], socket.socket]]:
    subprocess.run(
        ["ip", "-n", netns.name, "addr", "add", "fd00::1/128", "dev", "lo", "nodad"], check=True
    )
    subprocess.run(
        ["ip", "-n", netns.name, "addr", "add", "fd00::10/128", "dev", "lo", "nodad"], check=True
    )
    listeners: dict[tuple[str, int], socket.socket] = {}
    for family, _, destinations in PLAN:
        for address in destinations:
            sock = netns.new_socket(family)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(4096)
            listeners[address] = sock
    yield listeners


def _connect_and_close(
    family: int,
    client: str,
    listeners: dict[tuple[str, int], socket.socket],
    address: tuple[str, int],
    count: int,
) -> None:
    """count connections from client to address (run inside the namespace), each closed
    by the client first."""
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
        sock.bind((client, 0))
        sock.connect(address)
        accepted, _ = listeners[address].accept()
        sock.close()
        accepted.close()


def _connections(
    netns: Netns, listeners: dict[tuple[str, int], socket.socket], per_pair: int
) -> dict[tuple[str, ...], int]:
    """per_pair connections from each client address to each destination, each closed
    by the client first; returns the expected closes per bucket, both directions."""
    made: dict[tuple[str, ...], int] = {}
    with netns.inside():
        for family, clients, destinations in PLAN:
            for client in clients:
                for address in destinations:
                    _connect_and_close(family, client, listeners, address, per_pair)
                    dest, port = address[0], str(address[1])
                    out = ("out", client, dest, port)
                    inn = ("in", dest, port, client)
                    made[out] = made.get(out, 0) + per_pair
                    made[inn] = made.get(inn, 0) + per_pair
    return made


def test_exact_counts_per_bucket(netns: Netns) -> None:
    with (
        _listeners(netns) as listeners,
        running(f"--netns={netns.name}", "--poll.interval=0.3", "--metrics.detail=full") as daemon,
    ):
        wait_until(lambda: ("lost",) in _counters(daemon, netns.name), what="events up")
        before = _counters(daemon, netns.name)
        made = _connections(netns, listeners, 62)  # 62 x 8 pairs = 496 connections

        def settled() -> bool:
            now = _counters(daemon, netns.name)
            return sum(v for k, v in now.items() if k[0] != "lost") >= 2 * 496

        wait_until(settled, timeout=10, what="every close counted")
        time.sleep(0.7)  # two more polls: nothing else arrives
        after = _counters(daemon, netns.name)
    assert after[("lost",)] == 0
    # New buckets take free places of the top K at once: each series counts every close
    # toward its bucket (first exposed at 0), and `other` stays 0.
    increase = {k: after[k] - before.get(k, 0) for k in after if k[0] != "lost"}
    assert {k: v for k, v in increase.items() if v} == made
    assert sum(made.values()) == 2 * 496
    assert all(v == 0 for k, v in after.items() if "other" in k)


def _rows(snapshot: EventsSnapshot) -> dict[tuple[str, ...], int]:
    out: dict[tuple[str, ...], int] = {}
    for kind, rows in (("out", snapshot.outbound), ("in", snapshot.inbound)):
        for row in rows:
            out[(kind, row.netns, row.local_addr, *row.port_or_remote)] = row.value
    return out


def test_top_k_keeps_every_close_in_exactly_one_series(netns: Netns) -> None:
    """With a top K of 3, 8 buckets per direction compete and the hot ones change each
    round: series leave the top K and come back. Following every exposition as
    Prometheus does, each series only grows, and the sum of every series' increase since
    its first sample, `other` included, is every close the kernel reported."""
    config = Config(netns=frozenset({netns.name}), options={TOP.flag: 3}, detail="full")
    poller = Poller(config, feeds=FEEDS)
    session = poller.session(feed.FEED)
    assert isinstance(session, feed.EventsSession)
    table = session.table
    pairs = [
        (family, client, address)
        for family, clients, destinations in PLAN
        for client in clients
        for address in destinations
    ]
    first: dict[tuple[str, ...], int] = {}
    last: dict[tuple[str, ...], int] = {}
    members: list[frozenset[tuple[str, ...]]] = []

    def observe() -> None:
        """Two polls, each exposition read (a bucket is first exposed at its base)."""
        for _ in range(2):
            events = poller.poll_once().feeds[0].data
            assert isinstance(events, EventsSnapshot)
            exposed = _rows(events)
            for key, value in exposed.items():
                first.setdefault(key, value)
                assert value >= last.get(key, value), f"{key} went down"
                last[key] = value
        members.append(frozenset(k for k in exposed if k[0] == "out" and "other" not in k))

    try:
        with _listeners(netns) as listeners:
            observe()  # the listener is registered: from here on every close is an event
            made = 0
            # Round by round, three pairs are hot; the first three come back in the last
            # round, each time with enough closes to outrank the decayed scores.
            for hot, count in (((0, 1, 2), 30), ((3, 4, 5), 60), ((0, 1, 2), 100)):
                with netns.inside():
                    for index, (family, client, address) in enumerate(pairs):
                        n = count if index in hot else 1
                        _connect_and_close(family, client, listeners, address, n)
                        made += n
                events = 2 * made
                wait_until(
                    lambda: table.counted() >= events,  # noqa: B023
                    what="every close read",
                )
                observe()
            counted = table.counted()
    finally:
        poller.close()
    assert counted == 2 * made
    assert sum(last[k] - first[k] for k in last) == 2 * made
    assert all(len(m) == 3 for m in members[1:])
    # Pairs 0-2 were in the top K, left it in the second round and came back.
    assert members[1] == members[3] != members[2]
    assert last[("out", netns.name, "other", "other", "other")] > 0


def test_events_lost_are_counted_and_the_daemon_keeps_serving(
    netns: Netns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TCPTW_EVENTS_RCVBUF", "1")  # the kernel's minimum, a few events
    with (
        _listeners(netns) as listeners,
        running(f"--netns={netns.name}", "--poll.interval=0.3", "--metrics.detail=full") as daemon,
    ):
        wait_until(lambda: ("lost",) in _counters(daemon, netns.name), what="events up")
        # Stop the daemon while the burst is made, so that its listener cannot drain.
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            _connections(netns, listeners, 25)  # 200 connections, 400 events
        finally:
            daemon.proc.send_signal(signal.SIGCONT)

        def accounted() -> bool:
            now = _counters(daemon, netns.name)
            return sum(now.values()) >= 400

        wait_until(accounted, timeout=10, what="closes plus lost events")
        after = _counters(daemon, netns.name)
        assert daemon.get("/healthz")[0].status == 200
    assert after[("lost",)] > 0
    # Exact: each of the 400 events is either counted or lost (Drops of the socket).
    assert sum(after.values()) == 400


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def test_vanished_namespace_closes_its_listener(netns: Netns) -> None:
    with running(f"--netns={netns.name}", "--poll.interval=0.2", "--metrics.detail=full") as daemon:
        wait_until(lambda: ("lost",) in _counters(daemon, netns.name), what="events up")
        pid = daemon.proc.pid
        # The daemon's netlink sockets in that namespace: its diag socket and its events
        # listener (joined to groups 1 and 3: Groups 00000005).
        table = [line.split() for line in netns.read("net/netlink").splitlines()[1:]]
        inside = {int(f[-1]) for f in table if f[1] == "4"} & _socket_inodes(pid)
        groups = {int(f[-1]): f[3] for f in table if f[1] == "4"}
        assert len(inside) == 2
        assert sorted(groups[i] for i in inside) == ["00000000", "00000005"]
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        subprocess.run(["ip", "netns", "del", netns.name], check=True)
        wait_until(lambda: ("lost",) not in _counters(daemon, netns.name), what="series gone")
        assert not inside & _socket_inodes(pid)
        # With them went the namespace's /proc and /proc/sys files.
        assert len(os.listdir(f"/proc/{pid}/fd")) <= fds - 10
        assert daemon.get("/healthz")[0].status == 200


def test_parse_drops() -> None:
    text = (
        "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"
        "0000000000000000 4   0          00000005 0        0        0     2        17       4242\n"
        "0000000000000000 0   1          00000000 0        0        0     2        0        99\n"
    )
    assert parse_drops(text, 4242) == 17
    assert parse_drops(text, 99) == 0
    assert parse_drops(text, 1) is None
