from __future__ import annotations

from exporter.netns.enter import entered, namespace_inode, own_inode
from tests.kernel import Netns


def test_entered_switches_and_returns(netns: Netns) -> None:
    home = own_inode()
    with entered(netns.path):
        assert own_inode() == namespace_inode(netns.path) != home
    assert own_inode() == home
