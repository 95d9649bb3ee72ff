from __future__ import annotations

import shutil
from pathlib import Path

import structlog

from exporter.config import Config
from exporter.poller import Poller
from tests.conftest import FIXTURES


def test_failing_source_logs_once_per_change_of_state(tree: Path) -> None:
    poller = Poller(
        Config(
            procfs=tree / "proc",
            sysfs=tree / "sys",
            netns="self",
            netns_name="t",
            collectors=frozenset({"netstat", "sockstat"}),
        )
    )
    netstat = tree / "proc/net/netstat"
    good = netstat.read_text()
    with structlog.testing.capture_logs() as logs:
        shutil.copyfile(FIXTURES / "corrupt/netstat-empty", netstat)
        first = poller.poll_once()
        poller.poll_once()
        netstat.write_text(good)
        third = poller.poll_once()
        poller.poll_once()
    events = [(e["event"], e.get("source")) for e in logs]
    assert events == [("source failed", "netstat"), ("source recovered", "netstat")]
    assert [(r.source, r.netns, r.ok) for r in first.results] == [
        ("netstat", "t", False),
        ("sockstat", "t", True),
        ("sockstat", "", True),  # its host-wide part
    ]
    assert "no TcpExt lines" in first.results[0].error
    assert all(r.ok for r in third.results)


def test_buckets_without_the_sysctl_collector_log_why_they_are_missing(tree: Path) -> None:
    (tree / "proc/sys/net/ipv4/ip_local_port_range").write_text("garbage\n")
    poller = Poller(
        Config(
            procfs=tree / "proc",
            sysfs=tree / "sys",
            netns="self",
            netns_name="t",
            collectors=frozenset({"sockstat"}) | {"sockdiag"},
        )
    )
    with structlog.testing.capture_logs() as logs:
        snapshot = poller.poll_once()
        poller.poll_once()  # the same problem again: no second line
    assert [(e["event"], e["source"], e["log_level"]) for e in logs] == [
        (
            "buckets unavailable: sysctls unreadable: ip_local_port_range must hold two numbers, "
            "got 'garbage'",
            "sockdiag",
            "warning",
        )
    ]
    sockdiag = next(r for r in snapshot.results if r.source == "sockdiag")
    assert sockdiag.ok and sockdiag.data.ports is None  # states counted, buckets absent
