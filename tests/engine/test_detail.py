from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.config import Config
from exporter.engine.collector import SnapshotCollector
from exporter.engine.detail import DetailTracker
from exporter.engine.poller import Poller
from exporter.engine.snapshot import SourceResult
from exporter.sources import netstat
from exporter.sources.declare import FOLDED
from tests.exposition import Key, samples, series, value
from tests.kernel import Netns, connect, new_netns


def counters(overflow: int, tw: int) -> dict[str, int]:
    return {"TW": tw, "TCPTimeWaitOverflow": overflow}


def results(**by_netns: dict[str, int]) -> list[SourceResult]:
    return [SourceResult("netstat", label, True, 0.0, data) for label, data in by_netns.items()]


def test_a_problem_counter_that_moves_shows_its_namespace_from_its_previous_value() -> None:
    """Quiet namespaces fold their increments into netns=""; the one whose overflow
    counter moves is shown in full, its counters first at the previous poll's values,
    then at the kernel's, so increase() over its series plus the fold's counts every
    increment once."""
    tracker = DetailTracker(Config(detail_hold=60), [netstat.SOURCE])
    first = tracker.view(results(a=counters(0, 10), b=counters(0, 5)), ["a", "b"])
    assert first.detailed == frozenset() and first.fold("netstat", "TW") == 0
    second = tracker.view(results(a=counters(15, 30), b=counters(0, 7)), ["a", "b"])
    assert second.detailed == second.entering == frozenset({"a"})
    assert second.reasons == {"a": "TcpExt TCPTimeWaitOverflow moved"}
    # a shows its previous values this time; b's TW increment (2) joins the fold.
    assert second.counter("netstat", "a", "TCPTimeWaitOverflow", 15) == 0
    assert second.counter("netstat", "a", "TW", 30) == 10
    assert second.fold("netstat", "TW") == 2
    third = tracker.view(results(a=counters(15, 31), b=counters(0, 9)), ["a", "b"])
    assert third.entering == frozenset() and third.detailed == frozenset({"a"})
    assert third.counter("netstat", "a", "TCPTimeWaitOverflow", 15) == 15
    assert third.fold("netstat", "TW") == 4  # b only: a's increments show in its series


def test_detail_is_held_then_released_and_a_failing_source_is_notable() -> None:
    tracker = DetailTracker(Config(detail_hold=0.2), [netstat.SOURCE])
    tracker.view(results(a=counters(0, 0)), ["a"])
    moved = tracker.view(results(a=counters(1, 0)), ["a"])
    assert moved.detailed == frozenset({"a"})
    held = tracker.view(results(a=counters(1, 0)), ["a"])
    assert held.detailed == frozenset({"a"})  # still within --metrics.detail-hold
    time.sleep(0.25)  # the hold is what is tested: wait it out
    released = tracker.view(results(a=counters(1, 0)), ["a"])
    assert released.detailed == frozenset()
    failing = [SourceResult("netstat", "a", False, 0.0, None, "boom")]
    assert tracker.view(failing, ["a"]).reasons == {"a": "source netstat failing"}


def test_full_detail_shows_everything() -> None:
    tracker = DetailTracker(Config(detail="full"), [netstat.SOURCE])
    view = tracker.view(results(a=counters(0, 0)), ["a"])
    assert view.full and view.shows("a")


def make_timewait(netns: Netns, count: int) -> None:
    listener = netns.listen("127.0.0.1", 8080)
    for _ in range(count):
        client = connect(netns, "", ("127.0.0.1", 8080))
        server, _ = listener.accept()
        client.close()  # the client closes first: it holds the TIME-WAIT
        server.close()


@pytest.fixture
def quiet_and_overflowing() -> Iterator[tuple[Netns, Netns]]:
    with new_netns() as quiet, new_netns() as overflowing:
        for netns in (quiet, overflowing):  # alike: neither is notable for its sysctls
            netns.sysctl("net.ipv4.tcp_max_tw_buckets", "4")
        yield quiet, overflowing


def test_overflow_counter_of_a_quiet_namespace_is_counted_by_increase(
    kernel: None, quiet_and_overflowing: tuple[Netns, Netns]
) -> None:
    """The overflow alert's input, end to end on the kernel: a quiet namespace's
    TCPTimeWaitOverflow goes from 0 to 6 between two polls (10 closes, 4 TIME-WAIT
    buckets); its series appears at 0, then 6, so increase() sees the 6 the kernel
    counted; before, nothing of it was exposed but the netns="" fold."""
    quiet, overflowing = quiet_and_overflowing
    config = Config(netns=frozenset({quiet.name, overflowing.name}), detail_hold=600)
    poller = Poller(config)
    name = "tcptw_tcpext_tcp_time_wait_overflow_total"
    try:
        before = samples_of(poller, config)
        assert value(before, name, netns=FOLDED) == 0
        assert {dict(k)["netns"] for k in series(before, name)} == {FOLDED}
        make_timewait(overflowing, 10)
        kernel_count = netstat.parse_netstat(overflowing.read("net/netstat"))
        assert kernel_count["TCPTimeWaitOverflow"] == 6
        entering = samples_of(poller, config)
        assert value(entering, name, netns=overflowing.name) == 0
        after = samples_of(poller, config)
        assert value(after, name, netns=overflowing.name) == 6
        assert value(after, name, netns=FOLDED) == 0
        assert value(after, "tcptw_netns_detailed") == 1
        # the quiet namespace: no per-namespace detail beyond what alerts read
        shown = {name for name, labels in after if ("netns", quiet.name) in labels}
        assert shown == QUIET_SET
    finally:
        poller.close()


QUIET_SET = {
    "tcptw_netns_info",
    "tcptw_outbound_port_utilization_max_ratio",
    "tcptw_ephemeral_ports_in_use",
    "tcptw_ephemeral_ports_available",
    "tcptw_sockstat_tcp_tw",
    "tcptw_sysctl_tcp_tw_reuse",
    "tcptw_sysctl_tcp_max_tw_buckets",
}


def samples_of(poller: Poller, config: Config) -> dict[Key, float]:
    collector = SnapshotCollector(config)
    collector.update(poller.poll_once())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return samples(generate_latest(registry).decode())


def test_previous_values_are_held_until_a_scraper_saw_them() -> None:
    """A scrape interval longer than the poll's: the poll after a namespace became notable
    was not scraped, so the next one shows the previous values again; once scraped, the
    kernel's."""
    tracker = DetailTracker(Config(detail_hold=60), [netstat.SOURCE])
    tracker.view(results(a=counters(0, 1), b=counters(0, 1)), ["a", "b"])
    moved = tracker.view(results(a=counters(4, 1), b=counters(0, 1)), ["a", "b"])
    assert moved.counter("netstat", "a", "TCPTimeWaitOverflow", 4) == 0
    unseen = tracker.view(results(a=counters(5, 1), b=counters(0, 1)), ["a", "b"], scraped=False)
    assert unseen.counter("netstat", "a", "TCPTimeWaitOverflow", 5) == 0  # still the old one
    seen = tracker.view(results(a=counters(5, 1), b=counters(0, 1)), ["a", "b"], scraped=True)
    assert seen.counter("netstat", "a", "TCPTimeWaitOverflow", 5) == 5
