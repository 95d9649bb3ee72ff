"""The real Prometheus server (Debian's) scrapes the real daemon every second inside a
namespace built for the test, with the rules the mixin generates (their `for:` shortened
by the test's own MixinConfig), while a client really exhausts a destination's ports.
The daemon runs with its default --metrics.detail=compact:

1. among 100 quiet namespaces (a listener, a few connections; CROWD), a pod's namespace
   (a pause process in the pod's cgroup, the pod's log directory) whose client loops
   connect() toward one destination until EADDRNOTAVAIL, and goes on failing: the
   exhaustion alert must reach *firing* while connects fail, naming the destination and
   the pod; the node's series stay within budget and a quiet namespace shows only its 7;
   then every panel and variable query of every dashboard must return data (a few are
   listed with the reason they legitimately return nothing here); then the poll is frozen
   in a blocking read and the stale alert must fire;
2. among the same 100, a namespace that is quiet (tcp_max_tw_buckets as small as its
   peers', no problem counter moving) until a burst of closes overflows its TIME-WAIT
   table: the overflow alert must fire, from the counter's first exposure at its previous
   value (0) under a real rate();
3. clients that bind() before connect(): the same exhaustion alert must fire;
4. a client paced at 90 % of the rate its ports sustain: the connection-rate alert, which
   reads the socket-destroy counters, must fire while every connect() still succeeds.

In 1 and 3 the clients go on trying, so connect() fails with EADDRNOTAVAIL: the
failed-connect alert (tcptw_connect_failures_total) must fire naming the pod and the
destination address. In 1 Prometheus sends its alerts to a real Alertmanager (Debian's
prometheus-alertmanager) loaded with the README's inhibit rule and a webhook receiver
served by the test: the critical exhaustion reaches the receiver and silences its warning
twin (Alertmanager shows it inhibited), and the failed-connect alert arrives with its
labels and runbook_url.
"""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.netns.context import raise_fd_limit
from exporter.sources import netstat
from mixin import dashboards
from mixin.config import Durations, MixinConfig
from mixin.generate import generate
from tests.conftest import require_kernel, skip_or_fail, tool
from tests.engine.test_detail import QUIET_SET
from tests.engine.test_poller import cgroup_roots, in_cgroup
from tests.kernel import Netns, new_netns, time_wait_pairs
from tests.serving import free_port
from tests.test_cardinality import pod_shaped
from tests.test_daemon import hang_slab_reads

ROOT = Path(__file__).resolve().parent.parent
EXHAUSTION = "TcpEphemeralPortExhaustion"
RATE = "TcpConnectionRateNearSustainable"
RATE_RATIO = "tcptw:outbound_connection_rate_sustainable:ratio"
STALE = "TimewaitExporterStale"
OVERFLOW = "TcpTimeWaitOverflow"
FAILING = "TcpConnectFailingNoFreePort"
CROWD = 100  # quiet namespaces beside the ones under test
# tcp_max_tw_buckets of the crowd, and of the namespace that overflows (alike, so that the
# sysctl alone does not make it notable); the crowd's 5 TIME-WAIT sockets stay below half.
TW_BUCKETS = 16
# The node's tcptw_* series with the crowd, the namespaces under test and the fold rows:
# 7 per quiet namespace, the rest for the few shown in full (the budget of
# tests/test_cardinality.py, 2,500 for 250 pods, scaled down).
SERIES_BUDGET = 1_500
# The pod that the exhausted namespace belongs to: (namespace, name, uid).
POD = ("team-a", "client-0", "3f1c2a9e-8b7d-4c1e-9a2b-5d6e7f8a9b0c")
FAST = MixinConfig(
    smoothing_window="30s",
    rate_window="20s",
    failure_window="20s",
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
    ", cluster)": "the cluster variable: a single Prometheus adds no cluster label",
}


@dataclass
class Stack:
    netns: Netns
    directory: Path
    prometheus_port: int
    exporter_port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    alertmanager: Alertmanager | None = None

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

    def wait_until_shown_in_full(self, label: str) -> None:
        """Until the namespace is polled, shown in full and its socket-destroy events are
        counted: a client started before would see its first closes uncounted (the daemon's
        first poll, which opens every namespace, can end after the first scrape), or summed
        into the netns="" fold (its buckets have series of their own once it is shown)."""
        self.wait_for(
            f"{label} shown in full",
            lambda: self.query(f'tcptw_socket_events_up{{netns="{label}"}} == 1'),
            30,
        )

    def wait_for(self, what: str, predicate: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                found = predicate()
                if found:
                    return found
            time.sleep(0.5)
        raise AssertionError(f"{what} not seen within {timeout} s")


def readme_inhibit_rules() -> list[dict[str, Any]]:
    """The inhibit rule that README.md's "Dashboards and alerts" gives, as it is written."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Dashboards and alerts\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    rules = [yaml.safe_load(block)["inhibit_rules"] for block in blocks if "inhibit_rules" in block]
    assert len(rules) == 1, "README's Dashboards and alerts has no single inhibit_rules block"
    result: list[dict[str, Any]] = rules[0]
    return result


class Receiver(http.server.ThreadingHTTPServer):
    """Alertmanager's webhook receiver: keeps every alert of every notification POSTed."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        super().__init__(address, ReceiverHandler)

    def received(self, **labels: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                a for a in self.alerts if all(a["labels"].get(k) == v for k, v in labels.items())
            ]


class ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length).decode())
        with self.server.lock:
            self.server.alerts.extend(body.get("alerts", []))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Alertmanager:
    """Alertmanager in the monitoring namespace, and the webhook receiver it notifies."""

    netns: Netns
    port: int
    receiver: Receiver

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """/api/v2/alerts (active, silenced and inhibited) with these labels."""
        filters = [f'{k}="{v}"' for k, v in labels.items()]
        query = urllib.parse.urlencode([("filter", f) for f in filters])
        url = f"http://127.0.0.1:{self.port}/api/v2/alerts?{query}"
        with self.netns.inside(), urllib.request.urlopen(url, timeout=10) as response:
            found: list[dict[str, Any]] = json.loads(response.read().decode())
        return found


@contextlib.contextmanager
def alertmanager(netns: Netns, directory: Path) -> Iterator[Alertmanager]:
    """prometheus-alertmanager on 127.0.0.1 in `netns` (no cluster port), loaded with the
    README's inhibit rule, one route whose groups are each alert alone (group_by ['...']),
    waiting 2 s before a group's first notification, and a webhook receiver served here."""
    binary = tool("prometheus-alertmanager", "Debian package prometheus-alertmanager")
    with netns.inside():
        receiver = Receiver(("127.0.0.1", 0))  # its socket is the namespace's
    serving = threading.Thread(target=receiver.serve_forever, daemon=True)
    serving.start()
    port = free_port()
    config = {
        "route": {
            "receiver": "test",
            "group_by": ["..."],
            "group_wait": "2s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "test",
                "webhook_configs": [
                    {
                        "url": f"http://127.0.0.1:{receiver.server_address[1]}/",
                        "send_resolved": False,
                    }
                ],
            }
        ],
        "inhibit_rules": readme_inhibit_rules(),
    }
    (directory / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (directory / "alertmanager").mkdir()
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns.name,
            binary,
            f"--config.file={directory / 'alertmanager.yml'}",
            f"--storage.path={directory / 'alertmanager'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    am = Alertmanager(netns, port, receiver)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                am.alerts()
                break
            assert proc.poll() is None, f"alertmanager exited with {proc.returncode}"
            assert time.monotonic() < deadline, "alertmanager not ready within 30 s"
            time.sleep(0.2)
        yield am
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        receiver.shutdown()
        receiver.server_close()
        serving.join(10)


@contextlib.contextmanager
def stack(
    netns: Netns,
    directory: Path,
    *daemon_args: str,
    watch: list[str] | None = None,
    notify: Alertmanager | None = None,
) -> Iterator[Stack]:
    """Prometheus and the daemon in `netns`; the daemon polls `netns` alone (--netns=self),
    or the namespaces labelled `watch` (--netns=<labels>: not every namespace of the
    machine, where other tests make and drop their own). Prometheus sends its alerts to
    `notify` when given."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus missing (Debian package prometheus)")
        pytest.skip("prometheus missing (Debian package prometheus)")
    s = Stack(netns, directory, free_port(), free_port(), alertmanager=notify)
    rule_files = []
    for relative, text in generate(FAST).items():
        if relative.parent == Path("deploy/prometheus"):
            (directory / relative.name).write_text(text)
            rule_files.append(relative.name)
    alerting = (
        "alerting:\n"
        f"  alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:{notify.port}']}}]}}]\n"
        if notify is not None
        else ""
    )
    (directory / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: {json.dumps(sorted(rule_files))}\n" + alerting + "scrape_configs:\n"
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
                "--netns=self" if watch is None else f"--netns={','.join(watch)}",
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
    makes (so its port stays in TIME-WAIT for 60 s) and each socket whose bind() or
    connect() failed (a failed connect() is counted when its socket is closed); it goes on
    trying while ports are exhausted, counting the failures by call and errno."""

    netns: Netns
    destination: tuple[str, int]
    bind_first: bool = False
    per_second: float | None = None  # paced, or as fast as it can
    connected: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # "connect EADDRNOTAVAIL": n
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        start = time.monotonic()
        with self.netns.inside():
            while not self.stop.is_set():
                if self.per_second is not None:
                    due = start + (self.connected + self.failed) / self.per_second
                    self.stop.wait(max(0.0, due - time.monotonic()))
                sock = socket.socket()
                call = "bind"
                try:
                    if self.bind_first:
                        sock.bind(("127.0.0.1", 0))  # takes an ephemeral port now
                    call = "connect"
                    sock.connect(self.destination)
                    self.connected += 1
                except OSError as exc:
                    assert exc.errno in (errno.EADDRNOTAVAIL, errno.EADDRINUSE), exc
                    self.failed += 1
                    self.errors[f"{call} {errno.errorcode[exc.errno]}"] += 1
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


@pytest.fixture(scope="module")
def crowd() -> Iterator[list[Netns]]:
    """CROWD quiet namespaces, made once for the module (about 5 s): each a listener on
    127.0.0.1:8080, 3 connections held and 5 closed (5 TIME-WAIT sockets, gone after 60 s),
    tcp_max_tw_buckets TW_BUCKETS. Nothing in them is notable."""
    require_kernel()
    raise_fd_limit()  # about 12 sockets held per namespace
    with contextlib.ExitStack() as namespaces:
        quiet = [namespaces.enter_context(new_netns("twq")) for _ in range(CROWD)]
        for namespace in quiet:
            namespace.sysctl("net.ipv4.tcp_max_tw_buckets", str(TW_BUCKETS))
            pod_shaped(namespace)
        yield quiet


@contextlib.contextmanager
def as_pod(netns: Netns, logs: Path) -> Iterator[str]:
    """Make `netns` a pod's, as kubelet leaves it on a node: a process in it (the pause
    container's) in the pod's cgroup, and the pod's directory under kubelet's log directory
    (`logs`, the daemon's --path.pod-logs). Yields the namespace's netns label."""
    namespace, name, uid = POD
    (logs / f"{namespace}_{name}_{uid}").mkdir(parents=True)
    roots = cgroup_roots()
    container = "cri-containerd-" + "6a5b4c3d2e1f" * 5 + "6a5b"
    if "v2" in roots:  # systemd driver, Burstable QoS
        pod = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
        cgroup = (
            roots["v2"] / "kubepods.slice/kubepods-burstable.slice" / pod / f"{container}.scope"
        )
    elif "v1-pids" in roots:  # cgroupfs driver
        cgroup = roots["v1-pids"] / "kubepods" / "burstable" / f"pod{uid}" / container
    else:
        skip_or_fail(f"no cgroup hierarchy to place a pod's process in: {roots}")
    with contextlib.ExitStack() as cleanup:
        pause = subprocess.Popen(["ip", "netns", "exec", netns.name, "sleep", "infinity"])
        cleanup.enter_context(in_cgroup(cgroup, pause.pid))  # removed once it has exited
        cleanup.callback(pause.wait)
        cleanup.callback(pause.kill)
        yield f"{namespace}/{name}"


def labels_of(s: Stack, selector: str) -> list[dict[str, str]]:
    return [row["metric"] for row in s.query(selector)]


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
    netns: Netns, tmp_path: Path, crowd: list[Netns]
) -> None:
    """Among CROWD quiet namespaces. The exhausted one is notable from the first poll (its
    100-port range is unlike most namespaces'), so its buckets are counted in their own
    series from the start."""
    sysfs = tmp_path / "sys"
    (sysfs / "kernel" / "slab").mkdir(parents=True)
    logs = tmp_path / "pods"
    with new_netns("twp") as exhausted, as_pod(exhausted, logs) as pod:
        destination = exhaustion_netns(exhausted)
        watch = [*(quiet.name for quiet in crowd), pod, netns.name]
        with (
            alertmanager(netns, tmp_path) as am,
            stack(
                netns,
                tmp_path,
                f"--path.sysfs={sysfs}",
                f"--path.pod-logs={logs}",
                watch=watch,
                notify=am,
            ) as s,
        ):
            s.wait_until_shown_in_full(pod)
            with Client(exhausted, destination).running() as client:
                check_exhaustion_stack(s, client, netns, pod, crowd)


def check_exhaustion_stack(
    s: Stack, client: Client, netns: Netns, pod: str, crowd: list[Netns]
) -> None:
    firing = s.wait_for(
        f"{EXHAUSTION} firing",
        lambda: [a for a in s.alerts(EXHAUSTION) if a.get("severity") == "critical"],
        90,
    )
    assert client.failed > 0  # connects were failing while it fired
    assert len(firing) == 1, firing
    alert = firing[0]
    assert alert["netns"] == pod
    assert (alert["k8s_namespace_name"], alert["k8s_pod_name"]) == POD[:2]
    assert (alert["remote_addr"], alert["remote_port"]) == ("127.0.0.2", "8080")
    assert alert["local_addr"] == "127.0.0.1"
    check_connect_failing(s, client, pod, "127.0.0.2")
    assert s.alertmanager is not None
    check_alertmanager(s.alertmanager, alert)

    # The price: every namespace polled, 7 series for a quiet one, the node within budget.
    polled = s.query("sum(tcptw_poll_namespaces)")
    assert float(polled[0]["value"][1]) == CROWD + 2, polled
    quiet = {
        m["__name__"] for m in labels_of(s, f'{{__name__=~"tcptw_.+", netns="{crowd[0].name}"}}')
    }
    assert quiet == QUIET_SET
    total = int(s.query('count({__name__=~"tcptw_.+"})')[0]["value"][1])
    print(f"{total} tcptw_* series for {CROWD + 2} namespaces")
    assert total <= SERIES_BUDGET, f"{total} series"
    # Shown in full: the exhausted namespace and the monitoring one (its sysctls are the
    # kernel's defaults, unlike the crowd's tcp_max_tw_buckets).
    detailed = s.query("tcptw_netns_detailed")
    assert float(detailed[0]["value"][1]) == 2, detailed

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
        # Both namespaces shown in full: the pod's (outbound) and the monitoring one,
        # where Prometheus scrapes and is queried (inbound), as a multi-value $netns.
        "netns": f"({pod}|{netns.name})",
        "pod": POD[1],
    }
    for board in (dashboards.fleet(FAST), dashboards.node(FAST)):
        for title, expr in dashboards.queries(board):
            concrete = dashboards.substitute(expr, values)
            if not query_has_data(s, concrete):
                reason = next((r for k, r in EMPTY_HERE.items() if k in concrete), None)
                if reason is None:
                    missing.append(f"{board['title']} / {title}: {concrete}")
    assert missing == [], "queries without data:\n" + "\n".join(missing)

    # With every namespace selected ($netns All is .*, which matches netns=""): no
    # per-namespace row is the compact fold's nameless one (Prometheus drops the empty
    # label), while node totals count the quiet namespaces through it.
    nameless = []
    states: dict[str, float] = {}
    everything = {"job": "timewait-exporter", "instance": f"127.0.0.1:{s.exporter_port}"}
    for board in (dashboards.fleet(FAST), dashboards.node(FAST)):
        for title, expr in dashboards.queries(board):
            concrete = dashboards.substitute(expr, everything)
            if dashboards_label_values(concrete) is not None:
                continue
            found = s.query(concrete)
            rows = [row["metric"] for row in found]
            if any("netns" in row for row in rows) and any("netns" not in row for row in rows):
                nameless.append(f"{board['title']} / {title}: {concrete}")
            if title == "Sockets by state":
                states = {row["metric"]["state"]: float(row["value"][1]) for row in found}
    assert nameless == [], "per-namespace rows without a namespace:\n" + "\n".join(nameless)
    assert states["established"] >= 6 * CROWD, states  # 3 pairs in each quiet namespace

    hang_slab_reads(s.directory / "sys")  # the next poll blocks in a read of a FIFO
    stale = s.wait_for(f"{STALE} firing", lambda: s.alerts(STALE), 60)
    assert stale[0]["instance"] == f"127.0.0.1:{s.exporter_port}"
    assert s.query('up{job="timewait-exporter"} == 1')  # it still answers scrapes


def check_connect_failing(s: Stack, client: Client, pod: str, remote_addr: str) -> None:
    """The failed-connect alert fires for the pod and destination address while the client's
    connect()s fail with EADDRNOTAVAIL."""
    firing = s.wait_for(
        f"{FAILING} firing toward {remote_addr}",
        lambda: [a for a in s.alerts(FAILING) if a.get("remote_addr") == remote_addr],
        60,
    )
    assert client.errors["connect EADDRNOTAVAIL"] > 0, client.errors
    assert len(firing) == 1, firing
    alert = firing[0]
    assert alert["netns"] == pod and alert["severity"] == "critical", alert
    assert (alert["k8s_namespace_name"], alert["k8s_pod_name"]) == POD[:2]
    # Failed connects are counted per destination, never the netns="" fold's, and the
    # other alerts of the namespace name no other pod.
    assert all(a["netns"] == pod for a in s.alerts(FAILING)), s.alerts(FAILING)


def check_alertmanager(am: Alertmanager, critical: dict[str, str]) -> None:
    """Through the README's inhibit rule, the critical exhaustion reaches the receiver and
    its warning twin (the same bucket and pod) does not: Alertmanager holds it, inhibited.
    The failed-connect alert reaches the receiver with its labels and runbook_url."""
    bucket = {
        k: critical[k]
        for k in ("alertname", "instance", "netns", "local_addr", "remote_addr", "remote_port")
    }
    deadline = time.monotonic() + 60
    while True:
        delivered = am.receiver.received(**bucket, severity="critical")
        held = am.alerts(**bucket, severity="warning")
        failing = am.receiver.received(alertname=FAILING, remote_addr=critical["remote_addr"])
        if delivered and held and failing:
            break
        assert time.monotonic() < deadline, (
            f"within 60 s: delivered {delivered}, warning held {held}, failing {failing}, "
            f"all received {am.receiver.alerts}"
        )
        time.sleep(0.5)
    assert delivered[0]["status"] == "firing"
    assert delivered[0]["labels"]["k8s_pod_name"] == POD[1]
    [warning] = held
    assert warning["status"]["state"] == "suppressed", warning
    assert warning["status"]["inhibitedBy"], warning  # the critical alert's fingerprint
    [source] = am.alerts(**bucket, severity="critical")
    assert warning["status"]["inhibitedBy"] == [source["fingerprint"]], (warning, source)
    assert source["status"]["state"] == "active", source

    alert = failing[0]
    labels = alert["labels"]
    assert labels["netns"] == critical["netns"] and labels["severity"] == "critical", labels
    assert (labels["k8s_namespace_name"], labels["k8s_pod_name"]) == POD[:2]
    assert labels["instance"] == critical["instance"] and labels["job"] == "timewait-exporter"
    assert alert["annotations"]["runbook_url"] == FAST.runbook_url(FAILING)
    assert critical["remote_addr"] in alert["annotations"]["summary"]
    assert f"pod {POD[0]}/{POD[1]}" in alert["annotations"]["summary"]
    # Two group_wait later, still no warning twin was ever notified.
    time.sleep(4)
    assert am.receiver.received(**bucket, severity="warning") == [], am.receiver.alerts


def test_overflow_fires_for_a_namespace_quiet_until_its_counter_moved(
    netns: Netns, tmp_path: Path, crowd: list[Netns]
) -> None:
    """A namespace like the crowd's (tcp_max_tw_buckets TW_BUCKETS, as theirs) shows only
    its 7 series until 40 closes overflow its TIME-WAIT table. Then it is notable, and its
    TCPTimeWaitOverflow series first appears at the previous poll's value, 0, then at the
    kernel's: rate() in the recording rule sees the whole move and the alert fires.
    The daemon polls every 2 s while Prometheus scrapes every second, so that the first
    exposure, which lasts one poll, is scraped (a scrape interval as long as the poll
    interval can miss it)."""
    name = "tcptw_tcpext_tcp_time_wait_overflow_total"
    with new_netns("twv") as overflowing:
        overflowing.sysctl("net.ipv4.tcp_max_tw_buckets", str(TW_BUCKETS))
        listener = overflowing.listen("127.0.0.1", 8080)
        label = overflowing.name
        watch = [*(quiet.name for quiet in crowd), label, netns.name]
        with stack(netns, tmp_path, "--poll.interval=2", watch=watch) as s:
            s.wait_for(
                "the namespace polled quietly",
                lambda: s.query(
                    f'count_over_time(tcptw_sockstat_tcp_tw{{netns="{label}"}}[1m]) >= 4'
                ),
                30,
            )
            shown = {
                m["__name__"] for m in labels_of(s, f'{{__name__=~"tcptw_.+", netns="{label}"}}')
            }
            assert shown == QUIET_SET  # quiet: no overflow series of its own yet
            time_wait_pairs(overflowing, listener, 40)  # the client closes first
            kernel = netstat.parse_netstat(overflowing.read("net/netstat"))
            overflowed = kernel["TCPTimeWaitOverflow"]
            assert overflowed == 40 - TW_BUCKETS, kernel

            firing = s.wait_for(f"{OVERFLOW} firing", lambda: [a for a in s.alerts(OVERFLOW)], 60)
            assert [a["netns"] for a in firing] == [label], firing  # not the fold's netns=""
            # Its series: first the previous poll's value, then the kernel's.
            data = s.api("query", query=f'{name}{{netns="{label}"}}[5m]')
            assert len(data["result"]) == 1, data
            values = [float(v) for _, v in data["result"][0]["values"]]
            assert values[0] == 0 and values[-1] == overflowed, values
            # The node-wide fold never held it (the move showed in the namespace's series).
            fold = s.query(f'max_over_time({name}{{netns=""}}[5m])')
            assert float(fold[0]["value"][1]) == 0, fold


def test_exhaustion_fires_for_clients_that_bind_before_connect(
    netns: Netns, tmp_path: Path
) -> None:
    """The client in a namespace of its own (a pod's): bound ports are taken whatever the
    destination, so in the monitoring namespace they would starve Prometheus's scrapes and
    the test's queries too.

    Once the range is taken, the bind-first client's bind(0) fails with EADDRINUSE: no
    connect() is even tried, so nothing counts it as a failed connect. What fails with
    EADDRNOTAVAIL is a plain connect() in the same namespace, toward another destination
    whose bucket holds no socket at all (connect() skips ports that were bound first):
    the failed-connect alert fires for it, naming the pod and 127.0.0.3, where the
    utilisation forecast sees nothing."""
    logs = tmp_path / "pods"
    with new_netns("twb") as clients, as_pod(clients, logs) as pod:
        destination = exhaustion_netns(clients)
        elsewhere = ("127.0.0.3", 8080)
        clients.listen(*elsewhere)
        with stack(netns, tmp_path, f"--path.pod-logs={logs}", watch=[pod, netns.name]) as s:
            s.wait_for(
                "the clients' namespace polled",
                lambda: labels_of(s, f'tcptw_netns_info{{netns="{pod}"}}'),
                30,
            )
            with Client(clients, destination, bind_first=True).running() as client:
                firing = s.wait_for(
                    f"{EXHAUSTION} firing",
                    lambda: [a for a in s.alerts(EXHAUSTION) if a.get("severity") == "critical"],
                    90,
                )
                assert client.errors["bind EADDRINUSE"] > 0, client.errors
                assert firing[0]["netns"] == pod
                with Client(clients, elsewhere).running() as plain:
                    check_connect_failing(s, plain, pod, elsewhere[0])
                    assert plain.connected == 0, plain
                    assert not [
                        a for a in s.alerts(EXHAUSTION) if a.get("remote_addr") == elsewhere[0]
                    ]


def test_connection_rate_alert_fires_from_the_counters_before_ports_run_out(
    netns: Netns, tmp_path: Path, crowd: list[Netns]
) -> None:
    """600 ports sustain 600 / 60 = 10 connections a second toward one destination; a
    client paced at 9/s, closing first, is at 90 %. Within 60 s it holds at most 540
    ports, so no connect() fails and the exhaustion alert cannot fire; the rate alert must,
    from the socket-destroy counters (method="events") over the rules' 20 s window.

    Among the crowd, whose port range its own is unlike: notable from the first poll, its
    buckets have series of their own from the first close. (Alone, compact detail would
    show them only once a bucket reaches half its capacity, after 33 s at 90 %, the closes
    of the polls before in the netns="" fold: rate() of the bucket's new series then needs
    a whole window, and the exhaustion warning, at 80 % after 53 s, comes about as soon.)"""
    destination = exhaustion_netns(netns, ports=600)
    watch = [*(quiet.name for quiet in crowd), netns.name]
    with stack(netns, tmp_path, watch=watch) as s:
        s.wait_until_shown_in_full(netns.name)
        with Client(netns, destination, per_second=9.0).running() as client:
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
