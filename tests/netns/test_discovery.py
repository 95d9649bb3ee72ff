"""Namespace discovery: mountinfo parsing on a fixture, and the real /proc in namespaces the
test builds (named ones kept by a bind mount, unnamed ones kept by a process)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.netns.discovery import FoundNamespace, discover, parse_mountinfo, parse_ns_link
from tests.conftest import FIXTURES
from tests.fuzzing import FUZZ, mutated, texts
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


# -- property tests (hypothesis); fuzz/targets.py runs the same parser under atheris ------

_ESCAPED = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134", "#": "\\043"}
# A mount point as the kernel prints it (fs/proc_namespace.c, mangle): any bytes but NUL,
# with space, tab, newline, backslash and "#" escaped; read with errors="replace".
_MOUNT_POINT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"))
OTHER_LINES = [
    "1 0 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw",
    "900 29 0:4 mnt:[4026532700] /run/mntns/pin rw - nsfs nsfs rw",
    "25 1 0:22 / /proc rw,nosuid shared:12 master:3 - proc proc rw",
]


@st.composite
def mountinfo_files(draw: st.DrawFn) -> tuple[str, list[tuple[int, str]]]:
    lines, expected = [], []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(OTHER_LINES)))
            continue
        inode, path = draw(st.integers(0, 2**32 - 1)), "/" + draw(_MOUNT_POINT)
        mangled = "".join(_ESCAPED.get(c, c) for c in path)
        optional = draw(st.sampled_from(["", " shared:7", " shared:2 master:1"]))
        lines.append(f"812 29 0:4 net:[{inode}] {mangled} rw{optional} - nsfs nsfs rw")
        expected.append((inode, path))
    return "".join(line + "\n" for line in lines), expected


@FUZZ
@given(mountinfo_files())
def test_generated_mountinfo_gives_exactly_its_namespace_mounts(
    doc: tuple[str, list[tuple[int, str]]],
) -> None:
    text, expected = doc
    assert parse_mountinfo(text) == expected


@FUZZ
@given(mutated(st.just(MOUNTINFO.read_bytes())) | st.binary())
def test_mutated_mountinfo_never_raises(data: bytes) -> None:
    for text in texts(data):
        for inode, path in parse_mountinfo(text):
            assert 0 <= inode < 10**20 and isinstance(path, str)
        parse_ns_link(text)


@pytest.mark.parametrize("link", ["net:[" + "1" * 4400 + "]", "net:[٣]", "net:[1]\n"])
def test_ns_link_int_cannot_read_is_not_a_namespace(link: str) -> None:
    """Found by fuzzing: \\d took "٣" and 4400-digit inodes, and int() raised ValueError
    out of parse_mountinfo."""
    assert parse_ns_link(link) is None
    assert parse_mountinfo(f"1 2 0:4 {link} /run/netns/x rw - nsfs nsfs rw\n") == []


@pytest.mark.parametrize("name", ["\x1f", "a\u2028b", "a\x85b", "a\xa0b", "a\x1cb", "a\u3000b"])
def test_mount_point_with_unicode_line_or_space_separator(name: str) -> None:
    """Found by the generated-mountinfo property ("/\x1f" came out as "/"): splitlines()
    and split() also break at U+001F, U+2028, U+0085, U+00A0, ..., which the kernel does
    not escape in a mount point."""
    text = f"812 29 0:4 net:[7] /run/netns/{name} rw - nsfs nsfs rw\n"
    assert parse_mountinfo(text) == [(7, f"/run/netns/{name}")]
