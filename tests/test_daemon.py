"""The poll loop: a poll that outlasts the interval delays the next (never overlaps it)
and is counted as an overrun; the collector always holds the latest finished snapshot."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from exporter.collector import SnapshotCollector
from exporter.config import Config
from exporter.daemon import poll_forever
from exporter.poller import Poller
from exporter.snapshot import Snapshot


class SlowPoller(Poller):
    """The real poller on a recorded tree, made slower than the interval."""

    def __init__(self, config: Config, delay: float) -> None:
        super().__init__(config)
        self.delay = delay
        self.running = 0
        self.most_at_once = 0
        self.polls = 0
        self.lock = threading.Lock()

    def poll_once(self, budget: float | None = None) -> Snapshot:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.delay)
            return super().poll_once(budget)
        finally:
            with self.lock:
                self.running -= 1
                self.polls += 1


@pytest.fixture
def config(tree: Path) -> Config:
    return Config(
        procfs=tree / "proc",
        sysfs=tree / "sys",
        netns="self",
        netns_name="t",
        collectors=frozenset({"sockstat"}),
    )


def run_for(poller: Poller, interval: float, seconds: float) -> SnapshotCollector:
    """Run the real poll loop for `seconds`, then cancel it; the collector it fed."""
    collector = SnapshotCollector()

    async def run() -> None:
        task = asyncio.create_task(poll_forever(poller, collector, interval=interval))
        await asyncio.sleep(seconds)
        task.cancel()

    asyncio.run(run())
    return collector


def test_overrunning_polls_never_overlap_and_are_counted(config: Config) -> None:
    poller = SlowPoller(config, delay=0.05)
    snapshot = run_for(poller, interval=0.01, seconds=0.6).snapshot
    assert snapshot is not None
    assert poller.most_at_once == 1
    assert poller.polls >= 5
    assert snapshot.poll_overruns >= poller.polls - 2  # every finished poll but the last
    assert snapshot.results[0].ok


def test_polls_within_the_interval_are_not_overruns(config: Config) -> None:
    poller = SlowPoller(config, delay=0.0)
    collector = run_for(poller, interval=0.1, seconds=0.55)
    assert collector.snapshot is not None and collector.snapshot.poll_overruns == 0
    assert 5 <= poller.polls <= 7
