"""The serve loop: asyncio on uvloop (a dependency: the exporter is Linux-only), polls in a
worker thread, HTTP on the loop. Netlink and file I/O never run on the event loop (uvloop
cannot open AF_NETLINK endpoints, and a blocking dump would stall scrapes)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import structlog
import uvloop
from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.config import Config
from exporter.engine.collector import SnapshotCollector
from exporter.engine.exposition import Exposition
from exporter.engine.poller import Poller
from exporter.engine.registry import FEEDS
from exporter.engine.states import describe
from exporter.thresholds import DEFAULT as THRESHOLDS
from exporter.web.config import WebConfigError
from exporter.web.reload import LoadedWeb, WebReloader, load_web
from exporter.web.server import MetricsServer, WebLimits

log = structlog.get_logger("timewait_exporter.daemon")
T = TypeVar("T")
# /readyz fails once the last poll is this many intervals old (TimewaitExporterStale's too).
STALE_INTERVALS = THRESHOLDS.stale_intervals


def _malloc_trim() -> Callable[[], object]:
    """glibc's malloc_trim(0), or nothing where there is none (musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return functools.partial(trim, 0)


# A poll runs in fresh threads (the poll thread, its workers, a receiver per large dump),
# and glibc gives each new thread one of its malloc arenas. free() shrinks an arena's heap
# only from its top, so each arena keeps the high-water mark of the poll work it happened
# to get, and RSS ratchets up in steps as namespaces and sockets come and go (measured in
# docs/benchmarks.md, soak). malloc_trim(0) returns the whole free pages of every arena
# (madvise MADV_DONTNEED; mtrim in glibc's malloc/malloc.c); memory in use is untouched.
release_free_memory = _malloc_trim()


class ProcessMetrics(ProcessCollector):
    """prometheus_client's process_* series, with process_open_fds counted without
    listing /proc/self/fd: since Linux 6.2 the directory's size is its number of open
    descriptors (proc_fd_getattr), where listing costs 1 us or more per descriptor, and
    the exporter keeps about 16 per namespace. The library's count includes the
    descriptor its listing holds open: one more than the size. Before 6.2 (size 0), or
    given another proc than /proc, the library's own collect(); otherwise that, line for
    line (prometheus_client 0.26), tests/test_daemon.py compares the two."""

    def collect(self) -> Iterable[Metric]:
        if not self._btime:
            return []
        pid = os.path.join(self._proc, str(self._pid()).strip())
        open_fds = 0
        if self._proc == "/proc":  # procfs itself: another directory's size is no count
            with contextlib.suppress(OSError):
                open_fds = os.stat(os.path.join(pid, "fd")).st_size
        if open_fds <= 0:
            return super().collect()
        result: list[Metric] = []
        try:
            with open(os.path.join(pid, "stat"), "rb") as stat:
                parts = stat.read().split(b")")[-1].split()
            vmem = GaugeMetricFamily(
                self._prefix + "virtual_memory_bytes",
                "Virtual memory size in bytes.",
                value=float(parts[20]),
            )
            rss = GaugeMetricFamily(
                self._prefix + "resident_memory_bytes",
                "Resident memory size in bytes.",
                value=float(parts[21]) * self._pagesize,
            )
            start_time_secs = float(parts[19]) / self._ticks
            start_time = GaugeMetricFamily(
                self._prefix + "start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                value=start_time_secs + self._btime,
            )
            utime = float(parts[11]) / self._ticks
            stime = float(parts[12]) / self._ticks
            cpu = CounterMetricFamily(
                self._prefix + "cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                value=utime + stime,
            )
            result.extend([vmem, rss, start_time, cpu])
        except OSError:
            pass
        try:
            with open(os.path.join(pid, "limits"), "rb") as limits:
                for line in limits:
                    if line.startswith(b"Max open file"):
                        max_fds = GaugeMetricFamily(
                            self._prefix + "max_fds",
                            "Maximum number of open file descriptors.",
                            value=float(line.split()[3]),
                        )
                        break
            fds = GaugeMetricFamily(
                self._prefix + "open_fds", "Number of open file descriptors.", open_fds + 1
            )
            result.extend([fds, max_fds])
        except OSError:
            pass
        return result


class StartupError(Exception):
    """The daemon cannot start (the message is the one line the operator sees)."""


def in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Run fn in a daemon thread: a poll still running at shutdown does not hold up exit
    (ThreadPoolExecutor threads are joined at interpreter exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result: T | None = fn()
            error: BaseException | None = None
        except BaseException as exc:
            result, error = None, exc
        # At shutdown the loop may close while a poll runs: nobody waits for it then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


class PollClock:
    """When the last poll completed, for /readyz (read on the loop, written by it too)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.completed_at: float | None = None  # time.monotonic()
        self.nothing_selected = ""  # why the last poll found no namespace to poll
        self.limited: tuple[str, ...] = ()  # why --netns=all cannot see or enter others

    def readiness(self) -> tuple[bool, str]:
        if self.completed_at is None:
            return False, "not ready: no poll has completed yet"
        if self.nothing_selected:
            return False, f"not ready: {self.nothing_selected}"
        if self.limited:
            reasons = ", ".join(self.limited)
            return False, f"not ready: namespace discovery is limited ({reasons})"
        age = time.monotonic() - self.completed_at
        limit = STALE_INTERVALS * self.interval
        if age >= limit:
            return False, f"stale: the last poll completed {age:.1f} s ago (limit {limit:g} s)"
        return True, f"ok: the last poll completed {age:.1f} s ago"


async def poll_forever(
    poller: Poller,
    collector: SnapshotCollector,
    interval: float,
    exposition: Exposition | None = None,
    clock: PollClock | None = None,
    busy: threading.Lock | None = None,
) -> None:
    """Poll every `interval` seconds; a poll that outlasts the interval delays the next
    one (polls never overlap) and counts as an overrun. Each poll is given the interval
    as its budget (see poller.py) and is rendered in its own thread, holding `busy` (serve
    closes the poller only when it can take that lock)."""
    overruns = 0
    next_start = time.monotonic()

    def poll_and_render(overruns: int) -> None:
        with busy if busy is not None else contextlib.nullcontext():
            snapshot = poller.poll_once(budget=interval)
        collector.update(dataclasses.replace(snapshot, poll_overruns=overruns))
        if clock is not None:
            clock.nothing_selected = (
                f"no namespace matches --netns ({', '.join(snapshot.missing)})"
                if snapshot.missing and not snapshot.namespaces
                else ""
            )
            clock.limited = tuple(r for r, holds in snapshot.discovery_limited if holds)
        if exposition is not None:
            exposition.refresh()
        release_free_memory()

    failing = ""
    while True:
        started = time.monotonic()
        try:
            await in_daemon_thread(functools.partial(poll_and_render, overruns), "poll")
        except Exception as exc:
            # No new snapshot: tcptw_last_poll_timestamp_seconds stops moving (the stale
            # alert) and /readyz turns red once the last good poll is too old.
            error = describe(exc)
            if error != failing:
                log.error("poll failed", error=error)
            failing = error
        else:
            if failing:
                log.info("polls succeed again")
            failing = ""
            if clock is not None:
                clock.completed_at = time.monotonic()
        finished = time.monotonic()
        duration = finished - started
        log.debug("poll done", seconds=round(duration, 4))
        next_start += interval
        if duration > interval:
            overruns += 1
            log.warning("poll overran the interval", seconds=round(duration, 3), interval=interval)
        elif finished > next_start:
            # The poll itself was quick, but it started late: the process was stopped
            # (SIGSTOP) or starved of CPU. Not an overrun; the schedule restarts from now.
            log.warning(
                "polling fell behind schedule", late_seconds=round(finished - next_start, 3)
            )
        next_start = max(next_start, finished)
        await asyncio.sleep(max(0.0, next_start - time.monotonic()))


async def serve(config: Config) -> None:
    try:
        web_config = load_web(config.web_config_file)
    except WebConfigError as exc:
        raise StartupError(f"--web.config.file {config.web_config_file}: {exc}") from None
    poller = Poller(config, feeds=FEEDS)
    busy = threading.Lock()  # held by the poll in progress
    try:
        await _serve(config, web_config, poller, busy)
    finally:
        # Close the namespaces' sockets and the event listeners, unless a poll still uses
        # them (a hung poll, at shutdown: its daemon thread is abandoned, and the process
        # exit reclaims them). The lock stays taken: a poll thread started meanwhile waits
        # for the exit instead of polling a closed poller.
        if busy.acquire(blocking=False):
            poller.close()
        else:
            log.debug("a poll is still running: the poller is left to the process exit")


async def _serve(
    config: Config, web_config: LoadedWeb, poller: Poller, busy: threading.Lock
) -> None:
    collector = SnapshotCollector(config)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    # process_* of the exporter itself, as of the last poll (the exposition is rendered
    # once per poll); always the real /proc/self, whatever --path.procfs says.
    ProcessMetrics(registry=registry)
    exposition = Exposition(registry)
    poller.scraped = exposition.was_served
    clock = PollClock(config.poll_interval)
    limits = WebLimits(
        telemetry_path=config.telemetry_path,
        max_requests=config.max_requests,
        max_connections=config.max_connections,
        read_timeout=config.read_timeout,
        idle_timeout=config.idle_timeout,
    )
    server = MetricsServer(exposition, limits, clock.readiness, web_config)
    try:
        addresses = await server.start(config.listen_address)
    except OSError as exc:  # in use, no permission for the port, unknown host, ...
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartupError(f"cannot listen on {config.listen_address}: {reason}") from None
    loop = asyncio.get_running_loop()
    reloader = None
    if config.web_config_file is not None:
        reloader = WebReloader(config.web_config_file, web_config, server.reload, loop)
        reloader.start()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # SIGHUP would end the process by default: it re-reads the web config instead.
    loop.add_signal_handler(signal.SIGHUP, functools.partial(_on_sighup, reloader))
    log.info(
        "listening",
        version=__version__,
        addresses=addresses,
        tls=web_config.config.tls is not None,
        basic_auth=bool(web_config.config.users),
        netns=config.netns if isinstance(config.netns, str) else sorted(config.netns),
        poll_interval=config.poll_interval,
        poll_workers=config.poll_workers or "auto",
        collectors=sorted(config.collectors) if config.collectors is not None else "all",
    )
    poll_task = asyncio.create_task(
        poll_forever(poller, collector, config.poll_interval, exposition, clock, busy)
    )
    await stop.wait()
    log.info("shutting down")
    poll_task.cancel()
    if reloader is not None:
        reloader.stop()
    await server.stop()


def _on_sighup(reloader: WebReloader | None) -> None:
    if reloader is None:
        log.info("SIGHUP received: no --web.config.file to reload, still serving")
    else:
        reloader.request_reload("SIGHUP")


def run(config: Config) -> None:
    uvloop.run(serve(config))
    if any(t.daemon and t.is_alive() for t in threading.enumerate()):
        # A poll still runs. Interpreter shutdown would stop its thread with
        # pthread_exit() when it next takes the GIL, and that forced unwind aborts the
        # process ("terminate called without an active exception") if it crosses one of
        # numpy's C++ frames. Nothing is left to flush but the log: leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
