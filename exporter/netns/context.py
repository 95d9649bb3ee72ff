"""The descriptors of one network namespace, opened inside it once and kept.

A NETLINK_SOCK_DIAG socket, /proc/thread-self/net/* files and /proc/sys/net/* files all
answer for the namespace they were opened in, from any thread, for as long as they are
open: each holds a reference to it (sk_alloc in net/core/sock.c; seq_open_net in
fs/proc/proc_net.c; the sysctl set of the opener's namespace in net/sysctl_net.c). So the
poller enters a namespace when it is first found, opens everything, leaves, and reads
these descriptors on every poll without setns. Paths go through /proc/thread-self, never
/proc/self or /proc/net: those follow the main thread's namespace, not the caller's.

Closing the context releases the namespace: the kernel frees it once nothing else pins it.
"""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

from exporter.events.table import EventSocket
from exporter.netns.enter import entered_fd
from exporter.sources import SourceError, decode_text
from exporter.sources.sockdiag.dump import DiagSocket
from exporter.sources.sysctl import SYSCTL_FILES

NET_FILES = ("netstat", "sockstat", "sockstat6")
_READ = os.O_RDONLY | os.O_CLOEXEC


class NamespaceChanged(Exception):
    """The path no longer leads to the namespace discovery saw (its process exited and
    the pid was reused, or the mount was replaced)."""


class NetnsContext:
    """Implements sources.NetnsFiles over descriptors opened in one namespace."""

    def __init__(self, procfs: Path, inode: int | None, ns_fd: int | None) -> None:
        self.procfs = procfs
        self.inode = inode
        self._ns_fd = ns_fd  # kept to open a fresh diag socket inside; None: own namespace
        self._net: dict[str, int] = {}
        self._net_errors: dict[str, str] = {}
        self._sysctls: dict[str, int] | None = None
        self.diag: DiagSocket | None = None
        # The socket-destroy listener (exporter/events/table.py) and this namespace's
        # /proc/net/netlink (its Drops column counts lost events); error: why not.
        self.events: EventSocket | None = None
        self.events_error = ""
        self.netlink_fd: int | None = None

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls, procfs: Path, path: str | None, inode: int | None, diag: bool, events: bool = False
    ) -> NetnsContext:
        """Open the namespace at `path` (None: the calling thread's own) and check it is
        namespace `inode` (None: unchecked, for recorded trees)."""
        if path is None:
            context = cls(procfs, inode, None)
            context._open_here(diag, events)
            return context
        ns_fd = os.open(path, _READ)
        try:
            if inode is not None and os.fstat(ns_fd).st_ino != inode:
                raise NamespaceChanged(f"{path} is no longer namespace {inode}")
            context = cls(procfs, inode, ns_fd)
            with entered_fd(ns_fd):
                context._open_here(diag, events)
        except BaseException:
            os.close(ns_fd)
            raise
        return context

    def _open_here(self, diag: bool, events: bool = False) -> None:
        if self.inode is not None:
            here = os.stat(self.procfs / "thread-self" / "ns" / "net").st_ino
            if here != self.inode:
                raise NamespaceChanged(f"entered namespace {here}, expected {self.inode}")
        try:
            net = self.procfs / "thread-self" / "net"
            for name in NET_FILES:
                try:
                    self._net[name] = os.open(net / name, _READ)
                except OSError as exc:
                    self._net_errors[name] = f"cannot open {net / name}: {exc.strerror}"
            self._sysctls = self._open_sysctls()
            if diag:
                self.diag = DiagSocket()
            if events:
                self._open_events(net)
        except BaseException:
            self.close()
            raise

    def _open_events(self, net: Path) -> None:
        """The destroy-event listener; a kernel or policy that refuses it leaves the
        namespace without events (the reason is kept), never without its poll."""
        try:
            self.events = EventSocket()
        except OSError as exc:
            self.events_error = f"cannot join the sock_diag destroy groups: {exc.strerror or exc}"
            return
        try:
            self.netlink_fd = os.open(net / "netlink", _READ)
        except OSError:
            self.netlink_fd = None  # lost events then count one per ENOBUFS

    def _open_sysctls(self) -> dict[str, int] | None:
        base = self.procfs / "sys" / "net" / "ipv4"
        if not base.is_dir():
            return None
        fds: dict[str, int] = {}
        for name in SYSCTL_FILES:
            try:
                fds[name] = os.open(base / name, _READ)
            except FileNotFoundError:
                continue  # the kernel has no such sysctl: absent, not 0
        return fds

    def reopen_diag(self) -> None:
        """A fresh diag socket after a failed dump left the old one's stream out of step."""
        if self.diag is not None:
            self.diag.close()
            self.diag = None
        if self._ns_fd is None:
            self.diag = DiagSocket()
        else:
            with entered_fd(self._ns_fd):
                self.diag = DiagSocket()

    def close(self) -> None:
        for fd in [*self._net.values(), *(self._sysctls or {}).values()]:
            os.close(fd)
        self._net.clear()
        self._sysctls = None
        if self.diag is not None:
            self.diag.close()
            self.diag = None
        if self.events is not None:
            self.events.close()
            self.events = None
        if self.netlink_fd is not None:
            os.close(self.netlink_fd)
            self.netlink_fd = None
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None

    # -- sources.NetnsFiles --------------------------------------------------------------

    def has_net(self, name: str) -> bool:
        return name in self._net

    def read_net(self, name: str) -> str:
        fd = self._net.get(name)
        if fd is None:
            raise SourceError(self._net_errors.get(name, f"no {name} file"))
        return _pread_all(fd, f"/proc/thread-self/net/{name}")

    def read_sysctl(self, name: str) -> str | None:
        fd = (self._sysctls or {}).get(name)
        if fd is None:
            return None
        return _pread_all(fd, f"/proc/sys/net/ipv4/{name}")

    def has_sysctls(self) -> bool:
        return self._sysctls is not None


def _pread_all(fd: int, where: str) -> str:
    """The whole file from offset 0. A short read is the end: seq_file reads fill the
    buffer until the last record (fs/seq_file.c, seq_read_iter), sysctl handlers return
    the whole value at once."""
    chunks: list[bytes] = []
    offset = 0
    size = 1 << 16
    try:
        while True:
            chunk = os.pread(fd, size, offset)
            chunks.append(chunk)
            offset += len(chunk)
            if len(chunk) < size:
                break
    except OSError as exc:
        raise SourceError(f"cannot read {where}: {exc.strerror or exc}") from exc
    return decode_text(b"".join(chunks), where)


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard one: each namespace keeps about 15
    descriptors open. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def is_gone(exc: OSError) -> bool:
    """The namespace's process or mount disappeared between discovery and opening."""
    return exc.errno in (errno.ENOENT, errno.ESRCH)
