"""The edges a hostile probe broke (issue 21), each against the real daemon or the real
parser: every test here failed on the code before it."""

from __future__ import annotations

import base64
import contextlib
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import bcrypt
import pytest

from exporter.web.config import WebConfigError, canonical_san, load_web_config
from tests.exposition import samples, value
from tests.kernel import wait_until
from tests.serving import HOST, Pki, free_port, running
from tests.test_daemon import blocked_on_a_fifo, hang_slab_reads, release
from tests.web.test_tls import web_config

EXPORTER = [sys.executable, "-m", "exporter"]
PASSWORD = "scrape-me"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- 1. the watcher survives any bad file ------------------------------------------------


def test_a_bad_edit_never_kills_the_web_config_watcher(tmp_path: Path) -> None:
    config = tmp_path / "web.yml"
    config.write_text("")
    with running(f"--web.config.file={config}") as daemon:
        config.write_text("tls_server_config:\n  client_auth_type: [x]\n")
        daemon.wait_for_event("web config reload failed, keeping the last good one")
        assert not any("Traceback" in line for line in daemon.lines)
        config.write_text(f"basic_auth_users:\n  prom: {HASH}\n")
        daemon.wait_for_event("web config reloaded", basic_auth_users=1)
        conn = daemon.connection()
        conn.request("GET", "/metrics")
        assert conn.getresponse().status == 401  # the later, valid edit took effect


# -- 2. password spraying cannot starve real scrapes ------------------------------------


def test_password_spraying_does_not_slow_a_logged_in_scraper(tmp_path: Path) -> None:
    """200 clients with random wrong passwords, as fast as they can, for 5 s: a scraper
    that logged in before keeps getting its page within 100 ms (p99)."""
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prom: {HASH}\n")
    with running(f"--web.config.file={config}", "--web.max-connections=1000") as daemon:
        good = {"Authorization": basic("prom", PASSWORD)}
        first = daemon.connection()
        first.request("GET", "/metrics", headers=good)
        assert first.getresponse().read() and True
        stop = time.monotonic() + 5
        refused = [0]

        def spray(n: int) -> None:
            while time.monotonic() < stop:
                try:
                    conn = daemon.connection(timeout=10)
                    conn.request(
                        "GET",
                        "/metrics",
                        headers={"Authorization": basic("prom", os.urandom(6).hex())},
                    )
                    refused[0] += conn.getresponse().status == 401
                    conn.close()
                    time.sleep(0.02)
                except OSError:
                    pass

        threads = [threading.Thread(target=spray, args=(i,), daemon=True) for i in range(200)]
        for thread in threads:
            thread.start()
        latencies = []
        conn = daemon.connection()
        while time.monotonic() < stop:
            start = time.monotonic()
            conn.request("GET", "/metrics", headers=good)
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)
        for thread in threads:
            thread.join(timeout=15)
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else latencies[0]
    print(
        f"valid scrape under 200 spraying clients: p99 {p99 * 1000:.1f} ms "
        f"over {len(latencies)} scrapes; {refused[0]} sprayed requests refused"
    )
    assert p99 <= 0.1 and refused[0] > 0


# -- 3. memory per connection is bounded -------------------------------------------------


def test_huge_request_heads_are_refused_and_memory_stays_bounded() -> None:
    """300 connections each sending a legal 786 KB request head (100 fields of 7.8 KiB):
    each is answered 431 and closed after 16 KiB; the daemon's RSS grows by less than
    32 MiB (it grew by 450 MiB before)."""
    with running("--web.max-connections=1000") as daemon:
        before = rss_kib(daemon.proc.pid)
        field = b"X-Pad: " + b"a" * 7800 + b"\r\n"
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + field * 100
        socks = []
        answers = []
        for _ in range(300):
            sock = socket.create_connection((HOST, daemon.port))
            sock.settimeout(5)
            with contextlib.suppress(OSError):  # closed by the server mid-send: wanted
                sock.sendall(head)
            socks.append(sock)
        for sock in socks:
            try:
                answers.append(sock.recv(64))
            except OSError:
                answers.append(b"")
        grown = (rss_kib(daemon.proc.pid) - before) / 1024
        for sock in socks:
            sock.close()
    assert sum(a.startswith(b"HTTP/1.1 431") for a in answers) >= 250, answers[:3]
    print(f"RSS grew by {grown:.1f} MiB for 300 connections sending 786 KB heads")
    assert grown < 32


def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    with running("--web.max-connections=5") as daemon:
        held = [socket.create_connection((HOST, daemon.port)) for _ in range(5)]
        wait_until(lambda: True, 0.1)
        extra = socket.create_connection((HOST, daemon.port))
        extra.settimeout(5)
        assert extra.recv(10) == b""  # closed without a word
        daemon.wait_for_event("too many connections: closed at once")
        for sock in [*held, extra]:
            sock.close()


# -- 4./5. a first poll that hangs, polls that keep failing ------------------------------


def test_a_first_poll_that_hangs_shows_as_stale(tmp_path: Path) -> None:
    """The first poll never completes: /metrics already carries the staleness signal
    (tcptw_last_poll_timestamp_seconds 0 with the interval), so the stale alert fires,
    and /readyz is 503."""
    sysfs = tmp_path / "sys"
    (sysfs / "kernel" / "slab").mkdir(parents=True)
    fifos = hang_slab_reads(sysfs)
    port = free_port()
    proc = subprocess.Popen(
        [
            *EXPORTER,
            "--netns=self",
            f"--web.listen-address={HOST}:{port}",
            "--poll.interval=0.5",
            f"--path.sysfs={sysfs}",
            "--log.format=json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: blocked_on_a_fifo(proc.pid), timeout=15, what="a first poll hung")
        import http.client

        def get(path: str) -> tuple[int, str]:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()

        wait_until(lambda: get("/healthz")[0] == 200, timeout=15, what="the daemon serving")
        status, text = get("/metrics")
        parsed = samples(text)
        assert status == 200
        assert value(parsed, "tcptw_last_poll_timestamp_seconds") == 0
        assert value(parsed, "tcptw_poll_interval_seconds") == 0.5
        assert get("/readyz")[0] == 503
    finally:
        release(fifos)
        proc.kill()
        proc.wait()


def test_readyz_fails_when_every_poll_fails() -> None:
    """Every poll raises (as under a pids limit, "can't start new thread"): one log line,
    no new snapshot, and /readyz turns red once the last good poll is stale."""
    import asyncio

    import structlog.testing

    from exporter.config import Config
    from exporter.daemon import PollClock, poll_forever
    from exporter.engine.collector import SnapshotCollector
    from exporter.engine.poller import Poller

    class Failing(Poller):
        def poll_once(self, budget: float | None = None):  # type: ignore[no-untyped-def]
            raise RuntimeError("can't start new thread")

    config = Config(netns="self", collectors=frozenset({"sockstat"}))
    clock = PollClock(0.05)
    collector = SnapshotCollector(config)

    async def run() -> None:
        task = asyncio.create_task(poll_forever(Failing(config), collector, 0.05, clock=clock))
        await asyncio.sleep(0.5)
        task.cancel()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(run())
    ready, message = clock.readiness()
    assert not ready and message == "not ready: no poll has completed yet"
    failed = [e for e in logs if e["event"] == "poll failed"]
    assert len(failed) == 1 and failed[0]["error"] == "RuntimeError: can't start new thread"
    assert collector.snapshot is None


# -- 6. web-config files with bad values -------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: [x]\n",
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: {a: 1}\n",
        "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: [TLS12]\n",
        "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n",  # billion laughs, in short
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_bad_web_config_values_are_one_line_errors(tmp_path: Path, text: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(text)
    with pytest.raises(WebConfigError) as error:
        load_web_config(path)
    assert "\n" not in str(error.value)


def run_capped(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """The exporter under a 1 GiB address-space cap (it reads untrusted input)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run(
        [*EXPORTER, *args], capture_output=True, text=True, timeout=timeout, preexec_fn=cap
    )


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "100MB"])
def test_a_web_config_that_is_no_small_regular_file_is_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    if kind == "fifo":
        path = tmp_path / "web.yml"
        os.mkfifo(path)
    elif kind == "dev-zero":
        path = Path("/dev/zero")
    else:
        path = tmp_path / "web.yml"
        with open(path, "wb") as big:
            big.truncate(100 << 20)
    start = time.monotonic()
    result = run_capped(
        f"--web.config.file={path}", "--netns=self", f"--web.listen-address={HOST}:{free_port()}"
    )
    assert time.monotonic() - start < 15
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ("not a regular file" in lines[0] or "larger than" in lines[0])


# -- 7. as exporter-toolkit does ---------------------------------------------------------


def test_an_ipv6_san_matches_as_python_reports_it(tmp_path: Path) -> None:
    """Python's ssl reports an IPv6 SAN written out (0:0:0:0:0:0:0:1): "::1" in the
    web config must match it. The certificate is made by openssl, decoded by ssl."""
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=x",
            "-addext",
            "subjectAltName=IP:::1,IP:127.0.0.1,IP:2001:db8::a",
        ],
        check=True,
        capture_output=True,
    )
    decoded = ssl._ssl._test_decode_cert(str(cert))  # type: ignore[attr-defined]
    reported = {v for kind, v in decoded["subjectAltName"] if kind == "IP Address"}
    assert {canonical_san(s) for s in ("::1", "127.0.0.1", "2001:db8::a")} == reported


@pytest.mark.parametrize("cost", ["03", "32", "99"])
def test_bcrypt_costs_go_rejects_are_refused_at_start(tmp_path: Path, cost: str) -> None:
    hashed = HASH[:4] + cost + HASH[6:]
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  prom: {hashed}\n")
    with pytest.raises(WebConfigError, match=f"bcrypt cost {int(cost)} is outside 4-31"):
        load_web_config(path)


def test_a_password_over_72_bytes_logs_in_with_its_first_72(tmp_path: Path) -> None:
    long = "p" * 100
    hashed = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prom: {hashed}\n")
    with running(f"--web.config.file={config}") as daemon:
        conn = daemon.connection()
        conn.request("GET", "/metrics", headers={"Authorization": basic("prom", long)})
        assert conn.getresponse().status == 200


# -- 8. TLS failures can be diagnosed ----------------------------------------------------


def test_tls_failures_are_logged_once_per_peer_and_a_silent_client_is_dropped(
    pki: Pki, tmp_path: Path
) -> None:
    config = web_config(tmp_path, pki)
    with running(
        f"--web.config.file={config}",
        "--log.level=debug",
        "--web.read-timeout=1",
        context=pki.client_context(False),
    ) as daemon:
        for _ in range(3):  # plain HTTP to the TLS port: refused at once, logged once
            plain = socket.create_connection((HOST, daemon.port))
            plain.settimeout(5)
            plain.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
            assert plain.recv(10) == b""
            plain.close()
        daemon.wait_for_event("TLS handshake failed", reason="HTTP_REQUEST")
        silent = socket.create_connection((HOST, daemon.port))
        silent.settimeout(10)
        start = time.monotonic()
        assert silent.recv(10) == b""  # no ClientHello: dropped at --web.read-timeout
        assert time.monotonic() - start < 3
        failures = [e for e in daemon.events() if e["event"] == "TLS handshake failed"]
        assert len(failures) == 1  # once per peer


# -- 9. leaks and noise ------------------------------------------------------------------


def test_bad_requests_leak_nothing_and_log_one_line_a_minute() -> None:
    with running() as daemon:
        for _ in range(500):
            sock = socket.create_connection((HOST, daemon.port))
            sock.sendall(b"GET /\x01secret HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(5)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            sock.close()
        assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 "))
        assert b"secret" not in answer and b"aiohttp" not in answer and b"Python" not in answer
        assert b"Server: timewait-exporter\r\n" in answer
        time.sleep(0.2)  # the last lines reach the reader thread
        bad = [e for e in daemon.events() if e["event"] == "bad request"]
        assert len(bad) == 1


# -- 10. frictions -----------------------------------------------------------------------


def test_an_unknown_netns_label_is_a_warning_a_metric_and_a_red_readyz() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            *EXPORTER,
            "--netns=doesnotexist",
            f"--web.listen-address={HOST}:{port}",
            "--poll.interval=0.2",
            "--log.format=json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        import http.client

        def get(path: str) -> tuple[int, str]:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()

        def served() -> bool:
            try:
                return "tcptw_netns_missing" in get("/metrics")[1]
            except OSError:
                return False

        wait_until(served, timeout=15, what="the missing namespace in /metrics")
        assert value(samples(get("/metrics")[1]), "tcptw_netns_missing", netns="doesnotexist") == 1
        status, body = get("/readyz")
        assert status == 503 and "no namespace matches --netns (doesnotexist)" in body
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert err.count("--netns names namespaces that do not exist") == 1


def test_a_sighup_while_starting_is_harmless() -> None:
    proc = subprocess.Popen(
        [*EXPORTER, "--netns=self", f"--web.listen-address={HOST}:{free_port()}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.15)  # inside the imports: the moment that used to kill it
        proc.send_signal(1)
        time.sleep(1)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_too_few_descriptors_is_one_warning_at_start() -> None:
    """ulimit -n 64 cannot hold the process's own descriptors and a namespace's: one
    warning names the limit, not a line per namespace and per poll."""
    result = subprocess.run(
        ["sh", "-c", f"ulimit -n 64; exec {sys.executable} -m exporter dump --netns=self"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stderr.count("too few file descriptors for every namespace") == 1


def test_running_out_of_descriptors_is_one_stable_error() -> None:
    from exporter.engine.states import describe

    first = OSError(24, "Too many open files", "/proc/123/ns/net")
    second = OSError(24, "Too many open files", "/proc/456/ns/net")
    assert describe(first) == describe(second) == "OSError: [Errno 24] Too many open files"
