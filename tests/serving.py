"""A real daemon in a subprocess for HTTP tests, and throwaway certificates made with the
openssl command line."""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import tool
from tests.kernel import scaled, wait_until

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    port: int
    context: ssl.SSLContext | None = None  # client side, when the daemon serves TLS
    lines: list[str] = field(default_factory=list)  # stderr, read as it comes
    reader: threading.Thread | None = None

    def read_stderr(self) -> None:
        """Collect the log lines in the background, so that a test can wait for one."""

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()

    def events(self) -> list[dict[str, object]]:
        """The JSON log lines so far (asserting every line is JSON)."""
        lines = list(self.lines)
        assert all(line.startswith("{") for line in lines), lines[:10]
        return [json.loads(line) for line in lines]

    def wait_for_event(self, event: str, timeout: float = 10, **fields: object) -> None:
        """Until the log holds a line whose event starts with `event`, with those fields."""

        def logged() -> bool:
            return any(
                str(e["event"]).startswith(event) and all(e.get(k) == v for k, v in fields.items())
                for e in self.events()
            )

        wait_until(logged, timeout, f"a log line {event!r} {fields or ''}")

    def connection(self, timeout: float = 5) -> http.client.HTTPConnection:
        if self.context is not None:
            return http.client.HTTPSConnection(
                HOST, self.port, timeout=scaled(timeout), context=self.context
            )
        return http.client.HTTPConnection(HOST, self.port, timeout=scaled(timeout))

    def get(
        self,
        path: str = "/metrics",
        headers: dict[str, str] | None = None,
        method: str = "GET",
    ) -> tuple[http.client.HTTPResponse, bytes]:
        conn = self.connection()
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response, response.read()
        finally:
            conn.close()

    def stop(self) -> list[dict[str, object]]:
        """SIGTERM, wait, and the JSON log lines (asserting every line is JSON)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)
        self.drain()
        return self.events()

    def drain(self) -> None:
        """Once the process has exited: the rest of its log, and the pipe closed."""
        if self.reader is not None:
            self.reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.contextmanager
def running(
    *args: str,
    prefix: Sequence[str] = (),
    context: ssl.SSLContext | None = None,
    ready_path: str = "/healthz",
    port: int | None = None,
) -> Iterator[Daemon]:
    """`timewait-exporter serve` on 127.0.0.1 (--netns=self, JSON logs), once it answers."""
    port = port or free_port()
    proc = subprocess.Popen(
        [
            *prefix,
            sys.executable,
            "-m",
            "exporter",
            "serve",
            "--netns=self",
            f"--web.listen-address={HOST}:{port}",
            "--log.format=json",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    daemon = Daemon(proc, port, context)
    daemon.read_stderr()
    try:
        deadline = time.monotonic() + scaled(15)
        while True:
            if proc.poll() is not None:
                daemon.drain()
                raise AssertionError("daemon exited: " + "\n".join(daemon.lines))
            try:
                if daemon.get(ready_path)[0].status == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon did not answer within {scaled(15):.0f} s")
            time.sleep(0.05)
        yield daemon
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        daemon.drain()


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as files."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def client_context(self, with_cert: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            context.load_cert_chain(self.directory / "client.crt", self.directory / "client.key")
        return context


def _openssl(*args: str, cwd: Path) -> None:
    openssl = tool("openssl", "Debian package openssl")
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True)


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        cwd=directory,
    )
    issue(directory, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    issue(directory, "client", "subjectAltName=DNS:prometheus.example\nextendedKeyUsage=clientAuth")
    return Pki(directory)


def issue(directory: Path, name: str, extensions: str) -> None:
    """name.key and name.crt, signed by the CA in `directory` (a new serial each time)."""
    (directory / f"{name}.ext").write_text(extensions + "\n")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=directory,
    )


def server_certificate(port: int, context: ssl.SSLContext) -> bytes:
    """The DER certificate a new TLS connection to the daemon is given."""
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der
