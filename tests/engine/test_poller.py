from __future__ import annotations

import contextlib
import gc
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import structlog
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.config import Config
from exporter.engine.collector import SnapshotCollector
from exporter.engine.poller import Poller
from exporter.engine.snapshot import Snapshot
from exporter.netns.context import NetnsContext, Wanted
from exporter.netns.tracker import Tracked
from exporter.sources.sockdiag.dump import DiagSocket
from exporter.sources.sockdiag.source import DIAG
from exporter.sources.sockdiag.tally import SocketStats
from tests.conftest import FIXTURES
from tests.exposition import samples, series, value
from tests.kernel import new_netns, unnamed_namespace


def test_failing_source_logs_once_per_change_of_state(tree: Path) -> None:
    poller = Poller(
        Config(
            procfs=tree / "proc",
            sysfs=tree / "sys",
            netns="self",
            netns_name="t",
            collectors=frozenset({"netstat", "sockstat"}),
        )
    )
    netstat = tree / "proc/net/netstat"
    good = netstat.read_text()
    with structlog.testing.capture_logs() as logs:
        shutil.copyfile(FIXTURES / "corrupt/netstat-empty", netstat)
        first = poller.poll_once()
        poller.poll_once()
        netstat.write_text(good)
        third = poller.poll_once()
        poller.poll_once()
    events = [(e["event"], e.get("source")) for e in logged(logs)]
    assert events == [("source failed", "netstat"), ("source recovered", "netstat")]
    assert [(r.source, r.netns, r.ok) for r in first.results] == [
        ("netstat", "t", False),
        ("sockstat", "t", True),
        ("sockstat", "", True),  # its host-wide part
    ]
    assert "no TcpExt lines" in first.results[0].error
    assert all(r.ok for r in third.results)


def test_buckets_without_the_sysctl_collector_log_why_they_are_missing(tree: Path) -> None:
    (tree / "proc/sys/net/ipv4/ip_local_port_range").write_text("garbage\n")
    poller = Poller(
        Config(
            procfs=tree / "proc",
            sysfs=tree / "sys",
            netns="self",
            netns_name="t",
            collectors=frozenset({"sockstat"}) | {"sockdiag"},
        )
    )
    with structlog.testing.capture_logs() as logs:
        snapshot = poller.poll_once()
        poller.poll_once()  # the same problem again: no second line
    assert [(e["event"], e["source"], e["log_level"]) for e in logged(logs)] == [
        (
            "buckets unavailable: sysctls unreadable: ip_local_port_range must hold two numbers, "
            "got 'garbage'",
            "sockdiag",
            "warning",
        )
    ]
    sockdiag = next(r for r in snapshot.results if r.source == "sockdiag")
    assert sockdiag.ok and isinstance(sockdiag.data, SocketStats)
    assert sockdiag.data.ports is None  # states counted, buckets absent


def poll_text(poller: Poller) -> tuple[Snapshot, str]:
    snapshot = poller.poll_once()
    collector = SnapshotCollector(poller.config)
    collector.update(snapshot)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return snapshot, generate_latest(registry).decode()


def logged(logs: Sequence[Mapping[str, object]]) -> list[Mapping[str, object]]:
    """Captured log entries above debug (the level a default daemon prints)."""
    return [e for e in logs if e["log_level"] != "debug"]


def open_fds() -> int:
    gc.collect()  # descriptors of objects other tests left behind close now, not mid-test
    return len(os.listdir("/proc/self/fd"))


def test_deleted_namespace_vanishes_and_new_one_appears(kernel: None) -> None:
    """Delete one namespace and create another between two polls: no crash and no error
    line, the first one's series are gone and its descriptors released, the new one is
    polled from the next poll on."""
    poller = Poller(Config(detail="full"))
    try:
        with new_netns() as first:
            first.listen("127.0.0.1", 8080)
            snapshot, text = poll_text(poller)
            assert first.name in {ns.label for ns in snapshot.namespaces}
            assert f'netns="{first.name}"' in text
            held = open_fds()
        with new_netns() as second, structlog.testing.capture_logs() as logs:
            second.listen("127.0.0.1", 8081)
            snapshot, text = poll_text(poller)
            labels = {ns.label for ns in snapshot.namespaces}
            assert first.name not in labels and second.name in labels
            assert f'netns="{first.name}"' not in text
            assert (
                f'tcptw_sockets{{family="ipv4",netns="{second.name}",state="listen"}} 1.0' in text
            )
            assert open_fds() == held  # one namespace's descriptors released, one's opened
            # nor is any per-namespace state kept for it (a soak creates thousands)
            assert first.name not in {key[0] for key in poller._states._last}
        assert [e for e in logs if e["log_level"] in ("error", "warning")] == []
    finally:
        poller.close()


def test_empty_and_listener_only_namespaces_are_exact(kernel: None) -> None:
    """sockstat shows no TCP socket in the empty namespace, so its dump is skipped; its
    figures are still exact zeros, and the listener-only one is dumped and counted."""
    with new_netns() as empty, new_netns() as listening:
        empty.sysctl("net.ipv4.ip_local_port_range", "40000 40099")
        listening.sysctl("net.ipv4.ip_local_port_range", "40000 40099")
        listening.listen("127.0.0.1", 40050)
        poller = Poller(Config(netns=frozenset({empty.name, listening.name}), detail="full"))
        try:
            snapshot, text = poll_text(poller)
        finally:
            poller.close()
        outcomes = {ns.label: ns.outcome for ns in snapshot.namespaces}
        assert outcomes == {empty.name: "skipped", listening.name: "dumped"}
        parsed = samples(text)
        for ns in (empty, listening):
            label = {"netns": ns.name}
            states = {
                (dict(k)["family"], dict(k)["state"]): v
                for k, v in series(parsed, "tcptw_sockets").items()
                if dict(k)["netns"] == ns.name
            }
            assert len(states) == 20  # every state a dump returns, both families, zeros too
            assert {k: v for k, v in states.items() if v} == dict(ns.ss_states())
            assert value(parsed, "tcptw_ephemeral_ports_available", **label) == 100
            assert value(parsed, "tcptw_outbound_port_utilization_max_ratio", **label) == 0
        assert value(parsed, "tcptw_ephemeral_ports_in_use", netns=empty.name) == 0
        assert value(parsed, "tcptw_ephemeral_ports_in_use", netns=listening.name) == 1
        assert value(parsed, "tcptw_poll_namespaces", outcome="skipped") == 1


def test_namespace_that_cannot_be_opened_fails_visibly(kernel: None, tmp_path: Path) -> None:
    """A namespace found but not enterable gets failed-source series and one log line."""
    with new_netns() as ns:
        poller = Poller(Config(netns=frozenset({ns.name}), collectors=frozenset({"sysctl"})))
        tracked_open = poller._tracker.open

        def refuse(tracked: Tracked, wanted: Wanted) -> NetnsContext:
            raise PermissionError(1, "Operation not permitted")

        poller._tracker.open = refuse  # type: ignore[method-assign]
        try:
            with structlog.testing.capture_logs() as logs:
                first, _ = poll_text(poller)
                poller.poll_once()
            assert [(r.netns, r.source, r.ok) for r in first.results] == [
                (ns.name, "sysctl", False)
            ]
            assert "Operation not permitted" in first.results[0].error
            assert [e["event"] for e in logged(logs)] == ["source failed"]  # once, not every poll
            poller._tracker.open = tracked_open  # type: ignore[method-assign]
            with structlog.testing.capture_logs() as logs:
                recovered, _ = poll_text(poller)
            assert [(r.source, r.ok) for r in recovered.results] == [("sysctl", True)]
            assert [e["event"] for e in logged(logs)] == ["source recovered"]
        finally:
            poller.close()


def cgroup_roots() -> dict[str, Path]:
    """Mount points of the cgroup v2 hierarchy and of two v1 ones (pids, name=systemd)."""
    roots: dict[str, Path] = {}
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, fstype, options, *_ = line.split()
        if fstype == "cgroup2":
            roots.setdefault("v2", Path(mount))
        elif fstype == "cgroup" and "pids" in options.split(","):
            roots.setdefault("v1-pids", Path(mount))
        elif fstype == "cgroup" and "name=systemd" in options.split(","):
            roots.setdefault("v1-systemd", Path(mount))
    return roots


@contextlib.contextmanager
def in_cgroup(directory: Path, pid: int) -> Iterator[None]:
    """Place `pid` in a cgroup made for the test (removed afterwards)."""
    made = [p for p in (directory, *directory.parents) if not p.exists()]  # only ours
    directory.mkdir(parents=True, exist_ok=True)
    try:
        (directory / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        for path in made:  # deepest first; the process has exited by now
            path.rmdir()


def test_pods_are_named_from_real_cgroups_and_pod_log_dirs(kernel: None, tmp_path: Path) -> None:
    """Processes in real cgroups named as kubelet names them (systemd and cgroupfs drivers,
    cgroup v2 and v1), and a /var/log/pods-shaped directory: every namespace gets its
    `<namespace>/<pod>` label and info series."""
    roots = cgroup_roots()
    assert {"v2", "v1-pids", "v1-systemd"} <= set(roots), roots
    pods = {
        "v2": ("team-a", "web-0", "3f1c2a9e-8b7d-4c1e-9a2b-5d6e7f8a9b0c"),
        "v1-pids": ("team-b", "worker-7d9f8-x2x7q", "0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e"),
        "v1-systemd": (
            "kube-system",
            "coredns-5d78c9869d-abcde",
            "7e6d5c4b-3a29-1807-f6e5-d4c3b2a19080",
        ),
        "unnamed": ("", "", "11223344-5566-7788-99aa-bbccddeeff00"),  # no log directory
    }
    container = "6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b"

    def cgroup_dir(layout: str, uid: str) -> Path:
        underscored = uid.replace("-", "_")
        if layout == "v1-pids":  # cgroupfs driver
            return roots["v1-pids"] / "kubepods" / "besteffort" / f"pod{uid}" / container
        if layout == "v1-systemd":  # systemd driver, CRI-O, Guaranteed QoS
            slice_ = f"kubepods.slice/kubepods-pod{underscored}.slice"
            return roots["v1-systemd"] / slice_ / f"crio-{container}.scope"
        # systemd driver, containerd, Burstable QoS (also "unnamed")
        slice_ = "kubepods.slice/kubepods-burstable.slice"
        pod = f"kubepods-burstable-pod{underscored}.slice"
        return roots["v2"] / slice_ / pod / f"cri-containerd-{container}.scope"

    logs = tmp_path / "pods"
    for namespace, name, uid in pods.values():
        if name:
            (logs / f"{namespace}_{name}_{uid}").mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        inodes: dict[str, int] = {}
        for layout, (_, _, uid) in pods.items():
            process = stack.enter_context(unnamed_namespace())
            stack.enter_context(in_cgroup(cgroup_dir(layout, uid), process.pid))
            inodes[layout] = Path(f"/proc/{process.pid}/ns/net").stat().st_ino
            stack.callback(process.wait)
            stack.callback(process.kill)
        poller = Poller(Config(pod_logs=logs, collectors=frozenset({"sockstat"}), detail="full"))
        try:
            snapshot, text = poll_text(poller)
        finally:
            poller.close()
    by_inode = {ns.inode: ns for ns in snapshot.namespaces}
    parsed = samples(text)
    for layout, (namespace, name, uid) in pods.items():
        ns = by_inode[inodes[layout]]
        label = f"{namespace}/{name}" if name else f"ino-{inodes[layout]}"
        assert (ns.label, ns.k8s_namespace, ns.k8s_pod_name, ns.k8s_pod_uid) == (
            label, namespace, name, uid,
        ), layout  # fmt: skip
        info = {
            "netns": label,
            "k8s_namespace_name": namespace,
            "k8s_pod_name": name,
            "k8s_pod_uid": uid,
        }
        assert value(parsed, "tcptw_netns_info", **info) == 1
        assert value(parsed, "tcptw_source_success", netns=label, source="sockstat") == 1
    assert by_inode[Path("/proc/self/ns/net").stat().st_ino].label == "host"


def test_budget_defers_fairly_and_keeps_the_last_figures(kernel: None) -> None:
    """A poll out of budget keeps the last figures of the namespaces it did not reach,
    shows their age, and reads the most deferred ones first next time: with a budget of 0
    and one worker, one namespace is read per poll and each is read within three polls."""
    with new_netns() as a, new_netns() as b, new_netns() as c:
        names = {a.name, b.name, c.name}
        for ns in (a, b, c):
            ns.listen("127.0.0.1", 8080)
        poller = Poller(Config(netns=frozenset(names), poll_workers=1, detail="full"))
        try:
            first = poller.poll_once(budget=0.0)
            assert {n.label: n.outcome for n in first.namespaces} == dict.fromkeys(names, "dumped")
            read: list[str] = []
            for _ in range(3):
                snapshot = poller.poll_once(budget=0.0)
                outcomes = {n.label: n.outcome for n in snapshot.namespaces}
                fresh = [label for label, outcome in outcomes.items() if outcome == "dumped"]
                assert len(fresh) == 1 and sorted(outcomes.values()).count("deferred") == 2
                read += fresh
                collector = SnapshotCollector(poller.config)
                collector.update(snapshot)
                registry = CollectorRegistry(auto_describe=False)
                registry.register(collector)
                parsed = samples(generate_latest(registry).decode())
                assert value(parsed, "tcptw_poll_namespaces", outcome="deferred") == 2
                for label, outcome in outcomes.items():
                    age = value(parsed, "tcptw_netns_poll_age_seconds", netns=label)
                    assert (age == 0) == (outcome == "dumped"), (label, outcome, age)
                    # the deferred keep their last figures
                    listening = value(
                        parsed, "tcptw_sockets", netns=label, family="ipv4", state="listen"
                    )
                    assert listening == 1
            assert sorted(read) == sorted(names)  # each read once in three polls
        finally:
            poller.close()


def test_hung_sockdiag_fails_alone_and_recovers(kernel: None) -> None:
    """A sock_diag socket that never answers (its request is not sent, as if the kernel
    hung in the dump): the recv timeout ends the dump, sockdiag fails with one log line
    while the namespace's other sources succeed, and the next poll, on the fresh socket
    the failure opened, succeeds again."""
    with new_netns() as ns:
        ns.listen("127.0.0.1", 8080)
        poller = Poller(Config(netns=frozenset({ns.name})))
        try:
            poll_text(poller)  # opens the namespace's context
            (tracked,) = poller._tracker.tracked.values()
            assert tracked.context is not None
            hung = tracked.context.handle(DIAG)
            assert isinstance(hung, DiagSocket)
            hung.recv_timeout = 0.3
            hung.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 300_000)
            )
            hung.request = lambda states, bytecode=b"": 1  # type: ignore[method-assign]
            with structlog.testing.capture_logs() as logs:
                snapshot, text = poll_text(poller)
            outcome = {r.source: (r.ok, r.error) for r in snapshot.results if r.netns == ns.name}
            assert outcome["sockdiag"][0] is False
            assert "no sock_diag reply within 0.3 s" in outcome["sockdiag"][1]
            assert all(ok for source, (ok, _) in outcome.items() if source != "sockdiag")
            assert f'tcptw_source_success{{netns="{ns.name}",source="sockdiag"}} 0.0' in text
            assert [e["event"] for e in logged(logs)] == ["source failed"]
            assert tracked.context.handle(DIAG) is not hung  # replaced after the failure
            recovered, text = poll_text(poller)
            assert all(r.ok for r in recovered.results if r.netns == ns.name)
            assert f'tcptw_sockets{{family="ipv4",netns="{ns.name}",state="listen"}} 1.0' in text
        finally:
            poller.close()


def test_namespace_vanishing_between_discovery_and_open(kernel: None) -> None:
    """A namespace deleted after discovery found it and before a worker entered it: the
    poll completes, the namespace is simply absent (no failed series, no error line), and
    the other namespaces are read."""
    with new_netns() as stays, new_netns() as goes:
        stays.listen("127.0.0.1", 8080)
        poller = Poller(Config(netns=frozenset({stays.name, goes.name})))
        real_open = poller._tracker.open

        def delete_then_open(tracked: Tracked, wanted: Wanted) -> NetnsContext:
            if tracked.label == goes.name:
                subprocess.run(["ip", "netns", "delete", goes.name], check=True)
            return real_open(tracked, wanted)

        poller._tracker.open = delete_then_open  # type: ignore[method-assign]
        try:
            with structlog.testing.capture_logs() as logs:
                snapshot, text = poll_text(poller)
            assert {ns.label for ns in snapshot.namespaces} == {stays.name}
            assert f'netns="{goes.name}"' not in text
            assert all(r.ok for r in snapshot.results)
            assert [e for e in logs if e["log_level"] in ("error", "warning")] == []
        finally:
            poller.close()


def test_auto_workers_follow_the_established_hash(kernel: None) -> None:
    """Namespaces that share the host's established hash get one poll worker (a second
    walker of the same table only contends for its locks); namespaces made while
    net.ipv4.tcp_child_ehash_entries was set have their own tables and get two."""
    child = Path("/proc/sys/net/ipv4/tcp_child_ehash_entries")
    with new_netns() as shared_a, new_netns() as shared_b:
        poller = Poller(Config(netns=frozenset({shared_a.name, shared_b.name})))
        try:
            poller.poll_once()
            assert poller.workers() == 1
        finally:
            poller.close()
    before = child.read_text()
    try:
        child.write_text("1024")
        own_a = new_netns()
        own_b = new_netns()
        with own_a as a, own_b as b:
            child.write_text(before)
            with a.inside(), open("/proc/sys/net/ipv4/tcp_ehash_entries") as own:
                assert int(own.read()) == 1024  # /proc/sys follows the calling thread
            poller = Poller(Config(netns=frozenset({a.name, b.name})))
            try:
                assert poller.workers() == 1  # nothing opened yet: as if shared
                poller.poll_once()
                assert poller.workers() == 2
            finally:
                poller.close()
    finally:
        child.write_text(before)
