"""The poll loop: a poll that outlasts the interval delays the next (never overlaps it)
and is counted as an overrun; the collector always holds the latest finished snapshot."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import ProcessCollector

from exporter.config import Config
from exporter.daemon import PollClock, ProcessMetrics, poll_forever
from exporter.engine.collector import SnapshotCollector
from exporter.engine.poller import Poller
from exporter.engine.snapshot import Snapshot
from exporter.sources.slab import SYSFS_FILES
from tests.exposition import samples, series, value
from tests.kernel import wait_until
from tests.serving import Daemon, running


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
            time.sleep(self.delay)  # under test: a poll that takes this long
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


def test_readiness_follows_the_age_of_the_last_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = PollClock(interval=10)
    assert clock.readiness() == (False, "not ready: no poll has completed yet")
    now = time.monotonic()
    clock.completed_at = now - 29
    assert clock.readiness()[0] is True
    clock.completed_at = now - 31
    ready, message = clock.readiness()
    assert (
        not ready
        and message.startswith("stale: the last poll completed 31.")
        and ("(limit 30 s)" in message)
    )


def hang_slab_reads(sysfs: Path) -> Path:
    """Make the slab source block: tw_sock_TCP becomes a merged sysfs cache whose files
    are FIFOs without a writer, so its next read waits (a real blocking read, not a
    stand-in). Returns the directory holding the FIFOs."""
    target = sysfs / "kernel" / "slab" / ":A-hung"
    target.mkdir()
    for name in SYSFS_FILES:
        os.mkfifo(target / name)
    (sysfs / "kernel" / "slab" / "tw_sock_TCP").symlink_to(target)
    return target


def release(fifos: Path) -> threading.Thread:
    """Write each FIFO once (in order, as the source reads them), in the background."""

    def feed() -> None:
        for name in SYSFS_FILES:
            with open(fifos / name, "w") as fifo:
                fifo.write("1\n")

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def blocked_on_a_fifo(pid: int) -> bool:
    """A thread of `pid` waits in open() for a FIFO's writer (fs/pipe.c, wait_for_partner)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            if (task / "wchan").read_text() == "wait_for_partner":
                return True
    return False


def test_readyz_fails_on_a_hung_poll_and_recovers(tmp_path: Path) -> None:
    """A poll stuck in a read: /metrics keeps answering with the last figures, but
    tcptw_last_poll_timestamp_seconds stops and /readyz turns 503 after three intervals;
    once the read returns, /readyz is 200 again. SIGTERM during the hung poll stops the
    daemon at once."""
    sysfs = tmp_path / "sys"
    (sysfs / "kernel" / "slab").mkdir(parents=True)
    with running("--poll.interval=0.5", f"--path.sysfs={sysfs}", ready_path="/readyz") as d:
        fifos = hang_slab_reads(sysfs)
        hung = "a poll hung in the slab read"
        wait_until(lambda: blocked_on_a_fifo(d.proc.pid), timeout=5, what=hung)
        frozen = value(samples(d.get()[1].decode()), "tcptw_last_poll_timestamp_seconds")
        wait_until(lambda: d.get("/readyz")[0].status == 503, timeout=5, what="a 503")
        _, body = d.get("/readyz")
        assert body.decode().startswith("stale: the last poll completed")
        metrics, text = d.get()
        assert metrics.status == 200
        assert value(samples(text.decode()), "tcptw_last_poll_timestamp_seconds") == frozen
        assert d.get("/healthz")[0].status == 200  # the process itself still serves
        release(fifos).join(timeout=5)
        wait_until(lambda: d.get("/readyz")[0].status == 200, timeout=5, what="a 200")
        # The next poll hangs again; SIGTERM must not wait for it.
        wait_until(lambda: blocked_on_a_fifo(d.proc.pid), timeout=5, what=hung)
        start = time.monotonic()
        events = [line["event"] for line in d.stop()]
        assert time.monotonic() - start < 2 and d.proc.returncode == 0
        assert events[-1] == "shutting down"


def test_permission_denied_on_a_source_fails_only_that_source(kernel: None) -> None:
    """As uid 65534 with every capability dropped: /proc/slabinfo and the SLUB files are
    root-only, so slab fails (one line, success 0) and every other source serves."""
    with running(
        "--poll.interval=60",
        "--metrics.detail=full",
        prefix=(
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ),
        ready_path="/readyz",
    ) as d:
        parsed = samples(d.get()[1].decode())
        success = {
            (dict(k)["netns"], dict(k)["source"]): v
            for k, v in series(parsed, "tcptw_source_success").items()
        }
        assert success.pop(("", "slab")) == 0
        assert set(success.values()) == {1.0}, success
        assert ("host", "sockdiag") in success
        events = d.stop()
    failed = [e for e in events if e["event"] == "source failed"]
    assert len(failed) == 1 and failed[0]["source"] == "slab", events
    assert "Permission denied" in str(failed[0]["error"])


def last_poll(daemon: Daemon) -> float:
    return value(samples(daemon.get()[1].decode()), "tcptw_last_poll_timestamp_seconds")


def test_a_stopped_process_is_late_not_overrunning(tree: Path) -> None:
    """SIGSTOP/SIGCONT: the polls were late, not long; the warning says so and no
    overrun is counted."""
    with running(
        "--poll.interval=0.5",
        f"--path.procfs={tree / 'proc'}",
        f"--path.sysfs={tree / 'sys'}",
        "--netns.name=t",
        "--collector.sockdiag",
        ready_path="/readyz",
    ) as d:
        d.proc.send_signal(signal.SIGSTOP)
        time.sleep(2)  # under test: stopped for four intervals
        resumed = time.time()
        d.proc.send_signal(signal.SIGCONT)
        # The late poll, then one more: the loop went on past its warning.
        wait_until(lambda: last_poll(d) > resumed, timeout=5, what="the late poll")
        late_poll = last_poll(d)
        wait_until(lambda: last_poll(d) > late_poll, timeout=5, what="the poll after it")
        parsed = samples(d.get()[1].decode())
        assert value(parsed, "tcptw_poll_overruns_total") == 0
        events = d.stop()
    late = [e for e in events if e["event"] == "polling fell behind schedule"]
    assert len(late) == 1 and float(str(late[0]["late_seconds"])) >= 1.0, events
    assert not [e for e in events if e["event"] == "poll overran the interval"]


def process_series(collector: ProcessCollector) -> dict[str, tuple[str, str, float]]:
    return {
        s.name: (metric.documentation, metric.type, s.value)
        for metric in collector.collect()
        for s in metric.samples
    }


VARYING = {"process_cpu_seconds_total", "process_resident_memory_bytes"}


@pytest.mark.parametrize("extra", [0, 300])
def test_process_series_are_the_library_s(extra: int) -> None:
    """Same series, help and type, and the same values where they hold still (the count
    of open descriptors counted from the directory's size, as Linux 6.2+ gives it)."""
    held = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(extra)]
    try:
        ours = process_series(ProcessMetrics(registry=None))
        theirs = process_series(ProcessCollector(registry=None))
    finally:
        for fd in held:
            os.close(fd)
    assert list(ours) == list(theirs)
    for name, (doc, kind, number) in ours.items():
        assert (doc, kind) == theirs[name][:2]
        if name not in VARYING | {"process_virtual_memory_bytes"}:
            assert number == theirs[name][2], name
    assert theirs["process_open_fds"][2] >= extra


def test_process_series_without_an_fd_size_are_the_library_s(tmp_path: Path) -> None:
    """A kernel before 6.2 (the fd directory's size is 0): the library's own listing."""
    proc = tmp_path / "proc"
    (proc / "42" / "fd").mkdir(parents=True)
    for fd in range(3):
        (proc / "42" / "fd" / str(fd)).touch()
    (proc / "stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    (proc / "42" / "stat").write_text("42 (x) " + " ".join(str(n) for n in range(3, 53)) + "\n")
    (proc / "42" / "limits").write_text("Max open files            1024  4096  files\n")
    ours = process_series(ProcessMetrics(pid=lambda: 42, proc=str(proc), registry=None))
    theirs = process_series(ProcessCollector(pid=lambda: 42, proc=str(proc), registry=None))
    assert ours == theirs
    assert ours["process_open_fds"][2] == 3
