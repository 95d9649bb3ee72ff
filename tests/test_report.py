"""`timewait-exporter report` in real namespaces: one constructed scenario per finding,
each checked to appear exactly when its condition holds (and not otherwise), with its
evidence compared against ss, sockstat and the sysctls; the JSON against its schema; the
text against a golden file with the numbers masked.

Regenerate the golden file after an intended output change with
    UPDATE_GOLDEN=1 pytest tests/test_report.py
and review the diff."""

from __future__ import annotations

import errno
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from exporter.config import Config
from exporter.engine.poller import Poller
from exporter.netns.pods import PodName
from exporter.report import engine, holders, render_json
from tests.conftest import FIXTURES, TREES
from tests.kernel import Netns, connect, server_closes_first, time_wait_pairs, wait_until

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "report.schema.json").read_text())
GOLDEN = FIXTURES / "golden" / "report-scenario.txt"
EXHAUSTION = FIXTURES / "golden" / "report-exhaustion.txt"
WINDOW = "0.2"


def validate(doc: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)


def report(netns: Netns, *extra: str, fmt: str = "json") -> tuple[int, Any]:
    result = netns.exporter("report", "--window", WINDOW, "--format", fmt, *extra, check=False)
    assert result.returncode in (0, 3), result.stderr
    if fmt != "json":
        return result.returncode, result.stdout
    doc = json.loads(result.stdout)
    validate(doc)
    return result.returncode, doc


def findings(doc: dict[str, Any], finding: str) -> list[dict[str, Any]]:
    return [f for f in doc["findings"] if f["id"] == finding]


def ids(doc: dict[str, Any]) -> set[str]:
    return {f["id"] for f in doc["findings"]}


def ss_count(netns: Netns, *filter_words: str) -> int:
    out = netns.run("ss", "-tanH", *filter_words).stdout
    return len(out.splitlines())


def sockstat_tw(netns: Netns) -> int:
    line = next(x for x in netns.read("net/sockstat").splitlines() if x.startswith("TCP:"))
    words = line.split()
    return int(words[words.index("tw") + 1])


def small_range_with_timewait(netns: Netns, pairs: int) -> None:
    """100 ephemeral ports, a listener outside them, `pairs` client-closed connections."""
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40099")
    listener = netns.listen("127.0.0.1", 8080)
    time_wait_pairs(netns, listener, pairs)


# -- the baseline: nothing spurious ------------------------------------------------------


def test_default_namespace_has_no_finding(netns: Netns) -> None:
    netns.sysctl("net.ipv4.tcp_tw_reuse", "2")  # back to the kernel default
    listener = netns.listen("127.0.0.1", 8080)
    time_wait_pairs(netns, listener, 20)
    server_closes_first(netns, listener, 20)
    code, doc = report(netns)
    assert code == 0
    assert doc["findings"] == []
    (ns,) = doc["namespaces"]
    assert ns["netns"] == netns.name
    assert ns["timewait"] == sockstat_tw(netns) == 40
    assert ns["direction"]["outbound_timewait"] == 20
    assert ns["direction"]["inbound_timewait"] == 20
    # Little's law with the default range: 28,232 ports / 60 s, about 470 per second.
    assert ns["port_range"]["available"] == 28232
    (b,) = ns["outbound"]
    assert b["destination"] == "127.0.0.1:8080" and b["timewait"] == 20
    # Counted: nothing closed during the window, whatever TIME-WAIT still holds.
    assert ns["rate_method"] == b["rate_method"] == "events" and ns["rate_method_reason"] == ""
    assert b["closed"] == 0 and b["rate_now"] == 0
    assert b["reuse_covers"] is True and b["limit"] is None  # 2 covers loopback
    _, doc = report(netns, "--no-events")
    (ns,) = doc["namespaces"]
    (b,) = ns["outbound"]
    assert ns["rate_method"] == b["rate_method"] == "timewait"
    assert ns["rate_method_reason"] == "--no-events"
    assert b["closed"] is None and b["rate_now"] == pytest.approx(20 / 60)


# -- conn/s now: counted from the socket-destroy events, or estimated from TIME-WAIT -------

EVENTS_WINDOW = 2.0


def events_listening(netns: Netns) -> bool:
    """A NETLINK_SOCK_DIAG socket (Eth 4) joined to both TCP destroy groups (1 and 3):
    the report's first poll has opened its listener."""
    for line in netns.read("net/netlink").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "4" and int(fields[3], 16) & 0b101 == 0b101:
            return True
    return False


def in_window(pid: int) -> bool:
    """The report's main thread sleeps out its window (time.sleep: clock_nanosleep, seen
    as hrtimer_nanosleep or, before Linux 6.x, do_nanosleep): its first poll is done."""
    return "nanosleep" in Path(f"/proc/{pid}/wchan").read_text()


def report_during(
    netns: Netns, make: Callable[[], None], *extra: str, code: int = 0
) -> dict[str, Any]:
    """`report --window 2s` in a subprocess; `make` runs in its window, once the first
    poll is done (its events listener open, unless --no-events), and must end before the
    second poll. `code`: the exit status expected."""
    out, finished = run_during(netns, make, *extra, "--format", "json", code=code)
    doc: dict[str, Any] = json.loads(out)
    validate(doc)
    assert finished < doc["generated_at"], "the connections ran past the window"
    return doc


def run_during(
    netns: Netns, make: Callable[[], None], *extra: str, code: int = 0
) -> tuple[str, float]:
    """report_during's run: its stdout, and when `make` was done."""
    argv = [sys.executable, "-m", "exporter", "report", "--window", f"{EVENTS_WINDOW}s",
            "--netns=self", *extra]  # fmt: skip
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns.name, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if "--no-events" not in extra:
            wait_until(lambda: events_listening(netns), 30, "the report's events listener")
        wait_until(lambda: in_window(proc.pid), 30, "the report's first poll done")
        make()
        done = time.time()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    return out, done


def outbound(doc: dict[str, Any], destination: str) -> dict[str, Any]:
    (ns,) = doc["namespaces"]
    buckets: list[dict[str, Any]] = [b for b in ns["outbound"] if b["destination"] == destination]
    (bucket,) = buckets
    return bucket


def test_rate_now_counted_from_events(netns: Netns) -> None:
    listener = netns.listen("127.0.0.1", 8080)
    doc = report_during(netns, lambda: time_wait_pairs(netns, listener, 120))
    (ns,) = doc["namespaces"]
    assert ns["rate_method"] == "events" and ns["rate_method_reason"] == ""
    b = outbound(doc, "127.0.0.1:8080")
    assert b["rate_method"] == "events"
    assert b["closed"] == 120  # exactly the connections made, not TIME-WAIT / 60 (2.0)
    assert b["timewait"] == 120
    assert doc["window_seconds"] == pytest.approx(EVENTS_WINDOW, abs=0.1)
    assert b["rate_now"] == pytest.approx(120 / doc["window_seconds"], rel=1e-3)
    assert b["sentence"].startswith(
        f"toward 127.0.0.1:8080: {b['rate_now']:.1f} conn/s now (counted)"
    )


def test_rate_now_estimated_with_no_events(netns: Netns) -> None:
    listener = netns.listen("127.0.0.1", 8080)
    doc = report_during(netns, lambda: time_wait_pairs(netns, listener, 120), "--no-events")
    (ns,) = doc["namespaces"]
    assert ns["rate_method"] == "timewait" and ns["rate_method_reason"] == "--no-events"
    b = outbound(doc, "127.0.0.1:8080")
    assert b["rate_method"] == "timewait" and b["closed"] is None
    assert b["timewait"] == 120
    assert b["rate_now"] == pytest.approx(120 / 60)
    assert "2.0 conn/s now (estimated from TIME-WAIT)" in b["sentence"]


def test_rate_now_counts_buckets_outside_the_events_top_k(netns: Netns) -> None:
    """--buckets.top=1: the first destination closed toward takes the events' only top K
    place, so the second one, the one the report prints, is exported only in `other`
    when the second poll comes; its exact count comes from the internal totals."""
    first = netns.listen("127.0.0.1", 8081)
    second = netns.listen("127.0.0.1", 8082)

    def make() -> None:
        time_wait_pairs(netns, first, 10)
        time_wait_pairs(netns, second, 60)

    doc = report_during(netns, make, "--buckets.top=1")
    (ns,) = doc["namespaces"]
    (b,) = ns["outbound"]
    assert b["destination"] == "127.0.0.1:8082"
    assert b["rate_method"] == "events" and b["closed"] == 60


# -- port-exhaustion, narrow-port-range, tw-reuse-off-for-clients -------------------------


def test_port_exhaustion_over_80_percent(netns: Netns) -> None:
    small_range_with_timewait(netns, 85)
    code, doc = report(netns, "--fail-on", "0.8")
    (found,) = findings(doc, "port-exhaustion")
    tw = ss_count(netns, "state", "time-wait", "dst", "127.0.0.1:8080")
    assert tw == 85
    assert found["netns"] == netns.name
    assert found["evidence"]["used"] == tw
    assert found["evidence"]["capacity"] == 100
    assert found["evidence"]["max_ratio"] == pytest.approx(0.85)
    assert found["evidence"]["destination"] == "127.0.0.1:8080"
    assert found["evidence"]["limit_per_second"] == pytest.approx((100 - 0) / 60, abs=0.01)
    assert code == 3 and doc["exit_code"] == 3  # --fail-on 0.8 reached
    (b,) = [b for b in doc["namespaces"][0]["outbound"] if b["remote_port"] == "8080"]
    # Counted: the 85 connections closed before the window.
    assert b["sentence"] == "toward 127.0.0.1:8080: 0.0 conn/s now (counted), limit 1.7 conn/s"
    _, doc = report(netns, "--no-events")
    (b,) = [b for b in doc["namespaces"][0]["outbound"] if b["remote_port"] == "8080"]
    assert b["sentence"] == (
        "toward 127.0.0.1:8080: 1.4 conn/s now (estimated from TIME-WAIT), limit 1.7 conn/s"
    )


def test_port_exhaustion_absent_at_70_percent(netns: Netns) -> None:
    small_range_with_timewait(netns, 70)
    code, doc = report(netns, "--fail-on", "0.8")
    assert findings(doc, "port-exhaustion") == []
    assert doc["namespaces"][0]["max_ratio"] == pytest.approx(0.70)
    assert code == 0 and doc["exit_code"] == 0
    # the other two conditions still hold: 100 ports, TIME-WAIT holds 70 % with reuse 0
    assert {"narrow-port-range", "tw-reuse-off-for-clients"} <= ids(doc)


def test_narrow_port_range_evidence(netns: Netns) -> None:
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40999")
    netns.sysctl("net.ipv4.ip_local_reserved_ports", "40100-40109")
    _, doc = report(netns)
    (found,) = findings(doc, "narrow-port-range")
    assert found["evidence"]["available"] == 1000 - 10
    assert found["evidence"]["reserved"] == 10
    assert found["evidence"]["port_range_min"] == 40000
    assert found["evidence"]["port_range_max"] == 40999


def test_narrow_port_range_absent_with_default_range(netns: Netns) -> None:
    netns.sysctl("net.ipv4.ip_local_port_range", "32768 60999")
    _, doc = report(netns)
    assert "narrow-port-range" not in ids(doc)


def test_tw_reuse_off_with_outbound_load(netns: Netns) -> None:
    small_range_with_timewait(netns, 40)
    _, doc = report(netns)
    (found,) = findings(doc, "tw-reuse-off-for-clients")
    assert found["evidence"]["timewait"] == ss_count(
        netns, "state", "time-wait", "dport", "= :8080"
    )
    assert found["evidence"]["tcp_tw_reuse"] == 0
    assert found["evidence"]["share"] == pytest.approx(0.40)
    assert "port-exhaustion" not in ids(doc)


def test_tw_reuse_2_covers_loopback(netns: Netns) -> None:
    small_range_with_timewait(netns, 85)
    netns.sysctl("net.ipv4.tcp_tw_reuse", "2")
    _, doc = report(netns)
    # TIME-WAIT toward loopback can be taken over: neither the share nor the ratio counts it
    assert "tw-reuse-off-for-clients" not in ids(doc)
    assert "port-exhaustion" not in ids(doc)
    assert doc["namespaces"][0]["max_ratio"] < 0.1


def test_tw_reuse_2_toward_non_loopback(netns: Netns) -> None:
    # a non-loopback address (ipv4_is_loopback is 127/8 only), on lo for lack of a dummy
    netns.run("ip", "addr", "add", "10.9.0.1/32", "dev", "lo")
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40099")
    listener = netns.listen("10.9.0.1", 8080)
    time_wait_pairs(netns, listener, 30)
    netns.sysctl("net.ipv4.tcp_tw_reuse", "2")
    _, doc = report(netns)
    (found,) = findings(doc, "tw-reuse-off-for-clients")
    assert found["evidence"]["destination"] == "10.9.0.1:8080"
    assert found["evidence"]["tcp_tw_reuse"] == 2
    assert found["evidence"]["timewait"] == 30
    netns.sysctl("net.ipv4.tcp_tw_reuse", "1")
    _, doc = report(netns)
    assert "tw-reuse-off-for-clients" not in ids(doc)


# -- timewait-overflow -------------------------------------------------------------------


def test_timewait_near_tcp_max_tw_buckets(netns: Netns) -> None:
    netns.sysctl("net.ipv4.tcp_max_tw_buckets", "10")
    listener = netns.listen("127.0.0.1", 8080)
    time_wait_pairs(netns, listener, 30)
    _, doc = report(netns)
    (found,) = findings(doc, "timewait-overflow")
    assert found["evidence"]["timewait"] == sockstat_tw(netns) == 10
    assert found["evidence"]["tcp_max_tw_buckets"] == 10
    assert ss_count(netns, "state", "time-wait") == 10


def test_timewait_overflow_absent_below_limit(netns: Netns) -> None:
    listener = netns.listen("127.0.0.1", 8080)
    time_wait_pairs(netns, listener, 30)
    _, doc = report(netns)
    assert "timewait-overflow" not in ids(doc)


def test_timewait_overflow_counter_rising(netns: Netns) -> None:
    """The engine's two polls around overflowing connections: the counter's delta is the
    evidence, whatever the TIME-WAIT count."""
    netns.sysctl("net.ipv4.tcp_max_tw_buckets", "1000")
    listener = netns.listen("127.0.0.1", 8080)
    poller = Poller(Config(netns=frozenset({netns.name})))
    try:
        first = poller.poll_once()
        netns.sysctl("net.ipv4.tcp_max_tw_buckets", "0")  # every new TIME-WAIT overflows
        time_wait_pairs(netns, listener, 7)
        second = poller.poll_once()
    finally:
        poller.close()
    doc = render_json.to_dict(engine.build(first, second))
    validate(doc)
    (found,) = findings(doc, "timewait-overflow")
    assert found["evidence"]["overflow_delta"] == 7
    assert found["severity"] == "critical"
    assert doc["namespaces"][0]["deltas"]["TCPTimeWaitOverflow"] == 7


# -- timestamps-off, fin-timeout-misconception --------------------------------------------


def test_timestamps_off(netns: Netns) -> None:
    netns.sysctl("net.ipv4.tcp_timestamps", "0")
    netns.sysctl("net.ipv4.tcp_tw_reuse", "1")
    _, doc = report(netns)
    (found,) = findings(doc, "timestamps-off")
    assert found["evidence"] == {"tcp_timestamps": 0, "tcp_tw_reuse": 1}
    netns.sysctl("net.ipv4.tcp_timestamps", "1")
    _, doc = report(netns)
    assert "timestamps-off" not in ids(doc)


def test_fin_timeout_misconception(netns: Netns) -> None:
    netns.sysctl("net.ipv4.tcp_fin_timeout", "30")
    _, doc = report(netns)
    (found,) = findings(doc, "fin-timeout-misconception")
    assert found["evidence"] == {"tcp_fin_timeout": 30, "timewait_seconds": 60}
    netns.sysctl("net.ipv4.tcp_fin_timeout", "60")
    _, doc = report(netns)
    assert "fin-timeout-misconception" not in ids(doc)


# -- server-closes-first -----------------------------------------------------------------


def test_server_closes_first(netns: Netns) -> None:
    listener = netns.listen("127.0.0.1", 8080)
    server_closes_first(netns, listener, 60)
    _, doc = report(netns)
    (found,) = findings(doc, "server-closes-first")
    assert found["evidence"]["local_port"] == "8080"
    assert found["evidence"]["timewait"] == ss_count(
        netns, "state", "time-wait", "sport", "= :8080"
    )
    assert found["evidence"]["timewait"] == 60
    (port,) = [p for p in doc["namespaces"][0]["inbound"] if p["port"] == "8080"]
    assert port["peers"][0]["remote_addr"] == "127.0.0.1"


def test_client_closing_first_is_not_server_closes_first(netns: Netns) -> None:
    listener = netns.listen("127.0.0.1", 8080)
    time_wait_pairs(netns, listener, 60)
    _, doc = report(netns)
    assert "server-closes-first" not in ids(doc)


# -- ehash-shared --------------------------------------------------------------------------


@contextmanager
def namespaces(count: int, parent: Netns | None = None) -> Iterator[list[str]]:
    """`count` namespaces under /run/netns, created from `parent`'s network namespace
    (so they inherit its tcp_child_ehash_entries) or from this process's."""
    names = [f"twr-{os.getpid()}-{i}" for i in range(count)]
    prefix = ["nsenter", f"--net={parent.path}"] if parent else []
    try:
        for name in names:
            subprocess.run([*prefix, "ip", "netns", "add", name], check=True, capture_output=True)
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def node_report(*labels: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "report", "--window", WINDOW, "--format", "json",
         "--netns", ",".join(labels)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    validate(doc)
    return doc


def test_ehash_shared_by_many_namespaces(kernel: None) -> None:
    with namespaces(10) as names:
        doc = node_report(*names)
        (found,) = findings(doc, "ehash-shared")
        assert found["netns"] == ""
        assert found["evidence"]["shared_namespaces"] == 10
        for ns in doc["namespaces"]:
            assert ns["sysctls"]["tcp_ehash_entries"] < 0  # what the kernel shows: shared
        doc = node_report(*names[:9])
        assert "ehash-shared" not in ids(doc)


def test_ehash_not_shared_with_child_ehash_entries(netns: Netns) -> None:
    netns.sysctl("net.ipv4.tcp_child_ehash_entries", "1024")
    with namespaces(10, parent=netns) as names:
        doc = node_report(*names)
        assert "ehash-shared" not in ids(doc)
        for ns in doc["namespaces"]:
            assert ns["sysctls"]["tcp_ehash_entries"] == 1024


# -- tw-recycle-enabled: a recorded Linux 4.9 tree ----------------------------------------


def tree_report(root: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "report", "--window", WINDOW, "--format", "json",
         "--path.procfs", str(root / "proc"), "--path.sysfs", str(root / "sys"),
         "--no-collector.sockdiag", "--netns=self", "--netns.name", "fixture"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    validate(doc)
    return doc


@pytest.mark.parametrize("value", [0, 1])
def test_tw_recycle_enabled_on_linux_4_9(tmp_path: Path, value: int) -> None:
    root = tmp_path / "tree"
    shutil.copytree(TREES / "linux-4.9", root, symlinks=True)
    (root / "proc/sys/net/ipv4/tcp_tw_recycle").write_text(f"{value}\n")
    doc = tree_report(root)
    found = findings(doc, "tw-recycle-enabled")
    if value:
        (only,) = found
        assert only["netns"] == "fixture"
        assert only["evidence"]["tcp_tw_recycle"] == 1
        assert only["evidence"]["PAWSPassive_per_second"] == 0  # a recorded tree is still
        assert only["severity"] == "critical"
    else:
        assert found == []
    # the rest of that tree is healthy: tw_reuse 1, timestamps on, range 32768-61000
    assert ids(doc) <= {"tw-recycle-enabled"}
    (ns,) = doc["namespaces"]
    assert ns["timewait"] == 12 and ns["tcp_max_tw_buckets"] == 262144
    assert [s["million_bytes"] for s in doc["slab"]] == [256_000_000, 64_000_000]


# -- connect-failing: EADDRNOTAVAIL counted from the socket-destroy events ----------------


def fail_connect(netns: Netns, remote: tuple[str, int]) -> None:
    """One connect() refused with EADDRNOTAVAIL, its socket closed (the destroy event)."""
    sock = netns.new_socket()
    with pytest.raises(OSError) as raised:
        sock.connect(remote)
    assert raised.value.errno == errno.EADDRNOTAVAIL
    netns.held.remove(sock)
    sock.close()


def fill_then_fail(netns: Netns, listener: socket.socket, failures: int) -> None:
    """Both ports of a 2-port range toward `listener`, `failures` connects refused, then
    the two connections closed server first: the client ports are free again (the
    TIME-WAIT sockets are the server's, on its listening port)."""
    remote = listener.getsockname()[:2]
    pairs = [(connect(netns, "", remote), listener.accept()[0]) for _ in range(2)]
    for _ in range(failures):
        fail_connect(netns, remote)
    for client, server in pairs:
        server.close()
        select.select([client], [], [], 5)
        client.recv(16)
        client.close()
        netns.held.remove(client)


def test_connect_failing_counted_per_destination(netns: Netns) -> None:
    """3 failures toward 127.0.0.2 and 2 toward 127.0.0.3 in the window: the finding
    counts exactly those, critical; --fail-on exits 3 for them alone, every port being
    free again when the second poll looks."""
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40001")
    first = netns.listen("127.0.0.2", 7000)
    second = netns.listen("127.0.0.3", 7000)

    def make() -> None:
        fill_then_fail(netns, first, 3)
        fill_then_fail(netns, second, 2)

    doc = report_during(netns, make, "--fail-on", "0.99", code=3)
    (ns,) = doc["namespaces"]
    assert ns["connect_failures"] == {
        "failed": {"127.0.0.2": 3, "127.0.0.3": 2},
        "uncounted": 0,
        "total": 5,
    }
    assert ns["connect_failures_reason"] == ""
    (found,) = findings(doc, "connect-failing")
    assert found["severity"] == "critical" and found["netns"] == netns.name
    assert found["evidence"]["failures"] == 5
    assert found["evidence"]["failed@127.0.0.2"] == 3
    assert found["evidence"]["failed@127.0.0.3"] == 2
    assert "3 toward 127.0.0.2, 2 toward 127.0.0.3" in found["summary"]
    assert (ns["max_ratio"] or 0) < 0.99  # the forecast alone would have passed
    assert doc["exit_code"] == 3 and doc["fail_on_reasons"] == ["connect_failures"]


def test_connect_failing_absent_without_failures(netns: Netns) -> None:
    """The same ports filled and freed with no connect() failing: counted, 0, no finding,
    exit 0. With --no-events the failures are unknown, said so, never guessed."""
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40001")
    listener = netns.listen("127.0.0.2", 7000)
    doc = report_during(netns, lambda: fill_then_fail(netns, listener, 0), "--fail-on", "0.99")
    (ns,) = doc["namespaces"]
    assert ns["connect_failures"] == {"failed": {}, "uncounted": 0, "total": 0}
    assert "connect-failing" not in ids(doc)
    assert doc["exit_code"] == 0 and doc["fail_on_reasons"] == []
    code, doc = report(netns, "--no-events", "--fail-on", "0.99")
    (ns,) = doc["namespaces"]
    assert ns["connect_failures"] is None and ns["connect_failures_reason"] == "--no-events"
    assert "connect-failing" not in ids(doc) and code == 0
    code, text = report(netns, "--no-events", "--fail-on", "0.99", fmt="text")
    words = " ".join(text.split())  # as wrapped at 100 columns
    assert "connect() failures not counted in 1 of 1 namespaces (--no-events)" in words
    assert "connect() failures (EADDRNOTAVAIL): not counted (--no-events)" in words


# -- the 3 a.m. exhaustion: CLOSE-WAIT, its holder, two TIME-WAIT counts ----------

HOLDER = """
import socket, sys
held = [socket.create_connection(("127.0.0.5", 7000)) for _ in range({n})]
print("ready", flush=True)
sys.stdin.read()
"""


@contextmanager
def close_wait_holder(netns: Netns, listener: socket.socket, n: int) -> Iterator[int]:
    """A process in the namespace holding `n` connections to `listener` whose peer has
    closed: n CLOSE-WAIT sockets it never closes (and n orphaned FIN-WAIT-2 on the
    server's side). Yields its pid."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns.name, sys.executable, "-c", HOLDER.format(n=n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for _ in range(n):
            listener.accept()[0].close()
        wait_until(
            lambda: ss_count(netns, "state", "close-wait") == n, 10, f"{n} CLOSE-WAIT sockets"
        )
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_exhaustion_at_3am(netns: Netns) -> None:
    """The issue's scenario: 50 usable ports toward 127.0.0.5:7000, 20 in TIME-WAIT, 30 in
    CLOSE-WAIT held by a process that never closes them, 3 connects failing in the
    window. JSON: close-wait-leak names the holder, port-exhaustion too, connect-failing
    counts the 3, the two TIME-WAIT counts are told apart. Text: golden
    report-exhaustion.txt (pid and comm masked too)."""
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40049")
    listener = netns.listen("127.0.0.5", 7000)

    def make() -> None:
        for _ in range(3):
            fail_connect(netns, ("127.0.0.5", 7000))

    with close_wait_holder(netns, listener, 30) as pid:
        time_wait_pairs(netns, listener, 20)
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        doc = report_during(netns, make, "--fail-on", "0.9", code=3)
        text, _ = run_during(netns, make, "--fail-on", "0.9", "--netns.name", "scenario",
                             "--no-collector.slab", code=3)  # fmt: skip
    (ns,) = doc["namespaces"]
    (leak,) = findings(doc, "close-wait-leak")
    assert leak["severity"] == "critical"
    assert leak["evidence"]["destination"] == "127.0.0.5:7000"
    assert leak["evidence"]["close_wait"] == 30 and leak["evidence"]["capacity"] == 50
    assert leak["evidence"]["holder_pid"] == pid
    assert leak["evidence"]["holder_comm"] == comm
    assert leak["evidence"]["holder_close_wait"] == 30
    assert "holder_pod" not in leak["evidence"]  # not in a pod
    assert f"held by pid {pid} ({comm}), 30 of them" in leak["summary"]
    (full,) = findings(doc, "port-exhaustion")
    assert full["evidence"]["holder_pid"] == pid and full["evidence"]["holder_sockets"] == 30
    assert f"30 of its 50 sockets are held by pid {pid}" in full["summary"]
    (failing,) = findings(doc, "connect-failing")
    assert failing["evidence"]["failed@127.0.0.5"] == 3
    (inspection,) = ns["inspections"]
    assert inspection["destination"] == "127.0.0.5:7000"
    assert inspection["states"] == {"time_wait": 20, "close_wait": 30}
    assert outbound(doc, "127.0.0.5:7000")["sockets"] == 50  # the same sockets as the tally's
    assert [(h["pid"], h["sockets"], h["close_wait"]) for h in inspection["holders"]] == [
        (pid, 30, 30)
    ]
    assert inspection["unattributed"] == 0 and inspection["error"] == ""
    # The two TIME-WAIT counts: sockstat tw also counts the server's orphaned FIN-WAIT-2.
    assert ns["timewait"] == 50 and ns["states"]["time_wait"] == 20
    assert ns["orphan_fin_wait2"] == 30
    assert doc["fail_on_reasons"] == ["max_ratio", "connect_failures"]
    assert all(len(line) <= 100 for line in text.splitlines()), text
    words = " ".join(text.split())  # as wrapped at 100 columns
    assert f"held by pid {pid} ({comm}), 30 of them" in words
    assert "TIME-WAIT 20 (the sock_diag state) plus orphaned FIN-WAIT-2 30" in words
    masked = mask(re.sub(rf"(?<=[ (=]){re.escape(comm)}\b", "COMM", text))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        EXHAUSTION.write_text(masked)
    assert masked == EXHAUSTION.read_text()


def test_close_wait_leak_absent_below_its_share(netns: Netns) -> None:
    """4 CLOSE-WAIT sockets in a full bucket of 50 ports: under 10 % of it, no finding;
    the bucket's holder is still named in port-exhaustion."""
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40049")
    listener = netns.listen("127.0.0.5", 7000)
    with close_wait_holder(netns, listener, 4) as pid:
        time_wait_pairs(netns, listener, 46)
        _, doc = report(netns)
    assert "close-wait-leak" not in ids(doc)
    (full,) = findings(doc, "port-exhaustion")
    assert full["evidence"]["holder_pid"] == pid and full["evidence"]["holder_sockets"] == 4


def test_close_wait_leak_absent_in_a_cool_bucket(netns: Netns) -> None:
    """30 CLOSE-WAIT sockets in a bucket at 30 %: below the port warning, not inspected."""
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40099")
    listener = netns.listen("127.0.0.5", 7000)
    with close_wait_holder(netns, listener, 30):
        _, doc = report(netns)
    assert "close-wait-leak" not in ids(doc)
    assert doc["namespaces"][0]["inspections"] == []


def test_holder_pod_named_from_its_cgroup(tmp_path: Path) -> None:
    """The pod of a holding process: its cgroup's pod UID, named from kubelet's logs."""
    uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    (tmp_path / "41").mkdir()
    (tmp_path / "41" / "comm").write_text("java\n")
    (tmp_path / "41" / "cgroup").write_text(
        f"0::/kubepods.slice/kubepods-pod{uid.replace('-', '_')}.slice/cri-containerd-ab.scope\n"
    )
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text("0::/system.slice/sshd.service\n")
    pods = {uid: PodName("shop", "cart-7d9f")}
    found = holders.Records(Counter({8: 2, 1: 1}), {101: 8, 102: 8, 103: 1})
    owners = {101: {41}, 102: {41}, 103: {42}}
    key = ("10.0.0.1", "10.0.0.9", "443")
    result = holders.inspection(tmp_path, key, found, owners, 0, pods)
    assert result.holders == (
        holders.Holder(41, "java", "shop/cart-7d9f", 2, 2),
        holders.Holder(42, "", "", 1, 0),
    )
    assert result.states == {"established": 1, "close_wait": 2}
    assert holders.inspection(tmp_path, key, found, owners, 0, {}).holders[0].pod == uid


# -- the text ------------------------------------------------------------------------------


def mask(text: str) -> str:
    """Numbers (and so the bars' fill and the columns' widths) vary; the shape does not."""
    text = re.sub(r"\[[#.]+\]", "[bar]", text)
    text = re.sub(r"\d+(?:[.,]\d+)*", "N", text)
    return "\n".join(re.sub(r" {2,}", "  ", line) for line in text.splitlines()) + "\n"


def test_text_golden(netns: Netns) -> None:
    netns.sysctl("net.ipv4.tcp_fin_timeout", "30")
    listener = netns.listen("127.0.0.1", 9090)
    server_closes_first(netns, listener, 55)  # before the range narrows: 55 distinct ports
    small_range_with_timewait(netns, 85)
    code, text = report(netns, "--netns.name", "scenario", "--no-collector.slab", fmt="text")
    assert code == 0
    assert all(len(line) <= 100 for line in text.splitlines()), text
    assert "\033[" not in text  # not a terminal: no colour
    assert "toward 127.0.0.1:8080: 0.0 conn/s now (counted), limit 1.7 conn/s" in text
    masked = mask(text)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(masked)
    assert masked == GOLDEN.read_text()


def test_text_is_coloured_on_a_terminal(netns: Netns) -> None:
    netns.sysctl("net.ipv4.tcp_fin_timeout", "30")
    script = (
        "import pty, sys; "
        f"sys.exit(pty.spawn([{sys.executable!r}, '-m', 'exporter', 'report', '--window', "
        f"'0.1', '--netns=self']) >> 8)"
    )
    out = netns.run(sys.executable, "-c", script, check=False).stdout
    assert "\033[36mINFO\033[0m" in out


def test_window_flag_is_checked(netns: Netns) -> None:
    result = netns.exporter("report", "--window", "soon", check=False)
    assert result.returncode == 2 and "--window" in result.stderr
    result = netns.exporter("report", "--fail-on", "0", check=False)
    assert result.returncode == 2 and "--fail-on" in result.stderr
