"""The HTTP surface of a real daemon over real TCP: keep-alive and pipelining, format and
gzip negotiation, HEAD, health pages, size limits, head timeouts against slowloris
clients, --web.max-requests, and bare connects that cost no log line."""

from __future__ import annotations

import gzip
import http.client
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter.web.server import parse_listen_address
from tests.conftest import tool
from tests.exposition import samples, value
from tests.kernel import Netns, wait_until
from tests.serving import HOST, Daemon, free_port, running

PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One poll a minute, so that every response of a test comes from the same poll."""
    with running("--poll.interval=60", "--web.read-timeout=1", ready_path="/readyz") as d:
        yield d


def test_two_scrapes_ride_one_connection_and_leave_no_timewait(daemon: Daemon) -> None:
    conn = daemon.connection()
    conn.request("GET", "/metrics")
    first = conn.getresponse()
    first.read()
    sock = conn.sock
    local = sock.getsockname()
    conn.request("GET", "/metrics")
    second = conn.getresponse()
    body = second.read()
    assert (first.status, second.status) == (200, 200)
    assert conn.sock is sock and sock.getsockname() == local  # not reconnected
    assert second.getheader("Connection") is None  # keep-alive is HTTP/1.1's default
    assert value(samples(body.decode()), "tcptw_poll_overruns_total") == 0
    conn.close()  # the client closes first: TIME-WAIT is the client's, not the node's
    ss = tool("ss", "Debian package iproute2")

    def time_wait(port: int) -> str:
        return subprocess.run(
            [ss, "-Htan", "state", "time-wait", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    # Both FINs exchanged once the client's port is in TIME-WAIT.
    wait_until(lambda: time_wait(local[1]) != "", timeout=5, what="the client's TIME-WAIT")
    assert time_wait(daemon.port) == ""


def test_pipelined_requests_are_all_answered(daemon: Daemon) -> None:
    with socket.create_connection((HOST, daemon.port), timeout=5) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 2
    assert b"\r\n\r\nok\n" in received and b"\r\n\r\nok: the last poll completed" in received


def test_openmetrics_is_negotiated_through_prometheus_client(daemon: Daemon) -> None:
    plain, plain_body = daemon.get()
    assert plain.getheader("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    asked, body = daemon.get(headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert asked.getheader("Content-Type", "").startswith(
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    assert body.endswith(b"# EOF\n")
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"tcptw_build_info", "tcptw_poll_overruns", "process_cpu_seconds"} <= families
    prometheus, body3 = daemon.get(headers={"Accept": PROMETHEUS_3_ACCEPT})
    assert prometheus.getheader("Content-Type") == (
        "application/openmetrics-text; version=1.0.0; charset=utf-8; escaping=allow-utf-8"
    )
    assert body3.endswith(b"# EOF\n")
    # Same poll, same figures, whatever the format.
    assert value(samples(plain_body.decode()), "tcptw_poll_duration_seconds") == float(
        next(
            line
            for line in body.decode().splitlines()
            if line.startswith("tcptw_poll_duration_seconds ")
        ).split()[1]
    )


def test_gzip_is_chosen_by_token_not_substring(daemon: Daemon) -> None:
    zipped, body = daemon.get(headers={"Accept-Encoding": "deflate, GZIP;q=0.5"})
    assert zipped.getheader("Content-Encoding") == "gzip"
    assert b"tcptw_build_info" in gzip.decompress(body)
    plain, body = daemon.get(headers={"Accept-Encoding": "identity, x-notgzip"})
    assert plain.getheader("Content-Encoding") is None and b"tcptw_build_info" in body


def test_head_sends_headers_only(daemon: Daemon) -> None:
    _, body = daemon.get()
    head, head_body = daemon.get(method="HEAD")
    assert head.status == 200 and head_body == b""
    assert head.getheader("Content-Length") == str(len(body))


def test_landing_health_404_and_405(daemon: Daemon) -> None:
    landing, page = daemon.get("/")
    assert landing.status == 200 and b'href="/metrics"' in page and b"/readyz" in page
    assert landing.getheader("Server") == "timewait-exporter"  # no version given away
    assert daemon.get("/healthz")[1] == b"ok\n"
    assert daemon.get("/nope")[0].status == 404
    refused, _ = daemon.get("/metrics", method="POST")
    assert refused.status == 405 and refused.getheader("Allow") == "GET, HEAD"


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n",
        b"\x16\x03\x01\x02\x00garbage\r\n\r\n",  # a TLS ClientHello sent to plain HTTP
    ],
    ids=["long-request-line", "long-header", "too-many-headers", "not-http"],
)
def test_oversized_or_malformed_heads_get_4xx(daemon: Daemon, request_head: bytes) -> None:
    with socket.create_connection((HOST, daemon.port), timeout=5) as sock:
        sock.sendall(request_head)
        status_line = sock.recv(64).split(b"\r\n", 1)[0]
    assert status_line.split()[1] in (b"400", b"414", b"431"), status_line


def _closed_after(sock: socket.socket, trickle: bytes = b"", every: float = 0.2) -> float:
    """Seconds until the server closes `sock`, sending `trickle` a byte at a time."""
    start = time.monotonic()
    sock.settimeout(every)
    position = 0
    while time.monotonic() - start < 10:
        if position < len(trickle):
            try:
                sock.send(trickle[position : position + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
            position += 1
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    raise AssertionError("the server kept the connection for 10 s")


def test_slowloris_clients_are_dropped_after_the_read_timeout(daemon: Daemon) -> None:
    """--web.read-timeout=1: a connection that sends nothing, and one that trickles a
    request head a byte every 0.2 s (each byte would reset an idle timer), are both
    closed after about a second; an idle keep-alive connection is not."""
    with socket.create_connection((HOST, daemon.port)) as silent:
        assert 0.9 <= _closed_after(silent) < 2.5
    slow_head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200
    with socket.create_connection((HOST, daemon.port)) as slow:
        assert 0.9 <= _closed_after(slow, slow_head) < 2.5
    conn = daemon.connection()
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    sock = conn.sock
    time.sleep(2.0)  # under test: idle past the read timeout, the connection stays
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b"ok\n" and conn.sock is sock
    # ... and its next request head is held to the read timeout again.
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    assert 0.9 <= _closed_after(sock, b"Host: slow") < 2.5
    conn.close()


@pytest.mark.kernel  # root: else the slab source (/sys/kernel/slab, 0400) logs a failure
def test_bare_connects_cost_no_log_line() -> None:
    """A TCP check that connects and closes (nc -z, a load balancer, a port scan), or
    sends half a request and leaves, gets no log line, and SIGHUP without a web config
    file logs one line and changes nothing."""
    with running("--poll.interval=60") as daemon:
        for _ in range(200):
            socket.create_connection((HOST, daemon.port), timeout=5).close()
        for _ in range(20):
            with socket.create_connection((HOST, daemon.port), timeout=5) as half:
                half.sendall(b"GET /metrics HTTP/1.1\r\n")
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for_event("SIGHUP received")
        assert daemon.get()[0].status == 200 and daemon.proc.poll() is None
        events = [line["event"] for line in daemon.stop()]
    assert events == [
        "listening",
        "SIGHUP received: no --web.config.file to reload, still serving",
        "shutting down",
    ]


def test_sigterm_stops_within_two_seconds() -> None:
    with running("--poll.interval=0.5") as daemon:
        start = time.monotonic()
        events = [line["event"] for line in daemon.stop()]
        assert time.monotonic() - start < 2.0
        assert daemon.proc.returncode == 0 and events[-1] == "shutting down"


def _inbound_buckets(netns: Netns, count: int) -> None:
    """`count` inbound buckets: clients from distinct 127.1.x.y toward one listener."""
    listener = netns.listen("127.0.0.1", 8080, backlog=4096)
    for i in range(count):
        client = netns.new_socket()
        client.bind((f"127.1.{i // 250}.{i % 250 + 1}", 0))
        client.connect(("127.0.0.1", 8080))
    for _ in range(count):
        netns.held.append(listener.accept()[0])


def test_requests_beyond_max_requests_get_503_at_once(netns: Netns) -> None:
    """--web.max-requests=1 with one scrape held in flight by a client that does not read
    (a 1 MB body, small socket buffers): the next scrape is answered 503 at once, health
    pages still answer, and the held scrape completes when read."""
    _inbound_buckets(netns, 2000)
    netns.sysctl("net.ipv4.tcp_wmem", "4096 8192 16384")
    port = free_port()
    with (
        netns.inside(),
        running(
            "--poll.interval=60",
            "--web.max-requests=1",
            "--buckets.top=5000",
            "--metrics.detail=full",  # every bucket a series: a 1 MB body
            prefix=("ip", "netns", "exec", netns.name),
            port=port,
            ready_path="/readyz",
        ) as daemon,
    ):
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect((HOST, port))
        stuck.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: _status(port, "/metrics") == 503, timeout=5, what="a 503")
        start = time.monotonic()
        assert _status(port, "/metrics") == 503
        assert time.monotonic() - start < 0.5
        assert _status(port, "/readyz") == 200
        stuck.settimeout(10)
        received = b""
        while b"tcptw_sockstat_tcp_memory_bytes" not in received:
            chunk = stuck.recv(1 << 20)
            assert chunk, "connection closed before the body was complete"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200") and len(received) > 1_000_000
        stuck.close()
        wait_until(lambda: _status(port, "/metrics") == 200, timeout=5, what="a 200 again")
        daemon.stop()


def _status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


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
