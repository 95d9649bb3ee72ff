"""The fleet view on real engines (issue 17): two "cluster" Prometheus servers (Debian's
binary), external_labels cluster="a" and cluster="b", each scrape their own real exporter
daemon every second and evaluate the generated rules, and remote-write what the fleet
dashboard needs (the recorded tcptw:* series plus a few raw ones, FORWARDED) into a third,
global Prometheus (--web.enable-remote-write-receiver) that scrapes nothing. docs/fleet.md
documents this setup with the same configuration.

Each cluster's exporter polls two namespaces in its default, compact detail: a busy one,
shown in full (a's 100 ports exhausted by a client that goes on trying, b's at 60 %), and
a quiet one (5 %: 7 series, the rest summed into netns="" rows). Both exporters get the
same instance label (node-1), so only the cluster label keeps their rows apart, as with
node names that repeat across clusters. The worst-namespaces panel must rank all four with
their utilisation; then every query of the fleet dashboard generated with
cluster_label="cluster" (the default):

- with $cluster at All, on the global Prometheus, has rows of both clusters (every query
  that has data on the cluster Prometheus servers), each row naming its cluster, or is a
  fleet-wide aggregate with no cluster label (the single stats; FLEET_WIDE lists them);
- with $cluster set to a (b), on the global Prometheus, returns the same rows (label sets)
  as on cluster a's (b's) own Prometheus, and the same values for the `or vector(0)` counts
  (where rows alone prove nothing);
- the variables offer the same values, and $cluster offers exactly a and b.

Queries without data anywhere are listed in EMPTY_HERE with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mixin import dashboards
from mixin.config import MixinConfig
from mixin.generate import generate
from tests.conftest import skip_or_fail
from tests.kernel import Netns, new_netns
from tests.serving import free_port

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parent.parent
CONFIG = MixinConfig(cluster_label="cluster")  # the default, spelled out
LABEL = CONFIG.cluster_label
CLUSTERS = ("a", "b")
NODE = "node-1"  # both exporters' instance label
# What each cluster Prometheus remote-writes (docs/fleet.md): the exporter's job only, and of
# it the recorded series plus the raw series the fleet dashboard reads. The per-bucket and
# per-counter series (most of the volume) stay in the cluster, where the node dashboard and
# the alerts use them.
FORWARDED = (
    "tcptw:.+|up|tcptw_build_info|tcptw_netns_info|tcptw_sysctl_.+|tcptw_sockstat_tcp_tw"
    "|tcptw_source_success|tcptw_poll_(namespaces|duration_seconds|interval_seconds"
    "|overruns_total)|process_(resident_memory_bytes|cpu_seconds_total)"
)
# Queries that legitimately return nothing in this setup, with the reason (a fragment of
# the query, as in tests/test_prometheus_e2e.py).
EMPTY_HERE = {
    ", k8s_pod_name)": "the pod variable: no pods outside Kubernetes, every pod label is empty",
}
# Single stats that aggregate over the whole selection (no `by`): one row without a cluster
# label, which $cluster narrows to one cluster. Checked per cluster instead.
FLEET_WIDE = {
    "Namespaces with tcp_tw_reuse off",
    "Namespaces with tcp_timestamps off",
    "Namespaces with tcp_tw_recycle on",
    "Smallest ephemeral port range",
    "Namespaces sharing the host's established hash",
    "Nodes with tcp_child_ehash_entries 0",
    "Exporters down",
    "Oldest poll",
    "Failing sources",
    "Namespaces deferred or failed",
}
# Grafana's label_values(series, label) (a variable's query).
LABEL_VALUES = re.compile(r"^\s*label_values\((?P<series>.*),\s*(?P<label>\w+)\s*\)\s*$", re.S)
T = TypeVar("T")


def wait_for(
    what: str, predicate: Callable[[], T], timeout: float, logs: Callable[[], str] = str
) -> T:
    """predicate() until it is truthy (OSError counts as not yet), at most `timeout` s;
    then an AssertionError that ends with logs()."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            found = predicate()
            if found:
                return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not seen within {timeout} s{logs()}")
        time.sleep(0.5)


@dataclass
class Prometheus:
    name: str
    port: int
    monitoring: Netns  # where every server and exporter runs, on its loopback

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with self.monitoring.inside(), urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read().decode())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"]) if data["resultType"] == "vector" else []

    def label_values(self, label: str, series: str) -> list[str]:
        params = {"match[]": series} if series else {}
        return sorted(self.api(f"label/{label}/values", **params))


@dataclass
class Fleet:
    monitoring: Netns
    directory: Path
    clusters: dict[str, Prometheus] = field(default_factory=dict)
    global_: Prometheus | None = None
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def central(self) -> Prometheus:
        assert self.global_ is not None
        return self.global_

    def start(self, name: str, *argv: str) -> None:
        log = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115 (closed by the child)
        with log:
            self.procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", self.monitoring.name, *argv],
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )

    def logs(self) -> str:
        """The last lines of every process's log, for a failure message."""
        tails = []
        for log in sorted(self.directory.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-8:]
            tails.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n" + "\n".join(tails)

    def stop(self) -> None:
        # In reverse: the cluster servers before the global one, which takes their last
        # writes (the flush deadline bounds it anyway).
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def cluster_config(cluster: str, exporter_port: int, global_port: int) -> str:
    """A cluster's Prometheus: docs/fleet.md's snippet, with the test's intervals."""
    return f"""\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
  external_labels:
    {LABEL}: {cluster}
rule_files: [recording.yml, alerts.yml]
scrape_configs:
  - job_name: {CONFIG.job}
    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]
    relabel_configs:
      - target_label: instance
        replacement: {NODE}
remote_write:
  - url: http://127.0.0.1:{global_port}/api/v1/write
    queue_config: {{batch_send_deadline: 1s}}
    write_relabel_configs:
      - source_labels: [job]
        regex: {CONFIG.job}
        action: keep
      - source_labels: [__name__]
        regex: '{FORWARDED}'
        action: keep
"""


@contextlib.contextmanager
def fleet(namespaces: dict[str, list[Netns]], monitoring: Netns) -> Iterator[Fleet]:
    """Per cluster in `namespaces`, a Prometheus and an exporter polling that cluster's
    namespaces (in their default, compact detail), all remote-writing into a global
    Prometheus; every process inside `monitoring`, on its loopback."""
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        skip_or_fail("prometheus missing (Debian package prometheus)")
    with tempfile.TemporaryDirectory(prefix="tw-fleet-") as temporary:
        f = Fleet(monitoring, Path(temporary))
        rules = {
            relative.name: text
            for relative, text in generate(CONFIG).items()
            if relative.parent == Path("deploy/prometheus")
        }
        common = ["--storage.remote.flush-deadline=5s", "--log.level=warn"]
        try:
            f.global_ = Prometheus("global", free_port(), monitoring)
            (f.directory / "global").mkdir()
            (f.directory / "global" / "prometheus.yml").write_text("global: {}\n")
            f.start(
                "global",
                prometheus,
                f"--config.file={f.directory / 'global' / 'prometheus.yml'}",
                f"--storage.tsdb.path={f.directory / 'global' / 'data'}",
                f"--web.listen-address=127.0.0.1:{f.global_.port}",
                "--web.enable-remote-write-receiver",
                *common,
            )
            for cluster, watched in namespaces.items():
                home = f.directory / cluster
                home.mkdir()
                for name, text in rules.items():
                    (home / name).write_text(text)
                exporter_port = free_port()
                f.start(
                    f"exporter-{cluster}",
                    sys.executable,
                    "-m",
                    "exporter",
                    "serve",
                    f"--netns={','.join(n.name for n in watched)}",
                    "--poll.interval=1",
                    f"--web.listen-address=127.0.0.1:{exporter_port}",
                )
                (home / "prometheus.yml").write_text(
                    cluster_config(cluster, exporter_port, f.global_.port)
                )
                f.clusters[cluster] = Prometheus(cluster, free_port(), monitoring)
                f.start(
                    cluster,
                    prometheus,
                    f"--config.file={home / 'prometheus.yml'}",
                    f"--storage.tsdb.path={home / 'data'}",
                    f"--web.listen-address=127.0.0.1:{f.clusters[cluster].port}",
                    *common,
                )
            for cluster in namespaces:
                wait_for(
                    f"cluster {cluster}'s exporter up, on the global Prometheus",
                    lambda c=cluster: f.central.query(  # type: ignore[misc]
                        f'up{{{LABEL}="{c}", job="{CONFIG.job}"}} == 1'
                    ),
                    40,
                    f.logs,
                )
            yield f
        finally:
            f.stop()


def rows(result: list[dict[str, Any]], drop: str = "") -> set[tuple[tuple[str, str], ...]]:
    """The label sets of a query's rows (without label `drop`)."""
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k != drop)) for r in result}


def values(result: list[dict[str, Any]], drop: str = "") -> dict[tuple[tuple[str, str], ...], str]:
    return {
        tuple(sorted((k, v) for k, v in r["metric"].items() if k != drop)): r["value"][1]
        for r in result
    }


def metric_names(expr: str) -> set[str]:
    """The metric names a query selects (every selector of the mixin has matchers)."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr))


def check(f: Fleet, title: str, expr: str) -> str | None:
    """What is wrong with this fleet query on the global Prometheus, or None."""
    everything = {"job": CONFIG.job, LABEL: ".*"}
    label_values = LABEL_VALUES.match(expr)
    if label_values is not None:  # Grafana's, not PromQL: the label values API answers it
        series, label = label_values["series"], label_values["label"]
        offered_here = {
            c: p.label_values(label, dashboards.substitute(series, everything))
            for c, p in f.clusters.items()
        }
        if label == LABEL:
            offered = f.central.label_values(label, dashboards.substitute(series, everything))
            return None if offered == sorted(CLUSTERS) else f"offers {offered}"
        if not all(offered_here.values()):
            return None if any(k in expr for k in EMPTY_HERE) else f"clusters offer {offered_here}"
        for c in CLUSTERS:
            offered = f.central.label_values(
                label, dashboards.substitute(series, {"job": CONFIG.job, LABEL: c})
            )
            if offered != offered_here[c]:
                return (
                    f"{LABEL}={c} offers {offered}, cluster {c}'s own Prometheus {offered_here[c]}"
                )
        return None
    local = {c: p.query(dashboards.substitute(expr, everything)) for c, p in f.clusters.items()}
    if not all(local.values()):
        if any(k in expr for k in EMPTY_HERE):
            return None
        return f"no data on the own Prometheus of {[c for c in CLUSTERS if not local[c]]}"
    fleet_wide = f.central.query(dashboards.substitute(expr, everything))
    seen = {r["metric"].get(LABEL) for r in fleet_wide}
    if title in FLEET_WIDE:
        if seen != {None} or len(fleet_wide) != 1:
            return f"a fleet-wide single stat should be one row without {LABEL}: {fleet_wide}"
    elif seen != set(CLUSTERS):
        return f"rows of {LABEL} {sorted(map(str, seen))} (a row without it is None)"
    for c in CLUSTERS:
        narrowed = f.central.query(dashboards.substitute(expr, {"job": CONFIG.job, LABEL: c}))
        if rows(narrowed, LABEL) != rows(local[c]):
            return (
                f"{LABEL}={c}: rows {sorted(rows(narrowed, LABEL))}, on cluster {c}'s own "
                f"Prometheus {sorted(rows(local[c]))}"
            )
        if "vector(0)" in expr and values(narrowed, LABEL) != values(local[c]):
            return f"{LABEL}={c}: {values(narrowed, LABEL)} != {values(local[c])} (cluster {c})"
    return None


def serving(netns: Netns, ports: int = 100) -> tuple[str, int]:
    """`ports` ephemeral ports (40000 on), tcp_tw_reuse 0, and a server on 127.0.0.2:8080
    that closes after the client, so that each connection leaves the client's port in
    TIME-WAIT for 60 s (tests/test_prometheus_e2e.py's recipe, copied: that file changes
    with its own tests)."""
    netns.sysctl("net.ipv4.ip_local_port_range", f"40000 {40000 + ports - 1}")
    netns.sysctl("net.ipv4.tcp_tw_reuse", "0")
    listener = netns.listen("127.0.0.2", 8080, backlog=4096)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
                conn.recv(1)  # the client's FIN
                conn.close()
            except OSError:  # the listener closed with the namespace
                return

    threading.Thread(target=accept, daemon=True).start()
    return ("127.0.0.2", 8080)


@contextlib.contextmanager
def exhausting(netns: Netns, destination: tuple[str, int]) -> Iterator[list[int]]:
    """A client that connects and closes toward `destination` until EADDRNOTAVAIL, and
    goes on trying (every 20 ms) while the context lasts; yields [connected, failed]."""
    counts = [0, 0]
    stop = threading.Event()

    def run() -> None:
        with netns.inside():
            while not stop.is_set():
                sock = socket.socket()
                try:
                    sock.connect(destination)
                    counts[0] += 1
                except OSError as exc:
                    if exc.errno not in (errno.EADDRNOTAVAIL, errno.EADDRINUSE):
                        raise
                    counts[1] += 1
                    stop.wait(0.02)
                finally:
                    sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(10)


def fail_once_bound(netns: Netns, destination: tuple[str, int]) -> None:
    """One connect() refused with EADDRNOTAVAIL: a socket bound to a port outside the
    ephemeral range whose quadruplet a first one holds (a failure that exhausts nothing)."""
    with netns.inside():
        first = socket.socket()
        second = socket.socket()
    netns.held.append(first)
    for sock in (first, second):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 41000))
    first.connect(destination)
    try:
        second.connect(destination)
    except OSError as exc:
        assert exc.errno == errno.EADDRNOTAVAIL, exc
    else:
        raise AssertionError("the second connect() took a quadruplet in use")
    finally:
        second.close()


def burst(netns: Netns, destination: tuple[str, int], count: int) -> None:
    """`count` connections, each closed by the client first: `count` ports in TIME-WAIT
    toward `destination` for 60 s."""
    with netns.inside():
        for _ in range(count):
            with socket.create_connection(destination, timeout=5):
                pass


def test_fleet_dashboard_on_a_global_prometheus_fed_by_two_clusters() -> None:
    board = json.loads(generate(CONFIG)[Path("grafana/fleet.json")])
    queries = dashboards.queries(board)
    unforwarded = {
        (title, name)
        for title, expr in queries
        for name in metric_names(expr)
        if not re.fullmatch(FORWARDED, name)
    }
    assert unforwarded == set(), f"the fleet dashboard reads series not forwarded: {unforwarded}"

    with contextlib.ExitStack() as stack:
        monitoring = stack.enter_context(new_netns("twm"))
        # Per cluster a busy namespace, shown in full (a bucket at 0.5 of capacity or more),
        # and a quiet one (7 series, the rest summed into netns=""), with the same sysctls
        # (one unlike the others' would make its namespace notable): 100 ports each
        # (40000-40099), tcp_tw_reuse 0, a server on 127.0.0.2:8080 that closes second.
        namespaces = {
            c: [stack.enter_context(new_netns(f"tw{c}{role}")) for role in ("busy", "quiet")]
            for c in CLUSTERS
        }
        destination = {n.name: serving(n, ports=100) for ns in namespaces.values() for n in ns}
        f = stack.enter_context(fleet(namespaces, monitoring))
        # Once the exporters run, so that their socket-destroy counters see the closes (a
        # bucket exhausted before the exporter started has no closes to count, and no
        # connection-rate row while its ports stay taken).
        (busy_a, quiet_a), (busy_b, quiet_b) = namespaces["a"], namespaces["b"]
        client = stack.enter_context(exhausting(busy_a, destination[busy_a.name]))
        burst(busy_b, destination[busy_b.name], 60)  # 0.6: notable, under the 0.8 warning
        fail_once_bound(busy_b, destination[busy_b.name])  # b's failed connect() too
        for quiet in (quiet_a, quiet_b):
            burst(quiet, destination[quiet.name], 5)

        # The worst-namespaces panel, every namespace (quiet ones too: its series is one of
        # the seven), told apart by cluster and netns, on one instance label.
        worst = dashboards.substitute(
            next(e for t, e in queries if t == "Namespaces closest to outbound port exhaustion"),
            {"job": CONFIG.job},
        )
        expected = {
            ("a", busy_a.name): 1.0,
            ("a", quiet_a.name): 0.05,
            ("b", busy_b.name): 0.6,
            ("b", quiet_b.name): 0.05,
        }

        def ranked() -> dict[tuple[str, str], float] | None:
            found = {
                (r["metric"][LABEL], r["metric"]["netns"]): float(r["value"][1])
                for r in f.central.query(worst)
            }
            return found if found == expected else None

        wait_for("every namespace's worst bucket on the global Prometheus", ranked, 40, f.logs)
        assert client[1] > 0  # connect() fails in a
        assert {r["metric"]["instance"] for r in f.central.query(worst)} == {NODE}
        # Compact detail: the quiet namespaces' sysctls beyond the seven are not exposed.
        timestamps = f.central.query(f'tcptw_sysctl_tcp_timestamps{{job="{CONFIG.job}"}}')
        assert {r["metric"]["netns"] for r in timestamps} == {busy_a.name, busy_b.name}
        # Only FORWARDED reached the global Prometheus: no per-bucket raw series.
        assert f.clusters["a"].query(f'tcptw_outbound_ports_used{{job="{CONFIG.job}"}}')
        assert f.central.query(f'tcptw_outbound_ports_used{{job="{CONFIG.job}"}}') == []
        assert f.central.query(f'{{__name__=~".+", job!="{CONFIG.job}"}}') == []

        # Every query, until each one agrees (rate rules need two samples, remote write
        # batches for up to 1 s): bounded, then the ones that still disagree are reported.
        failures: dict[str, str] = {}

        def all_agree() -> bool:
            failures.clear()
            for title, expr in queries:
                try:
                    problem = check(f, title, expr)
                except urllib.error.HTTPError as error:  # a query Prometheus rejects
                    problem = f"HTTP {error.code}: {error.read().decode(errors='replace')}"
                if problem is not None:
                    failures[f"{title}: {expr}"] = problem
            return not failures

        with contextlib.suppress(AssertionError):
            wait_for("every fleet query agreeing", all_agree, 30)
        assert failures == {}, "fleet queries on the global Prometheus:\n" + "\n".join(
            f"{query}\n  -> {problem}" for query, problem in failures.items()
        )
