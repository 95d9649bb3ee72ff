"""The daemon over real TCP: /metrics, the landing page, 404, and a prompt SIGTERM."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from exporter.server import parse_listen_address
from tests.exposition import samples, value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers=headers or {})
    return conn.getresponse()


@pytest.fixture
def daemon() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "serve",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--poll.interval",
            "0.5",
            "--log.format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            body = get(port, "/metrics").read().decode()
            if "tcptw_source_success" in body:
                break
        except OSError:
            pass
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"daemon did not serve a poll in 15 s: {proc.communicate()[1]}")
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_metrics_over_http(daemon: tuple[subprocess.Popen[str], int]) -> None:
    _, port = daemon
    response = get(port, "/metrics")
    assert response.status == 200
    assert response.getheader("Content-Type") == CONTENT_TYPE_LATEST
    parsed = samples(response.read().decode())
    assert value(parsed, "tcptw_source_success", netns="host", source="sockdiag") == 1
    assert value(parsed, "tcptw_sockets", netns="host", family="ipv4", state="listen") >= 0


def test_polls_repeat_and_timestamp_advances(daemon: tuple[subprocess.Popen[str], int]) -> None:
    _, port = daemon
    first = value(
        samples(get(port, "/metrics").read().decode()), "tcptw_last_poll_timestamp_seconds"
    )
    time.sleep(1.2)
    second = value(
        samples(get(port, "/metrics").read().decode()), "tcptw_last_poll_timestamp_seconds"
    )
    assert second > first


def test_gzip_landing_page_and_404(daemon: tuple[subprocess.Popen[str], int]) -> None:
    _, port = daemon
    zipped = get(port, "/metrics", {"Accept-Encoding": "gzip"})
    assert zipped.getheader("Content-Encoding") == "gzip"
    assert b"tcptw_build_info" in gzip.decompress(zipped.read())
    landing = get(port, "/")
    assert landing.status == 200 and b'href="/metrics"' in landing.read()
    missing = get(port, "/nope")
    assert missing.status == 404
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST", "/metrics", body=b"")
    assert conn.getresponse().status == 405


def test_sigterm_stops_within_two_seconds(daemon: tuple[subprocess.Popen[str], int]) -> None:
    proc, _ = daemon
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=5)
    assert time.monotonic() - start < 2.0
    assert proc.returncode == 0
    assert '"event": "shutting down"' in proc.communicate()[1]


@pytest.mark.parametrize(
    ("address", "expected"),
    [(":9961", (None, 9961)), ("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:9961", ("::1", 9961))],
)
def test_listen_address(address: str, expected: tuple[str | None, int]) -> None:
    assert parse_listen_address(address) == expected


@pytest.mark.parametrize("address", ["9961", "host:", "host:99999", "a:b"])
def test_bad_listen_address(address: str) -> None:
    with pytest.raises(ValueError):
        parse_listen_address(address)


def test_bare_connects_and_sighup_cost_no_traceback(
    daemon: tuple[subprocess.Popen[str], int],
) -> None:
    """A TCP check that connects and closes (nc -z, a load balancer, a port scan) gets no
    answer and no log line; a half-sent request gets 400; SIGHUP does not end the daemon."""
    proc, port = daemon
    for _ in range(200):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as half:
        half.sendall(b"GET /metrics HTTP/1.1\r\n")
        half.shutdown(socket.SHUT_WR)
        assert half.recv(64).startswith(b"HTTP/1.1 400")
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert get(port, "/metrics").status == 200 and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=5)
    lines = proc.communicate()[1].splitlines()
    assert all(line.startswith("{") for line in lines), lines[:5]  # JSON lines only
    events = [json.loads(line)["event"] for line in lines]
    assert events.count("SIGHUP received: nothing to reload, still serving") == 1
    assert len(events) < 10, events
