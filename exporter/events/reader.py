"""The one reader thread of every namespace's destroy-event listener.

epoll over the listeners, recvmmsg(2) until EAGAIN into fixed 2 KiB slots (socket.py),
each batch counted by the table with the dump's numpy decoder, never on the event loop.
Between rounds it lets events gather for larger batches as long as the smallest receive
buffer stays far from full at the rate seen.
"""

from __future__ import annotations

import errno
import selectors
import threading
import time
from typing import TYPE_CHECKING

import structlog

from exporter.events.socket import SLOTS, TRUESIZE, Receiver

if TYPE_CHECKING:
    from exporter.events.table import EventTable, NamespaceEvents

log = structlog.get_logger("timewait_exporter.events")

MAX_DELAY = 0.05  # seconds the reader may wait between rounds to batch events
FILL_TARGET = 0.25  # ... as long as the buffer fills no more than this share meanwhile


class Reader:
    def __init__(self, table: EventTable) -> None:
        self._table = table
        self._selector = selectors.DefaultSelector()
        self._receiver = Receiver()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rate = 0.0  # events per second, smoothed: sets the batching delay
        self._smallest_rcvbuf = 0

    def register(self, ns: NamespaceEvents) -> None:
        self._selector.register(ns.listener.socket.fileno(), selectors.EVENT_READ, ns)
        rcvbuf = ns.listener.socket.rcvbuf
        if not self._smallest_rcvbuf or rcvbuf < self._smallest_rcvbuf:
            self._smallest_rcvbuf = rcvbuf

    def unregister(self, ns: NamespaceEvents) -> None:
        self._selector.unregister(ns.listener.socket.fileno())

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="events", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(2)
        self._selector.close()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            try:
                ready = self._selector.select(timeout=0.5)
            except (OSError, ValueError):  # closed at shutdown
                return
            received = 0
            for selected, _ in ready:
                with self._table.lock:
                    ns = selected.data
                    if ns.closed:
                        continue
                    try:
                        received += self._drain(ns)
                    except Exception as exc:  # one namespace must not stop the reader
                        self._table.fail(ns, exc)
            now = time.monotonic()
            elapsed = max(now - last, 1e-3)
            last = now
            self._rate = 0.8 * self._rate + 0.2 * (received / elapsed)
            if received and self._rate > 0:
                capacity = self._smallest_rcvbuf / TRUESIZE
                delay = min(MAX_DELAY, FILL_TARGET * capacity / self._rate)
                if delay > 1e-3:
                    time.sleep(delay)  # counted in the next round's elapsed time

    def _drain(self, ns: NamespaceEvents) -> int:
        """recvmmsg until EAGAIN; count every batch. Returns the messages received."""
        total = 0
        overrun = False
        while True:
            try:
                n = self._receiver.receive(ns.listener.socket.sock)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    ns.overruns += 1
                    overrun = True
                    continue
                raise
            total += n
            if n:
                self._table.count(ns, self._receiver.view, self._receiver.lengths[:n], n)
            if n < SLOTS:
                break
        if overrun:
            ns.read_drops()
            log.warning("events lost: receive buffer overrun", netns=ns.label, lost=ns.lost)
        return total
