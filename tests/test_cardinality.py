"""The price per node in series (issue 17): 250 pod-shaped namespaces plus the host, the
default flags, one namespace exhausted among them."""

from __future__ import annotations

import contextlib
from collections import Counter

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.config import Config
from exporter.engine.collector import SnapshotCollector
from exporter.engine.poller import Poller
from exporter.engine.registry import FEEDS
from exporter.netns.context import raise_fd_limit
from tests.engine.test_detail import QUIET_SET
from tests.exposition import samples, value
from tests.kernel import Netns, connect, new_netns

PODS = 250
SERIES_BUDGET = 2_500


def pod_shaped(netns: Netns) -> None:
    """A listener, 3 connections held open and 5 closed (5 TIME-WAIT sockets)."""
    listener = netns.listen("127.0.0.1", 8080)
    for i in range(8):
        client = connect(netns, "", ("127.0.0.1", 8080))
        server, _ = listener.accept()
        netns.held.append(server)
        if i >= 3:
            client.close()
            server.close()


def exhausted(netns: Netns) -> None:
    """10 usable ports, all held toward 127.0.0.5:7000."""
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40009")
    listener = netns.listen("127.0.0.5", 7000)
    for _ in range(10):
        connect(netns, "", ("127.0.0.5", 7000))
        netns.held.append(listener.accept()[0])


def test_250_pods_cost_at_most_2500_series_and_the_exhausted_one_shows(kernel: None) -> None:
    raise_fd_limit()
    with contextlib.ExitStack() as stack:
        pods = [stack.enter_context(new_netns("twc")) for _ in range(PODS)]
        for pod in pods[1:]:
            pod_shaped(pod)
        exhausted(pods[0])
        config = Config(netns=frozenset({"host", *(pod.name for pod in pods)}))
        poller = Poller(config, feeds=FEEDS)  # serve's: the destroy events too
        collector = SnapshotCollector(config)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        try:
            for _ in range(2):
                collector.update(poller.poll_once())
            text = generate_latest(registry).decode()
        finally:
            poller.close()
    parsed = samples(text)
    total = len(parsed)
    assert total <= SERIES_BUDGET, f"{total} series"
    per_netns = Counter(dict(labels).get("netns") for _, labels in parsed)
    quiet = [pod.name for pod in pods[1:]]
    assert max(per_netns[name] for name in quiet) <= 8
    assert {name for name, labels in parsed if ("netns", quiet[0]) in labels} == QUIET_SET
    bad = pods[0].name
    assert value(parsed, "tcptw_outbound_port_utilization_max_ratio", netns=bad) == 1.0
    bucket = {"netns": bad, "local_addr": "127.0.0.1", "remote_addr": "127.0.0.5"}
    assert value(parsed, "tcptw_outbound_ports_used", **bucket, remote_port="7000") == 10
    assert value(parsed, "tcptw_outbound_ports_capacity", **bucket, remote_port="7000") == 10
    print(
        f"{total} series for {PODS} pods and the host; per namespace: {per_netns[bad]} "
        f"(exhausted), {per_netns['host']} (host), {per_netns[quiet[0]]} (quiet)"
    )
