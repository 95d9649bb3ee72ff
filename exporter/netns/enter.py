"""Entering a network namespace from a worker thread.

setns(2) changes the namespace of the calling thread only, so a worker thread can enter
a namespace, open its netlink socket and /proc/thread-self/net files there, and leave.
setns needs CAP_SYS_ADMIN (in the user namespace owning the target), even to re-enter the
namespace the thread is already in.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import netns as pyroute2_netns

# Since Linux 3.8 the initial namespaces have fixed inode numbers (include/linux/proc_ns.h,
# PROC_NET_INIT_INO); /proc/1/ns/net is checked as well (discovery.py).
PROC_NET_INIT_INO = 0xEFFFFFF9


def namespace_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def own_inode() -> int:
    inode = namespace_inode("/proc/thread-self/ns/net")
    if inode is None:
        raise OSError("cannot stat /proc/thread-self/ns/net")
    return inode


class SetnsRefused(PermissionError):
    """setns(2) answered EPERM: no CAP_SYS_ADMIN in the target's user namespace, or a
    seccomp filter (netns_install, net/core/net_namespace.c)."""


def setns(fd: int) -> None:
    # flags=0 with an fd: pyroute2 passes it to setns(2) as is; it never creates or
    # mounts a namespace on this path (it would for a missing *name*).
    try:
        pyroute2_netns.setns(fd, flags=0)
    except PermissionError as exc:
        code = exc.errno or errno.EPERM
        raise SetnsRefused(code, f"{os.strerror(code)} (setns needs CAP_SYS_ADMIN)") from None


@contextmanager
def entered_fd(fd: int) -> Iterator[None]:
    """Run the body in the namespace `fd` refers to, then return the calling thread to
    the namespace it was in."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(home)
    finally:
        os.close(home)


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body in the namespace at `path` (a /run/netns file or /proc/PID/ns/net)."""
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with entered_fd(target):
            yield
    finally:
        os.close(target)
