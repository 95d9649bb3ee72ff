"""One log line per change of a source's state in a namespace: ok to failed, failed to
ok, or a new error; warnings (a source serving without part of its data) likewise."""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterable

import structlog

log = structlog.get_logger("timewait_exporter.poller")


class SourceStates:
    def __init__(self) -> None:
        self._last: dict[tuple[str, str, bool], str] = {}  # "" when ok, else the error
        self._lock = threading.Lock()

    def note(
        self, netns: str, source: str, error: str, warning: bool = False, quiet: bool = False
    ) -> None:
        """quiet: a failure already reported once for every namespace: debug only."""
        key = (netns, source, warning)
        with self._lock:
            previous = self._last.get(key)
            self._last[key] = error
        if previous == error or (previous is None and not error):
            return
        if error and warning:
            log.warning(error, netns=netns, source=source)
        elif error and quiet:
            log.debug("source failed", netns=netns, source=source, error=error)
        elif error:
            log.error("source failed", netns=netns, source=source, error=error)
        elif not warning:
            log.info("source recovered", netns=netns, source=source)

    def keep_only(self, labels: Iterable[str]) -> None:
        """Forget the states of namespaces no longer polled (a label that comes back is
        a new namespace: its first failure is news again)."""
        keep = set(labels)
        with self._lock:
            for key in [k for k in self._last if k[0] not in keep]:
                del self._last[key]


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        # Out of descriptors, the path tried (which changes with each attempt) says
        # nothing and would make every poll's line new: one line until it changes.
        exhausted = exc.errno in (errno.EMFILE, errno.ENFILE)
        where = f" ({exc.filename})" if exc.filename and not exhausted else ""
        return f"{type(exc).__name__}: [Errno {exc.errno}] {exc.strerror}{where}"
    return f"{type(exc).__name__}: {exc}"
