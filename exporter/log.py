"""structlog set-up: JSON lines when stderr is not a terminal, coloured console otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, OrderedDict

import structlog

LEVELS = ("debug", "info", "warning", "error")


def configure(level: str = "info", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library (aiohttp: "aiohttp.server", asyncio):
    # route them into the same stream, one JSON line each, at the same level.
    root = logging.getLogger()
    root.handlers[:] = [_ToStructlog()]
    root.setLevel(max(getattr(logging, level.upper()), logging.INFO))


class _ToStructlog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, object] = {"logger": record.name}
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            fields["error"] = f"{type(error).__name__}: {error}"
        structlog.get_logger(record.name).log(record.levelno, record.getMessage(), **fields)


class Throttled:
    """One line per kind of event per interval, with the count of those not logged since
    (bad requests, refused connections, TLS handshake failures: a client can make them as
    fast as it likes, and each would otherwise cost a log line). Kinds are few and fixed
    by the caller; `peers` keys (for once-per-peer lines) are kept in a bounded LRU."""

    def __init__(self, logger: object, interval: float = 60.0, peers: int = 1024) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._since: Counter[str] = Counter()
        self._peers: OrderedDict[str, None] = OrderedDict()
        self._max_peers = peers

    def note(self, level: str, event: str, kind: str, **fields: object) -> bool:
        """Log unless this kind was logged within the interval; True when logged."""
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._since[kind] += 1
            return False
        self._last[kind] = now
        getattr(self._log, level)(event, kind=kind, not_logged=self._since.pop(kind, 0), **fields)
        return True

    def first_from(self, peer: str) -> bool:
        """True the first time `peer` is seen (within the last `peers` distinct ones)."""
        if peer in self._peers:
            self._peers.move_to_end(peer)
            return False
        self._peers[peer] = None
        while len(self._peers) > self._max_peers:
            self._peers.popitem(last=False)
        return True
