"""The HTTP surface, on aiohttp's low-level server on the daemon's loop: the exposition at
the telemetry path, /healthz, /readyz and a landing page; GET and HEAD only.

- HTTP/1.1 keep-alive (Prometheus reuses one connection per target, so scrapes leave no
  TIME-WAIT socket on the node).
- A scrape copies bytes rendered once per poll (exposition.py): nothing is rendered or
  read from disk on the loop.
- Bounded: at most --web.max-requests telemetry requests at once (the rest get 503 at
  once); request line and header fields up to 8 KiB, 100 header fields; a request head
  must arrive within --web.read-timeout of its first byte (or of the connect), a response
  must be taken within WRITE_TIMEOUT, and an idle keep-alive connection is closed after
  --web.idle-timeout.
- TLS, basic auth and extra headers from --web.config.file (webconfig.py); /healthz and
  /readyz are exempt from auth, as they say nothing but ok or stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from prometheus_client.exposition import gzip_accepted

from exporter import __version__
from exporter.config import DEFAULTS
from exporter.engine.exposition import Exposition
from exporter.web.auth import BasicAuth
from exporter.web.reload import LoadedWeb
from exporter.web.tls import ServerTLS, Shape

log = structlog.get_logger("timewait_exporter.server")

WRITE_TIMEOUT = 30.0
MAX_LINE_BYTES = 8190  # request line and each header field (aiohttp's parser limits)
MAX_HEADERS = 100
HEALTH_PATHS = ("/healthz", "/readyz")
Readiness = Callable[[], tuple[bool, str]]


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """ ":9961" (every address), "127.0.0.1:9961" or "[::1]:9961"."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"must be [host]:port with a port of 0-65535, got {address!r}")
    host = host.strip("[]")
    return (host or None), int(port_text)


@dataclass(frozen=True)
class WebLimits:
    telemetry_path: str = DEFAULTS.telemetry_path
    max_requests: int = DEFAULTS.max_requests
    read_timeout: float = DEFAULTS.read_timeout
    idle_timeout: float = DEFAULTS.idle_timeout


class _Connection(RequestHandler):
    """aiohttp's protocol plus a deadline for each request head: from the connect, and
    from the first byte after a response. aiohttp's own keep-alive timer only closes
    connections idle between requests, and a slowloris client is never idle."""

    read_timeout = DEFAULTS.read_timeout  # set per server from WebLimits
    _head_timer: asyncio.TimerHandle | None = None
    _between_requests = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._between_requests and self._head_timer is None:
            self._arm()
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def request_started(self) -> None:
        self._between_requests = False
        self._disarm()

    def request_finished(self) -> None:
        self._between_requests = True

    def _arm(self) -> None:
        self._head_timer = asyncio.get_running_loop().call_later(
            self.read_timeout, self._head_timed_out
        )

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        log.debug(
            "request head not received in time: connection closed",
            seconds=self.read_timeout,
            peer=_peer(self.transport),
        )
        self.force_close()


class _LowLevelServer(web.Server):
    def __init__(self, handler: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._read_timeout = read_timeout

    def __call__(self) -> RequestHandler:
        connection = _Connection(self, loop=self._loop, **self._kwargs)
        connection.read_timeout = self._read_timeout
        return connection


class MetricsServer:
    def __init__(
        self,
        exposition: Exposition,
        limits: WebLimits,
        readiness: Readiness,
        web_config: LoadedWeb,
    ) -> None:
        self.exposition = exposition
        self.limits = limits
        self.readiness = readiness
        self.in_flight = 0
        self._runner: web.ServerRunner | None = None
        self._sites: list[web.TCPSite] = []
        self._address: tuple[str | None, int] = (None, 0)
        self._relisten_task: asyncio.Task[None] | None = None
        self._apply_config(web_config)
        path = html.escape(limits.telemetry_path)
        self.landing = (
            "<!DOCTYPE html><html><head><title>timewait-exporter</title></head><body>"
            f"<h1>timewait-exporter {__version__}</h1><p>TCP TIME-WAIT and ephemeral-port "
            "exhaustion, per network namespace.</p><ul>"
            f'<li><a href="{path}">Metrics</a></li>'
            '<li><a href="/healthz">/healthz</a>: the process serves</li>'
            '<li><a href="/readyz">/readyz</a>: the last poll is recent</li>'
            "</ul></body></html>\n"
        ).encode()

    def _apply_config(self, loaded: LoadedWeb) -> None:
        self.web = loaded.config
        self.auth = BasicAuth(loaded.config.users)
        tls = loaded.config.tls
        self.tls = ServerTLS(tls, loaded.context) if tls and loaded.context else None

    # -- listening ---------------------------------------------------------------------

    async def start(self, address: str) -> list[str]:
        """Listen (raises OSError); returns the bound addresses as host:port."""
        self._address = parse_listen_address(address)
        server = _LowLevelServer(
            self.handle,
            read_timeout=self.limits.read_timeout,
            keepalive_timeout=self.limits.idle_timeout,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            max_headers=MAX_HEADERS,
            access_log=None,
        )
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        await self._listen()
        return [f"{a[0]}:{a[1]}" for a in self._runner.addresses]

    async def _listen(self) -> None:
        assert self._runner is not None
        host, port = self._address
        context = self.tls.listener_context if self.tls else None
        site = web.TCPSite(
            self._runner, host, port, ssl_context=context, reuse_address=True, backlog=1024
        )
        await site.start()
        self._sites.append(site)

    async def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._runner.cleanup(), 1.0)

    def reload(self, loaded: LoadedWeb) -> None:
        """A new web config (on the loop). Certificates, keys, CAs, users and headers
        apply to the next handshake or request; a change of TLS on/off, client auth type
        or TLS versions re-creates the listener (a moment of refused connects)."""
        old_shape = Shape.of(self.tls.settings if self.tls else None)
        new_shape = Shape.of(loaded.config.tls)
        if (
            self.tls is not None
            and loaded.config.tls
            and loaded.context
            and (old_shape == new_shape)
        ):
            self.tls.replace(loaded.config.tls, loaded.context)
            self.web, self.auth = loaded.config, BasicAuth(loaded.config.users)
        else:
            self._apply_config(loaded)
            if old_shape != new_shape:
                self._relisten_task = asyncio.get_running_loop().create_task(self._relisten())

    async def _relisten(self) -> None:
        for site in self._sites:
            await site.stop()
        self._sites.clear()
        try:
            await self._listen()
        except OSError as exc:
            log.error("cannot listen again after a TLS change", error=str(exc))

    # -- requests ----------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        connection = request.protocol
        if isinstance(connection, _Connection):
            connection.request_started()
        try:
            response = await self._route(request)
        finally:
            if isinstance(connection, _Connection):
                connection.request_finished()
        return response

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = {hdrs.SERVER: "timewait-exporter", **self.web.headers}
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return _text(405, "method not allowed\n", headers, Allow="GET, HEAD")
        path = request.path
        if self.tls and not self._san_allowed(request):
            return _text(403, "client certificate not allowed\n", headers)
        if (
            path not in HEALTH_PATHS
            and self.auth.enabled
            and not await self.auth.allows(request.headers.get(hdrs.AUTHORIZATION))
        ):
            return _text(
                401,
                "unauthorized\n",
                headers,
                **{"WWW-Authenticate": 'Basic realm="timewait-exporter"'},
            )
        if path == self.limits.telemetry_path:
            return await self._metrics(request, headers)
        if path == "/healthz":
            return _text(200, "ok\n", headers)
        if path == "/readyz":
            ready, message = self.readiness()
            return _text(200 if ready else 503, message + "\n", headers)
        if path == "/":
            return web.Response(
                body=self.landing, headers=headers, content_type="text/html", charset="utf-8"
            )
        return _text(404, "404 page not found\n", headers)

    async def _metrics(
        self, request: web.BaseRequest, headers: dict[str, str]
    ) -> web.StreamResponse:
        if self.in_flight >= self.limits.max_requests:
            log.debug("too many concurrent scrapes: 503", limit=self.limits.max_requests)
            return _text(503, "too many concurrent scrapes\n", headers, **{"Retry-After": "1"})
        self.in_flight += 1
        try:
            encoder, content_type = self.exposition.negotiate(
                ",".join(request.headers.getall(hdrs.ACCEPT, []))
            )
            body = self.exposition.cached(content_type)
            if body is None:
                loop = asyncio.get_running_loop()
                body = await loop.run_in_executor(
                    None, self.exposition.render, content_type, encoder
                )
            gzipped = gzip_accepted(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
            payload = body.gzipped if gzipped else body.plain
            headers[hdrs.CONTENT_TYPE] = content_type
            if gzipped:
                headers[hdrs.CONTENT_ENCODING] = "gzip"
            headers[hdrs.VARY] = "Accept, Accept-Encoding"
            response = web.StreamResponse(headers=headers)
            response.content_length = len(payload)
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.prepare(request)
                    if request.method != hdrs.METH_HEAD:
                        await response.write(payload)
                    await response.write_eof()
            except TimeoutError:
                log.debug(
                    "response not taken in time: connection closed",
                    seconds=WRITE_TIMEOUT,
                    peer=_peer(request.transport),
                )
                if request.transport is not None:
                    request.transport.abort()
            log.debug(
                "scrape",
                peer=_peer(request.transport),
                bytes=len(payload),
                content_type=content_type,
                gzip=gzipped,
                method=request.method,
            )
            return response
        finally:
            self.in_flight -= 1

    def _san_allowed(self, request: web.BaseRequest) -> bool:
        assert self.tls is not None
        allowed = self.tls.settings.client_allowed_sans
        if allowed is None:
            return True
        transport = request.transport
        peer = transport.get_extra_info("peercert") if transport is not None else None
        sans = {value for _kind, value in (peer or {}).get("subjectAltName", ())}
        return bool(sans & allowed)


def _text(status: int, text: str, headers: dict[str, str], **extra: str) -> web.Response:
    return web.Response(
        status=status,
        text=text,
        headers={**headers, **extra},
        content_type="text/plain",
        charset="utf-8",
    )


def _peer(transport: asyncio.BaseTransport | None) -> str:
    if transport is None:
        return ""
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
