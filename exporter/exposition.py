"""The /metrics body, rendered once per poll in the poll's thread (plain and gzipped), so
that a scrape only copies bytes: its cost does not grow with the namespaces or series."""

from __future__ import annotations

import gzip
import threading

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry


class Exposition:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._plain = b""
        self._gzipped = b""
        self.refresh()

    def refresh(self) -> None:
        """Render the registry now (call from a worker thread, never the event loop)."""
        plain = generate_latest(self.registry)
        gzipped = gzip.compress(plain, compresslevel=1)
        with self._lock:
            self._plain, self._gzipped = plain, gzipped

    def body(self, gzipped: bool) -> bytes:
        with self._lock:
            return self._gzipped if gzipped else self._plain
