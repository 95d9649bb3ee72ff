from __future__ import annotations

import shutil
from pathlib import Path

import structlog

from exporter.config import Config
from exporter.poller import Poller
from exporter.sources import NetnsView
from tests.conftest import FIXTURES


def test_failing_source_logs_once_per_change_of_state(tree: Path) -> None:
    poller = Poller(
        Config(
            procfs=tree / "proc",
            sysfs=tree / "sys",
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
    assert [(r.source, r.ok) for r in first.results] == [("netstat", False), ("sockstat", True)]
    assert "no TcpExt lines" in first.results[0].error
    assert all(r.ok for r in third.results)


def test_buckets_without_the_sysctl_collector_log_why_they_are_missing(tree: Path) -> None:
    (tree / "proc/sys/net/ipv4/ip_local_port_range").write_text("garbage\n")
    poller = Poller(
        Config(
            procfs=tree / "proc",
            sysfs=tree / "sys",
            netns_name="t",
            collectors=frozenset({"sockstat"}) | {"sockdiag"},
        )
    )
    with structlog.testing.capture_logs() as logs:
        poller.own_namespace = lambda: NetnsView("t", tree / "proc/net", tree / "proc/sys/net")
        snapshot = poller.poll_once()
    assert [(e["event"], e["source"]) for e in logs] == [("source failed", "sysctl")]
    assert "needed for buckets" in logs[0]["error"]
    sockdiag = next(r for r in snapshot.results if r.source == "sockdiag")
    assert sockdiag.ok and sockdiag.data.ports is None  # states counted, buckets absent
