"""Keeps the web config current: loaded and checked at start (a bad file stops start-up
with one line), then re-read when the file or a certificate it names changes on disk
(checked every second, from a thread) and on SIGHUP. A file that turns bad keeps the last
good config, with one error log line per change of the file."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from exporter.web.config import WebConfig, WebConfigError, load_web_config
from exporter.web.tls import Stamp, build_context, file_stamp

log = structlog.get_logger("timewait_exporter.web")

CHECK_SECONDS = 1.0
SETTLE_SECONDS = 0.2


@dataclass(frozen=True)
class LoadedWeb:
    config: WebConfig
    context: ssl.SSLContext | None
    stamp: Stamp  # of the config file and the TLS files it names


def load_web(path: Path | None) -> LoadedWeb:
    """Read and check everything now (file I/O: a worker thread or start-up)."""
    if path is None:
        return LoadedWeb(WebConfig(), None, ())
    stamp_before = file_stamp((path,))
    config = load_web_config(path)
    context = build_context(config.tls) if config.tls else None
    files = (path, *(config.tls.files() if config.tls else ()))
    return LoadedWeb(config, context, stamp_before + file_stamp(files[1:]))


class WebReloader:
    def __init__(
        self,
        path: Path,
        loaded: LoadedWeb,
        apply: Callable[[LoadedWeb], object],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.path = path
        self.apply = apply
        self.loop = loop
        self._seen = loaded.stamp  # the last stamp acted on, good or bad
        self._files = self._watched(loaded)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="web-config", daemon=True)

    def _watched(self, loaded: LoadedWeb) -> tuple[Path, ...]:
        tls = loaded.config.tls
        return (self.path, *(tls.files() if tls else ()))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def request_reload(self, reason: str) -> None:
        """SIGHUP: reload even if nothing seems to have changed (never on the loop)."""
        threading.Thread(
            target=self._reload, args=(reason, True), name="web-config-hup", daemon=True
        ).start()

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_SECONDS):
            self._reload("changed on disk", False)

    def _reload(self, reason: str, force: bool) -> None:
        with self._lock:
            stamp = file_stamp(self._files)
            if stamp == self._seen and not force:
                return
            if not force:
                # A file being written (truncated, then filled) must not be read half
                # done: act once it has kept the same size and time a moment.
                time.sleep(SETTLE_SECONDS)
                if file_stamp(self._files) != stamp:
                    return  # still changing: the next round reads it
            self._seen = stamp
            try:
                loaded = load_web(self.path)
            except Exception as exc:  # any bad file: the watcher must live on
                error = str(exc) if isinstance(exc, WebConfigError) else repr(exc)
                log.error(
                    "web config reload failed, keeping the last good one",
                    file=str(self.path),
                    reason=reason,
                    error=error,
                )
                return
            self._files = self._watched(loaded)
            self._seen = file_stamp(self._files)
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            self.loop.call_soon_threadsafe(self._apply, loaded, reason)

    def _apply(self, loaded: LoadedWeb, reason: str) -> None:
        self.apply(loaded)
        log.info(
            "web config reloaded",
            file=str(self.path),
            reason=reason,
            tls=loaded.config.tls is not None,
            basic_auth_users=len(loaded.config.users),
        )
