from __future__ import annotations

from pathlib import Path

from exporter.netns import PROC_NET_INIT_INO, entered, label_for_inode, namespace_inode, own_inode
from tests.kernel import Netns


def test_named_namespace_is_labelled_by_its_name(netns: Netns) -> None:
    inode = namespace_inode(netns.path)
    assert inode is not None
    assert label_for_inode(inode, Path("/run/netns"), Path("/proc")) == netns.name


def test_unnamed_namespace_is_labelled_by_inode(netns: Netns, tmp_path: Path) -> None:
    inode = namespace_inode(netns.path)
    assert inode is not None
    assert label_for_inode(inode, tmp_path, tmp_path) == f"ino-{inode}"


def test_initial_namespace_is_host() -> None:
    assert label_for_inode(PROC_NET_INIT_INO, Path("/nonexistent"), Path("/nonexistent")) == "host"


def test_entered_switches_and_returns(netns: Netns) -> None:
    home = own_inode()
    with entered(netns.path):
        assert own_inode() == namespace_inode(netns.path) != home
    assert own_inode() == home
