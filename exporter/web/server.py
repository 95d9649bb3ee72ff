"""The HTTP surface, on aiohttp's low-level server on the daemon's loop: the exposition at
the telemetry path, /healthz, /readyz and a landing page; GET and HEAD only.

- HTTP/1.1 keep-alive (Prometheus reuses one connection per target, so scrapes leave no
  TIME-WAIT socket on the node).
- A scrape copies bytes rendered once per poll (exposition.py): nothing is rendered or
  read from disk on the loop.
- Bounded: at most --web.max-connections open connections (more are closed at once) and
  --web.max-requests telemetry requests at once (the rest get 503 at once); a request
  head of at most MAX_HEAD_BYTES (request line and each header field up to 8 KiB, 100
  header fields), so memory is bounded whatever clients send (docs/security.md); a TLS
  handshake and then each request head must arrive within --web.read-timeout, a response
  must be taken within WRITE_TIMEOUT, and an idle keep-alive connection is closed after
  --web.idle-timeout.
- Bad requests get a bare status line (no version, nothing of the request echoed) and
  one log line per kind per minute with a count; TLS handshake failures one debug line
  per peer with OpenSSL's reason.
- TLS, basic auth and extra headers from --web.config.file (webconfig.py); /healthz and
  /readyz are exempt from auth, as they say nothing but ok or stale.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import html
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

import structlog
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler
from prometheus_client.exposition import gzip_accepted

from exporter import __version__
from exporter.config import DEFAULTS
from exporter.engine.exposition import Exposition
from exporter.log import Throttled
from exporter.web.auth import BasicAuth
from exporter.web.reload import LoadedWeb
from exporter.web.tls import ServerTLS, Shape

log = structlog.get_logger("timewait_exporter.server")

WRITE_TIMEOUT = 30.0
MAX_LINE_BYTES = 8190  # request line and each header field (aiohttp's parser limits)
MAX_HEADERS = 100
# A whole request head (Prometheus sends about 300 bytes). aiohttp's own limits allow
# 100 fields of 8 KiB each, 800 KiB a connection: this caps what one can make us hold.
MAX_HEAD_BYTES = 16 << 10
SERVER = "timewait-exporter"
noisy = Throttled(log)
HEALTH_PATHS = ("/healthz", "/readyz")
Readiness = Callable[[], tuple[bool, str]]


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """ ":9961" (every address), "127.0.0.1:9961" or "[::1]:9961". The host is an IP
    address: no name is resolved (a DNS lookup at start-up is one more way to fail)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"must be [host]:port with a port of 0-65535, got {address!r}")
    host = host.strip("[]")
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f"the host must be an IP address (names are not resolved), got {host!r}"
            ) from None
    return (host or None), int(port_text)


@dataclass(frozen=True)
class WebLimits:
    telemetry_path: str = DEFAULTS.telemetry_path
    max_requests: int = DEFAULTS.max_requests
    max_connections: int = DEFAULTS.max_connections
    read_timeout: float = DEFAULTS.read_timeout
    idle_timeout: float = DEFAULTS.idle_timeout


class _Connection(RequestHandler):
    """aiohttp's protocol plus a deadline for each request head: from the connect, and
    from the first byte after a response. aiohttp's own keep-alive timer only closes
    connections idle between requests, and a slowloris client is never idle."""

    read_timeout = DEFAULTS.read_timeout  # set per server from WebLimits
    counts: dict[str, int]  # the server's open connections, shared
    _head_timer: asyncio.TimerHandle | None = None
    _between_requests = True
    _head_bytes = 0
    _counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.counts["open"] >= self.counts["max"]:
            noisy.note(
                "warning",
                "too many connections: closed at once",
                "max-connections",
                limit=self.counts["max"],
                peer=_peer(transport),
            )
            cast(asyncio.Transport, transport).abort()
            return
        self.counts["open"] += 1
        self._counted = True
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._between_requests:
            if self._head_timer is None:
                self._arm()
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                noisy.note(
                    "warning",
                    "request head too large: connection closed",
                    "head-too-large",
                    limit=MAX_HEAD_BYTES,
                    peer=_peer(self.transport),
                )
                if self.transport is not None:
                    self.transport.write(
                        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                        b"Server: " + SERVER.encode() + b"\r\n"
                        b"Connection: close\r\nContent-Length: 0\r\n\r\n"
                    )
                self.force_close()
                return
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._counted:
            self._counted = False
            self.counts["open"] -= 1
            super().connection_lost(exc)

    def request_started(self) -> None:
        self._between_requests = False
        self._head_bytes = 0
        self._disarm()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse or serve: a bare status line, nothing of the
        request echoed, and one log line per kind of error per minute."""
        kind = type(exc).__name__ if exc is not None else str(status)
        noisy.note("warning", "bad request", kind, status=status, peer=request.remote or "")
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started")
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        response = web.Response(
            status=status,
            text=f"{status} {phrase}\n",
            headers={hdrs.SERVER: SERVER, hdrs.CONNECTION: "close"},
            content_type="text/plain",
        )
        response.force_close()
        return response

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

    counts: dict[str, int]

    def __call__(self) -> RequestHandler:
        connection = _Connection(self, loop=self._loop, **self._kwargs)
        connection.read_timeout = self._read_timeout
        connection.counts = self.counts
        return connection


class _Handshake(asyncio.Protocol):
    """Becomes a TLS connection: asyncio's SSLProtocol over the accepted transport, as
    loop.create_server(ssl=...) would make, with two differences: the handshake must end
    within --web.read-timeout (asyncio's default is 60 s), and a failed one is logged
    once per peer at debug with OpenSSL's reason (neither asyncio nor uvloop logs it).
    asyncio's SSLProtocol, not uvloop's: uvloop's start_tls waits out the timeout on a
    plain HTTP request instead of refusing it at once (OpenSSL's HTTP_REQUEST)."""

    def __init__(self, server: _LowLevelServer, context: Callable[[], ssl.SSLContext | None]):
        self._server = server
        self._context = context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        context = self._context()
        if context is None:
            transport.close()
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        tls = asyncio.sslproto.SSLProtocol(
            loop,
            self._server(),
            context,
            waiter,
            server_side=True,
            call_connection_made=True,
            ssl_handshake_timeout=self._server._read_timeout,  # type: ignore[arg-type]
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)
        peer = _peer(transport)
        waiter.add_done_callback(lambda done: _handshake_done(done, peer))


def _handshake_done(done: asyncio.Future[None], peer: str) -> None:
    exc = None if done.cancelled() else done.exception()
    if exc is None:
        return
    reason = exc.reason if isinstance(exc, ssl.SSLError) else None
    if noisy.first_from(peer.rpartition(":")[0]):
        log.debug(
            "TLS handshake failed", peer=peer, reason=reason or f"{type(exc).__name__}: {exc}"
        )


class _Site(web.TCPSite):
    """aiohttp's TCP site, with TLS handshakes done by _Handshake."""

    def __init__(self, *args: Any, context: Callable[[], ssl.SSLContext | None], **kw: Any):
        super().__init__(*args, **kw)
        self._tls_context = context

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert isinstance(server, _LowLevelServer)
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.BaseProtocol] = server
        if self._tls_context() is not None:
            factory = lambda: _Handshake(server, self._tls_context)  # noqa: E731
        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
        )


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
        self._relisten_lock: asyncio.Lock | None = None
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
        server.counts = {"open": 0, "max": self.limits.max_connections}
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        await self._listen()
        return [f"{a[0]}:{a[1]}" for a in self._runner.addresses]

    async def _listen(self) -> None:
        assert self._runner is not None
        host, port = self._address
        site = _Site(
            self._runner,
            host,
            port,
            reuse_address=True,
            backlog=1024,
            context=lambda: self.tls.listener_context if self.tls else None,
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
        """One at a time, each with the config current when it runs: two changes in a row
        (a file caught half-written, then whole) must not interleave, or the second's
        stop could close the first's new listener and leave none."""
        if self._relisten_lock is None:
            self._relisten_lock = asyncio.Lock()
        async with self._relisten_lock:
            sites, self._sites = self._sites, []
            for site in sites:
                await site.stop()
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
        headers = {hdrs.SERVER: SERVER, **self.web.headers}
        if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD):
            return _text(405, "method not allowed\n", headers, Allow="GET, HEAD")
        path = request.path
        if self.tls and not self._san_allowed(request):
            return _text(403, "client certificate not allowed\n", headers)
        if (
            path not in HEALTH_PATHS
            and self.auth.enabled
            and not await self.auth.allows(
                request.headers.get(hdrs.AUTHORIZATION), request.remote or ""
            )
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
            self.exposition.mark_served()
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
