"""A minimal asyncio HTTP/1.1 server: the exposition at the telemetry path, a landing page
at /, 404 elsewhere. The body is rendered once per poll (exposition.py), so a scrape never
waits for a poll in progress and never renders on the event loop."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from prometheus_client import CONTENT_TYPE_LATEST

from exporter.exposition import Exposition

log = structlog.get_logger("timewait_exporter.server")

MAX_REQUEST_HEAD = 16 << 10
READ_TIMEOUT = 10.0


def parse_listen_address(address: str) -> tuple[str | None, int]:
    """ ":9961" (every address), "127.0.0.1:9961" or "[::1]:9961"."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"must be [host]:port with a port of 0-65535, got {address!r}")
    host = host.strip("[]")
    return (host or None), int(port_text)


class MetricsServer:
    def __init__(self, exposition: Exposition, telemetry_path: str) -> None:
        self.exposition = exposition
        self.telemetry_path = telemetry_path
        self.landing = (
            "<html><head><title>timewait-exporter</title></head><body>"
            "<h1>timewait-exporter</h1><p>TCP TIME-WAIT and ephemeral-port exhaustion, "
            f'per network namespace.</p><p><a href="{telemetry_path}">Metrics</a></p>'
            "</body></html>\n"
        ).encode()

    async def start(self, address: str) -> asyncio.Server:
        host, port = parse_listen_address(address)
        return await asyncio.start_server(self.handle, host, port, reuse_address=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            if len(head) > MAX_REQUEST_HEAD:
                raise ValueError("request head too large")
            await self.respond(head, writer)
        except asyncio.IncompleteReadError as exc:
            # Nothing read: a bare connect-then-close (a load balancer's TCP check, nc -z,
            # a port scan). There is nobody to answer and nothing worth a log line.
            if exc.partial:
                await self.bad_request(writer)
        except (asyncio.LimitOverrunError, TimeoutError, ValueError):
            await self.bad_request(writer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def bad_request(self, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):  # the client may be gone already
            await self.send(writer, 400, "text/plain; charset=utf-8", b"bad request\n")

    async def respond(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split()
        if len(parts) != 3:
            raise ValueError("malformed request line")
        method, target, _ = parts
        path = target.split("?", 1)[0]
        headers = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            await self.send(writer, 405, "text/plain; charset=utf-8", b"method not allowed\n")
            return
        if path == self.telemetry_path:
            gzipped = "gzip" in headers.get("accept-encoding", "")
            body = self.exposition.body(gzipped)
            extra = {"Content-Encoding": "gzip"} if gzipped else {}
            await self.send(writer, 200, CONTENT_TYPE_LATEST, body, extra, method == "HEAD")
        elif path == "/":
            await self.send(writer, 200, "text/html; charset=utf-8", self.landing)
        else:
            await self.send(writer, 404, "text/plain; charset=utf-8", b"404 page not found\n")

    @staticmethod
    async def send(
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        extra: dict[str, str] | None = None,
        head_only: bool = False,
    ) -> None:
        reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
        lines = [
            f"HTTP/1.1 {status} {reasons[status]}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        await writer.drain()
