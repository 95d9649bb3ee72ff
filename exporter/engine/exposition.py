"""The /metrics bodies, rendered once per poll in the poll's thread, plain and gzipped, in
every format a scraper has asked for, so that a scrape only copies bytes: its cost does
not grow with the namespaces or series.

The format is prometheus_client's own choice (exposition.choose_encoder) from the Accept
header: text 0.0.4 by default, OpenMetrics when asked, with its version and escaping. A
content type seen for the first time is rendered at once off the event loop, then kept
up to date with the others at each poll."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

Encoder = Callable[[CollectorRegistry], bytes]
MAX_FORMATS = 16  # Accept headers are client input: bound what is rendered each poll
# What Prometheus itself sends (2.x and 3.x): rendered from the first poll on.
PRELOADED = (
    "",
    "application/openmetrics-text;version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
)


@dataclass(frozen=True)
class Body:
    plain: bytes
    gzipped: bytes


class Exposition:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._encoders: dict[str, Encoder] = {}
        for accept in PRELOADED:
            encoder, content_type = choose_encoder(accept)
            self._encoders[content_type] = encoder
        self._bodies: dict[str, Body] = {}
        self._served = False  # a /metrics body went out since the last refresh
        self.refresh()

    def mark_served(self) -> None:
        """A scrape took the current bodies (the server, on the loop)."""
        self._served = True

    def was_served(self) -> bool:
        """Whether a scraper saw the bodies of the last poll (read before the next
        refresh): a series first exposed at a previous value must be seen once."""
        return self._served

    @staticmethod
    def negotiate(accept: str) -> tuple[Encoder, str]:
        """(encoder, content type) for an Accept header: string work only, loop-safe."""
        return choose_encoder(accept)

    def refresh(self) -> None:
        """Render every known format now (call from a worker thread, never the loop)."""
        with self._lock:
            encoders = dict(self._encoders)
        bodies = {
            content_type: _render(encoder, self.registry)
            for content_type, encoder in encoders.items()
        }
        with self._lock:
            self._bodies = bodies
            self._served = False

    def cached(self, content_type: str) -> Body | None:
        with self._lock:
            return self._bodies.get(content_type)

    def render(self, content_type: str, encoder: Encoder) -> Body:
        """A format not rendered yet: render it now (worker thread) and from now on at
        every refresh, unless MAX_FORMATS are known already."""
        body = _render(encoder, self.registry)
        with self._lock:
            if content_type in self._encoders or len(self._encoders) < MAX_FORMATS:
                self._encoders[content_type] = encoder
                self._bodies = {**self._bodies, content_type: body}
        return body


def _render(encoder: Encoder, registry: CollectorRegistry) -> Body:
    plain = encoder(registry)
    return Body(plain, gzip.compress(plain, compresslevel=1))
