"""Which network namespace: labels, and entering one from a worker thread.

setns(2) changes the namespace of the calling thread only, so a worker thread can enter
a namespace, open its netlink socket and /proc/thread-self/net files there, and leave.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyroute2 import netns as pyroute2_netns

# Since Linux 6.x the initial namespaces have fixed inode numbers (include/linux/proc_ns.h,
# PROC_NET_INIT_INO); older kernels are recognised through /proc/1/ns/net.
PROC_NET_INIT_INO = 0xEFFFFFF9


def namespace_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def label_for_inode(inode: int, run_netns: Path, procfs: Path) -> str:
    """The `netns` label: the name under /run/netns, "host" for the initial namespace,
    otherwise "ino-<inode>"."""
    try:
        names = sorted(os.listdir(run_netns))
    except OSError:
        names = []
    for name in names:
        if namespace_inode(str(run_netns / name)) == inode:
            return name
    if inode in (PROC_NET_INIT_INO, namespace_inode(str(procfs / "1" / "ns" / "net"))):
        return "host"
    return f"ino-{inode}"


def own_inode() -> int:
    inode = namespace_inode("/proc/thread-self/ns/net")
    if inode is None:
        raise OSError("cannot stat /proc/thread-self/ns/net")
    return inode


def setns(fd: int) -> None:
    # flags=0: never create a namespace; an fd argument is used as is (not closed).
    pyroute2_netns.setns(fd, flags=0)


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body in the namespace at `path` (a /run/netns file or /proc/PID/ns/net),
    then return the calling thread to the namespace it was in."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)
