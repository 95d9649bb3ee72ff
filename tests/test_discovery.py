"""Namespace discovery: mountinfo parsing on a fixture, and the real /proc in namespaces the
test builds (named ones kept by a bind mount, unnamed ones kept by a process)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from exporter.discovery import FoundNamespace, discover, parse_mountinfo, parse_ns_link
from tests.conftest import FIXTURES
from tests.kernel import Netns, unnamed_namespace

# The first line was recorded on this machine (`ip netns add`); the others follow the
# layouts of containerd/CRI-O CNI pins, Docker, a mount namespace pin, an escaped space
# and optional fields.
MOUNTINFO = FIXTURES / "discovery" / "mountinfo"


def test_mountinfo_lists_network_namespace_mounts_only() -> None:
    mounts = parse_mountinfo(MOUNTINFO.read_text())
    assert mounts[1:] == [
        (4026532519, "/run/netns/cni-5f0b8c21-9a77-2c1e-4b43-0d6f5bbd9e1a"),
        (4026532519, "/var/run/netns/cni-5f0b8c21-9a77-2c1e-4b43-0d6f5bbd9e1a"),
        (4026532630, "/run/docker/netns/1a2b3c4d5e6f"),
        (4026532640, "/run/netns/with space"),
        (4026532650, "/run/netns/tagged"),
    ]
    assert mounts[0][1].startswith("/run/netns/")


def test_garbage_mountinfo_lines_are_passed_over() -> None:
    text = "garbage\n1 2 3\n- nsfs\n7 1 0:4 net:[x] /run/netns/a rw - nsfs nsfs rw\n"
    assert parse_mountinfo(text) == []


def test_ns_link() -> None:
    assert parse_ns_link("net:[4026531833]") == 4026531833
    assert parse_ns_link("mnt:[4026531832]") is None
    assert parse_ns_link("net:[]") is None


def test_mount_name_is_the_first_file_name() -> None:
    found = FoundNamespace(1, (), ("/var/run/netns/b", "/run/netns/a"))
    assert found.mount_name == "a"
    assert FoundNamespace(1, (5,), ()).mount_name is None


def test_discovery_finds_named_and_unnamed_namespaces(netns: Netns) -> None:
    with unnamed_namespace() as process:
        inode = Path(f"/proc/{process.pid}/ns/net").stat().st_ino
        found = discover(Path("/proc"))
        assert found[inode].pids == (process.pid,)
        assert found[inode].mounts == ()
        assert found[netns.inode].mounts == (netns.path,)
        assert found[netns.inode].mount_name == netns.name
        own = Path("/proc/self/ns/net").stat().st_ino
        assert len(found[own].pids) >= 1
    # Discovery never creates a namespace: a name that was never added stays absent.
    subprocess.run(["ip", "netns", "del", "twt-never-created"], capture_output=True)
    assert not Path("/run/netns/twt-never-created").exists()
    assert inode not in discover(Path("/proc"))  # its process exited: the namespace is gone
