"""The real Prometheus server (Debian's) scrapes the real daemon every second inside a
namespace built for the test, with the rules the mixin generates (their `for:` shortened
by the test's own MixinConfig), while a client really exhausts a destination's ports:

1. a client loops connect() toward one destination until EADDRNOTAVAIL, and goes on
   failing: the exhaustion alert must reach *firing* while connects fail, naming the
   destination; then every panel and variable query of every dashboard must return data
   (a few are listed with the reason they legitimately return nothing here); then the
   poll is frozen in a blocking read and the stale alert must fire;
2. clients that bind() before connect(): the same alert must fire;
3. a client paced at 90 % of the rate its ports sustain: the connection-rate alert, which
   reads the socket-destroy counters, must fire while every connect() still succeeds.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mixin import dashboards
from mixin.config import Durations, MixinConfig
from mixin.generate import generate
from tests.kernel import Netns
from tests.serving import free_port
from tests.test_daemon import hang_slab_reads

ROOT = Path(__file__).resolve().parent.parent
EXHAUSTION = "TcpEphemeralPortExhaustion"
RATE = "TcpConnectionRateNearSustainable"
RATE_RATIO = "tcptw:outbound_connection_rate_sustainable:ratio"
STALE = "TimewaitExporterStale"
FAST = MixinConfig(
    smoothing_window="30s",
    rate_window="20s",
    durations=Durations(
        exhaustion="5s",
        exhaustion_keep_firing="1m",
        predicted="5s",
        timewait="5s",
        exporter_down="5s",
        source_failing="5s",
        stale="2s",
        overrun="5s",
    ),
)
# Queries that legitimately return nothing on this kernel and setup, with the reason.
EMPTY_HERE = {
    "paws_passive": "TcpExt PAWSPassive is absent since Linux 4.12",
    "tw_recycle": "net.ipv4.tcp_tw_recycle is absent since Linux 4.12",
    ", k8s_pod_name)": "the pod variable: no pods outside Kubernetes, every pod label is empty",
    ", cluster)": "the cluster variable: a single Prometheus adds no cluster label",
}


@dataclass
class Stack:
    netns: Netns
    directory: Path
    prometheus_port: int
    exporter_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with self.netns.inside(), urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read().decode())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else []
        if data["resultType"] == "scalar":
            result = [{"metric": {}, "value": data["result"]}]
        return result

    def alerts(self, name: str, state: str = "firing") -> list[dict[str, str]]:
        return [
            a["metric"] for a in self.query(f'ALERTS{{alertname="{name}", alertstate="{state}"}}')
        ]

    def wait_for(self, what: str, predicate: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                found = predicate()
                if found:
                    return found
            time.sleep(0.5)
        raise AssertionError(f"{what} not seen within {timeout} s")


@contextlib.contextmanager
def stack(netns: Netns, directory: Path, *daemon_args: str) -> Iterator[Stack]:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus missing (Debian package prometheus)")
        pytest.skip("prometheus missing (Debian package prometheus)")
    s = Stack(netns, directory, free_port(), free_port())
    rule_files = []
    for relative, text in generate(FAST).items():
        if relative.parent == Path("deploy/prometheus"):
            (directory / relative.name).write_text(text)
            rule_files.append(relative.name)
    (directory / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: {json.dumps(sorted(rule_files))}\n"
        "scrape_configs:\n"
        "  - job_name: timewait-exporter\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{s.exporter_port}']}}]\n"
    )
    ns_exec = ["ip", "netns", "exec", netns.name]
    s.procs.append(
        subprocess.Popen(
            [
                *ns_exec,
                sys.executable,
                "-m",
                "exporter",
                "serve",
                "--netns=self",
                "--poll.interval=1",
                f"--web.listen-address=127.0.0.1:{s.exporter_port}",
                *daemon_args,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    s.procs.append(
        subprocess.Popen(
            [
                *ns_exec,
                prometheus,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{s.prometheus_port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    try:
        s.wait_for("a first scrape", lambda: s.query('up{job="timewait-exporter"} == 1'), 30)
        yield s
    finally:
        for proc in s.procs:
            proc.terminate()
        for proc in s.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@dataclass
class Client:
    """A client looping connect() toward one destination, closing each connection it
    makes (so its port stays in TIME-WAIT for 60 s), counting EADDRNOTAVAIL failures."""

    netns: Netns
    destination: tuple[str, int]
    bind_first: bool = False
    per_second: float | None = None  # paced, or as fast as it can
    connected: int = 0
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        start = time.monotonic()
        with self.netns.inside():
            while not self.stop.is_set():
                if self.per_second is not None:
                    due = start + (self.connected + self.failed) / self.per_second
                    self.stop.wait(max(0.0, due - time.monotonic()))
                sock = socket.socket()
                try:
                    if self.bind_first:
                        sock.bind(("127.0.0.1", 0))  # takes an ephemeral port now
                    sock.connect(self.destination)
                    self.connected += 1
                except OSError as exc:
                    assert exc.errno in (errno.EADDRNOTAVAIL, errno.EADDRINUSE), exc
                    self.failed += 1
                    time.sleep(0.02)  # pacing: no busy loop while ports are exhausted
                finally:
                    sock.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Client]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            thread.join(10)


def exhaustion_netns(netns: Netns, ports: int = 100) -> tuple[str, int]:
    """A 100-port range, so that a loop of connects exhausts it in a fraction of a second
    (each port then stays in the client's TIME-WAIT for 60 s), and a server that closes
    after the client."""
    netns.sysctl("net.ipv4.ip_local_port_range", f"40000 {40000 + ports - 1}")
    netns.sysctl("net.ipv4.tcp_tw_reuse", "0")
    listener = netns.listen("127.0.0.2", 8080, backlog=4096)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
                conn.recv(1)  # the client closes first (TIME-WAIT is the client's) ...
                conn.close()  # ... then the server
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return ("127.0.0.2", 8080)


def query_has_data(s: Stack, expr: str) -> bool:
    match = dashboards_label_values(expr)
    if match is not None:
        series, label = match
        params = {"match[]": series} if series else {}
        return bool(s.api(f"label/{label}/values", **params))
    return bool(s.query(expr))


def dashboards_label_values(expr: str) -> tuple[str, str] | None:
    """Grafana's label_values(series, label) and label_values(label) are not PromQL: the
    HTTP API's label values endpoint answers them."""
    text = expr.strip()
    if not text.startswith("label_values(") or not text.endswith(")"):
        return None
    inner = text[len("label_values(") : -1]
    series, _, label = inner.rpartition(",")
    return series.strip(), label.strip()


def test_exhaustion_fires_dashboards_have_data_and_a_hung_poll_goes_stale(
    netns: Netns, tmp_path: Path
) -> None:
    destination = exhaustion_netns(netns)
    sysfs = tmp_path / "sys"
    (sysfs / "kernel" / "slab").mkdir(parents=True)
    with (
        stack(netns, tmp_path, f"--path.sysfs={sysfs}") as s,
        Client(netns, destination).running() as client,
    ):
        firing = s.wait_for(
            f"{EXHAUSTION} firing",
            lambda: [a for a in s.alerts(EXHAUSTION) if a.get("severity") == "critical"],
            90,
        )
        assert client.failed > 0  # connects were failing while it fired
        alert = firing[0]
        assert alert["netns"] == netns.name
        assert (alert["remote_addr"], alert["remote_port"]) == ("127.0.0.2", "8080")
        assert alert["local_addr"] == "127.0.0.1"

        # The socket-destroy counter holds every connection the client made and closed
        # (its ports now sit in TIME-WAIT), and the rate alert read it (method="events").
        bucket = '{remote_addr="127.0.0.2", remote_port="8080"}'

        def counted() -> bool:
            found = s.query(f"sum(tcptw_outbound_connections_closed_total{bucket})")
            return bool(found) and float(found[0]["value"][1]) == client.connected

        s.wait_for("the client's closes counted exactly", counted, 30)
        # What the rate alert compares (it fires in the paced-client test below).
        ratio = s.wait_for(
            "the sustainable-rate ratio from the counters",
            # Present once the rate has two samples; its value may be 0 for a while (the
            # burst can land before the series' first scrape, and the ports stay in
            # TIME-WAIT for 60 s).
            lambda: s.query(f"tcptw:outbound_connection_rate_sustainable:ratio{bucket}"),
            30,
        )
        assert ratio[0]["metric"]["method"] == "events"

        missing = []
        values = {
            "job": "timewait-exporter",
            "instance": f"127.0.0.1:{s.exporter_port}",
            "netns": netns.name,
        }
        for board in (dashboards.fleet(FAST), dashboards.node(FAST)):
            for title, expr in dashboards.queries(board):
                concrete = dashboards.substitute(expr, values)
                if not query_has_data(s, concrete):
                    reason = next((r for k, r in EMPTY_HERE.items() if k in concrete), None)
                    if reason is None:
                        missing.append(f"{board['title']} / {title}: {concrete}")
        assert missing == [], "queries without data:\n" + "\n".join(missing)

        hang_slab_reads(sysfs)  # the next poll blocks in a read of a FIFO
        stale = s.wait_for(f"{STALE} firing", lambda: s.alerts(STALE), 60)
        assert stale[0]["instance"] == f"127.0.0.1:{s.exporter_port}"
        assert s.query('up{job="timewait-exporter"} == 1')  # it still answers scrapes


def test_exhaustion_fires_for_clients_that_bind_before_connect(
    netns: Netns, tmp_path: Path
) -> None:
    destination = exhaustion_netns(netns)
    with (
        stack(netns, tmp_path) as s,
        Client(netns, destination, bind_first=True).running() as client,
    ):
        firing = s.wait_for(
            f"{EXHAUSTION} firing",
            lambda: [a for a in s.alerts(EXHAUSTION) if a.get("severity") == "critical"],
            90,
        )
        assert client.failed > 0
        assert firing[0]["netns"] == netns.name


def test_connection_rate_alert_fires_from_the_counters_before_ports_run_out(
    netns: Netns, tmp_path: Path
) -> None:
    """600 ports sustain 600 / 60 = 10 connections a second toward one destination; a
    client paced at 9/s, closing first, is at 90 %. Within 60 s it holds at most 540
    ports, so no connect() fails and the exhaustion alert cannot fire; the rate alert must,
    from the socket-destroy counters (method="events") over the rules' 20 s window."""
    destination = exhaustion_netns(netns, ports=600)
    with (
        stack(netns, tmp_path) as s,
        Client(netns, destination, per_second=9.0).running() as client,
    ):
        firing = s.wait_for(f"{RATE} firing", lambda: s.alerts(RATE), 50)
        assert client.failed == 0 and client.connected > 0
        assert s.alerts(EXHAUSTION) == []
        alert = firing[0]
        assert alert["netns"] == netns.name and alert["method"] == "events"
        assert (alert["local_addr"], alert["remote_addr"], alert["remote_port"]) == (
            "127.0.0.1",
            "127.0.0.2",
            "8080",
        )
        # (The test's own queries to Prometheus are another bucket, at about 2/s.)
        ratio = s.query(f'{RATE_RATIO}{{netns="{netns.name}", remote_port="8080"}}')
        assert len(ratio) == 1 and 0.8 <= float(ratio[0]["value"][1]) <= 1.0, ratio
