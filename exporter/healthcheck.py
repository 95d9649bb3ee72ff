"""`timewait-exporter healthcheck`: GET /healthz of the local listener, exit 0 or 1.

It follows the configuration of the daemon it checks. With no flag of its own, it reads
the command line of the `timewait-exporter serve` process it runs next to (PID 1 in a
container; otherwise the only such process it can see) and takes that process's
--web.listen-address and --web.config.file; flags given to `healthcheck` replace them
all (they are parsed exactly as `serve` parses them). So the image's HEALTHCHECK needs no
flags, whatever `args` the DaemonSet or `docker run` gives the exporter.

- The listen address: a wildcard host (":9961", "0.0.0.0:9961") is reached on 127.0.0.1,
  "[::]:9961" on ::1; any other host as given.
- TLS (tls_server_config in --web.config.file): HTTPS without verifying the server's
  certificate (the check talks to its own daemon on loopback; it proves the listener
  serves, not who it is). When the server requires a client certificate
  (RequireAndVerifyClientCert), the check has none to present: it stops at the TLS
  handshake, which the server completes (or answers with the alert asking for a
  certificate) only while it serves; /healthz is then not fetched.
- Basic auth: /healthz is exempt, so no password is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import socket
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter.web.config import WebConfigError, load_web_config
from exporter.web.server import parse_listen_address

TIMEOUT = 4.0  # seconds for the connection and the answer; Docker's default timeout is 30 s
PROC = Path("/proc")
# What a server requiring a client certificate answers, during the handshake, a client
# that has none: an alert, or (Python's ssl under TLS 1.2) closing the connection once it
# has sent its certificate and request. A hung server sends nothing (a timeout), a dead
# one refuses or resets the connection.
CERTIFICATE_REQUIRED = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_HANDSHAKE_FAILURE",
        "UNEXPECTED_EOF_WHILE_READING",
    }
)


class HealthcheckError(Exception):
    """The check failed; the message says why."""


def exporter_args(cmdline: Sequence[str]) -> list[str] | None:
    """The arguments after the program of a `timewait-exporter` (or `python -m exporter`)
    command line, or None when it is another program."""
    for index, word in enumerate(cmdline):
        if index and not os.path.basename(cmdline[0]).startswith("python"):
            break  # the program comes first, or after an interpreter and its options
        if os.path.basename(word) == "timewait-exporter":
            return list(cmdline[index + 1 :])
        if word == "-m" and index + 1 < len(cmdline) and cmdline[index + 1] == "exporter":
            return list(cmdline[index + 2 :])
    return None


def _cmdline(pid: str, proc: Path) -> list[str]:
    try:
        raw = (proc / pid / "cmdline").read_bytes()
    except OSError:
        return []
    return [word.decode(errors="replace") for word in raw.split(b"\0") if word]


def serving_process(
    parser: argparse.ArgumentParser, proc: Path | None = None
) -> tuple[int, argparse.Namespace] | None:
    """The pid and parsed flags of the `serve` process to check: PID 1 when it is one,
    else the only one visible (None when there is none, or several)."""
    proc = proc or PROC

    def parsed(pid: str) -> argparse.Namespace | None:
        words = exporter_args(_cmdline(pid, proc))
        if words is None:
            return None
        try:
            args, _ = parser.parse_known_args(words)
        except SystemExit:  # argparse's error() on a command line it cannot parse
            return None
        return args if args.command == "serve" else None

    first = parsed("1")
    if first is not None:
        return 1, first
    found = []
    for entry in proc.iterdir():
        if entry.name.isdigit() and entry.name != "1" and int(entry.name) != os.getpid():
            args = parsed(entry.name)
            if args is not None:
                found.append((int(entry.name), args))
    return found[0] if len(found) == 1 else None


def target(listen_address: str) -> tuple[str, int]:
    """Where to connect for a listen address: loopback for a wildcard host."""
    host, port = parse_listen_address(listen_address)
    if host in (None, "", "0.0.0.0"):
        return "127.0.0.1", port
    if host == "::":
        return "::1", port
    return host, port


def check(listen_address: str, web_config_file: Path | None, timeout: float = TIMEOUT) -> str:
    """GET /healthz; the line to print when healthy, else HealthcheckError."""
    host, port = target(listen_address)
    tls = None
    if web_config_file is not None:
        try:
            tls = load_web_config(web_config_file).tls
        except WebConfigError as exc:
            raise HealthcheckError(f"--web.config.file: {exc}") from None
    where = f"{'https' if tls else 'http'}://{host if ':' not in host else f'[{host}]'}:{port}"
    conn: http.client.HTTPConnection
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if tls.verify_mode == ssl.CERT_REQUIRED:
            return handshake(host, port, context, where, timeout)
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz", headers={"User-Agent": "timewait-exporter healthcheck"})
        response = conn.getresponse()
        body = response.read(256)
    except ssl.SSLError as exc:
        raise HealthcheckError(f"{where}/healthz: TLS: {exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise HealthcheckError(f"{where}/healthz: {exc or type(exc).__name__}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise HealthcheckError(f"{where}/healthz answered {response.status}: {body!r}")
    return f"ok: {where}/healthz"


def handshake(host: str, port: int, context: ssl.SSLContext, where: str, timeout: float) -> str:
    """A server that requires a client certificate: the check has none, so it stops at
    the TLS handshake. Completing it (TLS 1.3: the server's certificate and Finished), or
    the server refusing it for want of a certificate (TLS 1.2), is an answer from a live
    listener."""
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.do_handshake()
    except ssl.SSLError as exc:
        if exc.reason not in CERTIFICATE_REQUIRED:
            raise HealthcheckError(f"{where}: TLS: {exc}") from None
    except OSError as exc:
        raise HealthcheckError(f"{where}: {exc or type(exc).__name__}") from None
    return f"ok: {where} (TLS handshake; client certificate required: /healthz not fetched)"


def main(args: argparse.Namespace, argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """Exit 0 when /healthz answers 200, else 1 (one line on stdout either way)."""
    listen, config_file = args.listen_address, args.web_config_file
    cwd = Path.cwd()
    if not any(word.startswith("-") for word in argv):
        found = serving_process(parser)
        if found is not None:
            pid, served = found
            listen, config_file = served.listen_address, served.web_config_file
            with contextlib.suppress(OSError):
                cwd = Path(os.readlink(PROC / str(pid) / "cwd"))
    path = cwd / config_file if config_file else None  # relative: to the daemon's directory
    try:
        print(check(listen, path))
    except (HealthcheckError, ValueError) as exc:
        print(f"unhealthy: {exc}")
        return 1
    finally:
        sys.stdout.flush()
    return 0
