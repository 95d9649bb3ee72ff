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
