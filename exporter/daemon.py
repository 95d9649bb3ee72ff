"""The serve loop: asyncio (on uvloop when installed), polls in a worker thread, HTTP on
the loop. Netlink and file I/O never run on the event loop (uvloop cannot open AF_NETLINK
endpoints, and a blocking dump would stall scrapes)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.collector import SnapshotCollector
from exporter.config import Config
from exporter.exposition import Exposition
from exporter.poller import Poller
from exporter.server import MetricsServer

log = structlog.get_logger("timewait_exporter.daemon")
T = TypeVar("T")


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


async def poll_forever(
    poller: Poller,
    collector: SnapshotCollector,
    interval: float,
    exposition: Exposition | None = None,
) -> None:
    """Poll every `interval` seconds; a poll that outlasts the interval delays the next
    one (polls never overlap) and counts as an overrun. Each poll is given the interval
    as its budget (see poller.py) and is rendered in its own thread."""
    overruns = 0
    next_start = time.monotonic()

    def poll_and_render(overruns: int) -> None:
        snapshot = poller.poll_once(budget=interval)
        collector.update(dataclasses.replace(snapshot, poll_overruns=overruns))
        if exposition is not None:
            exposition.refresh()

    while True:
        started = time.monotonic()
        try:
            await in_daemon_thread(functools.partial(poll_and_render, overruns), "poll")
        except Exception:
            log.exception("poll failed")
        finished = time.monotonic()
        next_start += interval
        if finished > next_start:
            overruns += 1
            log.warning("poll overran the interval", seconds=round(finished - started, 3))
            next_start = finished
        await asyncio.sleep(max(0.0, next_start - time.monotonic()))


async def serve(config: Config) -> None:
    poller = Poller(config)
    collector = SnapshotCollector(config)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    exposition = Exposition(registry)
    try:
        server = await MetricsServer(exposition, config.telemetry_path).start(config.listen_address)
    except OSError as exc:  # in use, no permission for the port, unknown host, ...
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StartupError(f"cannot listen on {config.listen_address}: {reason}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # SIGHUP would end the process by default; there is no configuration file to re-read.
    loop.add_signal_handler(
        signal.SIGHUP, lambda: log.info("SIGHUP received: nothing to reload, still serving")
    )
    addresses = [sock.getsockname()[:2] for sock in server.sockets]
    log.info(
        "listening",
        version=__version__,
        addresses=[f"{a[0]}:{a[1]}" for a in addresses],
        netns=config.netns if isinstance(config.netns, str) else sorted(config.netns),
        poll_interval=config.poll_interval,
        poll_workers=config.poll_workers,
        collectors=sorted(config.collectors) if config.collectors is not None else "all",
    )
    poll_task = asyncio.create_task(
        poll_forever(poller, collector, config.poll_interval, exposition)
    )
    await stop.wait()
    log.info("shutting down")
    poll_task.cancel()
    server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 1.0)


def run(config: Config) -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional at run time; the stdlib loop serves too
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
