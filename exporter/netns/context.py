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
from dataclasses import dataclass
from pathlib import Path

from exporter.netns.enter import entered_fd
from exporter.sources import SourceError, decode_text
from exporter.sources.declare import Handle, Opener

_READ = os.O_RDONLY | os.O_CLOEXEC
PREAD_SIZE = 1 << 16  # pread_all's reads
SYSCTL_READ = 256  # the first read of a sysctl: every integer one and most port lists fit


class NamespaceChanged(Exception):
    """The path no longer leads to the namespace discovery saw (its process exited and
    the pid was reused, or the mount was replaced)."""


@dataclass(frozen=True)
class Wanted:
    """What the enabled sources and feeds declared: opened in every namespace."""

    net_files: tuple[str, ...] = ()
    sysctl_files: tuple[str, ...] = ()
    openers: tuple[Opener, ...] = ()


class NetnsContext:
    """Implements sources.declare.PollFiles over descriptors opened in one namespace."""

    def __init__(self, procfs: Path, inode: int | None, ns_fd: int | None) -> None:
        self.procfs = procfs
        self.inode = inode
        self._ns_fd = ns_fd  # kept to reopen a handle inside; None: own namespace
        self._net: dict[str, int] = {}
        self._net_errors: dict[str, str] = {}
        self._sysctls: dict[str, int] | None = None
        self._handles: dict[Opener, Handle] = {}
        self.handle_errors: dict[Opener, str] = {}  # why an optional handle is missing
        # Whether the namespace walks the host's established hash (net.ipv4.
        # tcp_ehash_entries < 0 since Linux 6.1, net/ipv4/sysctl_net_ipv4.c
        # proc_tcp_ehash_entries; before 6.1 every namespace does).
        self.shares_host_hash = True

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls, procfs: Path, path: str | None, inode: int | None, wanted: Wanted
    ) -> NetnsContext:
        """Open the namespace at `path` (None: the calling thread's own) and check it is
        namespace `inode` (None: unchecked, for recorded trees)."""
        if path is None:
            context = cls(procfs, inode, None)
            context._open_here(wanted)
            return context
        ns_fd = os.open(path, _READ)
        try:
            if inode is not None and os.fstat(ns_fd).st_ino != inode:
                raise NamespaceChanged(f"{path} is no longer namespace {inode}")
            context = cls(procfs, inode, ns_fd)
            with entered_fd(ns_fd):
                context._open_here(wanted)
        except BaseException:
            os.close(ns_fd)
            raise
        return context

    def _open_here(self, wanted: Wanted) -> None:
        if self.inode is not None:
            here = os.stat(self.procfs / "thread-self" / "ns" / "net").st_ino
            if here != self.inode:
                raise NamespaceChanged(f"entered namespace {here}, expected {self.inode}")
        try:
            net = self.procfs / "thread-self" / "net"
            for name in wanted.net_files:
                try:
                    self._net[name] = os.open(net / name, _READ)
                except OSError as exc:
                    self._net_errors[name] = f"cannot open {net / name}: {exc.strerror}"
            self._sysctls = self._open_sysctls(wanted.sysctl_files)
            self.shares_host_hash = self._read_shares_host_hash()
            for opener in wanted.openers:
                try:
                    self._handles[opener] = opener.open(self.procfs)
                except OSError as exc:
                    if opener.required:
                        raise
                    # A kernel or policy that refuses it leaves the namespace without
                    # it (the reason is kept), never without its poll.
                    self.handle_errors[opener] = exc.strerror or str(exc)
        except BaseException:
            self.close()
            raise

    def _open_sysctls(self, names: tuple[str, ...]) -> dict[str, int] | None:
        base = self.procfs / "sys" / "net" / "ipv4"
        if not base.is_dir():
            return None
        fds: dict[str, int] = {}
        for name in names:
            try:
                fds[name] = os.open(base / name, _READ)
            except FileNotFoundError:
                continue  # the kernel has no such sysctl: absent, not 0
        return fds

    def _read_shares_host_hash(self) -> bool:
        try:
            with open(self.procfs / "sys" / "net" / "ipv4" / "tcp_ehash_entries", "rb") as f:
                return int(f.read().strip() or b"-1") < 0
        except (OSError, ValueError):
            return True

    def reopen(self, opener: Opener) -> None:
        """A fresh handle, e.g. after a failed dump left a socket's stream out of step."""
        old = self._handles.pop(opener, None)
        if old is not None:
            old.close()
        if self._ns_fd is None:
            self._handles[opener] = opener.open(self.procfs)
        else:
            with entered_fd(self._ns_fd):
                self._handles[opener] = opener.open(self.procfs)

    def close(self) -> None:
        for fd in [*self._net.values(), *(self._sysctls or {}).values()]:
            os.close(fd)
        self._net.clear()
        self._sysctls = None
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None

    # -- sources.declare.PollFiles -------------------------------------------------------

    def has_net(self, name: str) -> bool:
        return name in self._net

    def read_net(self, name: str) -> str:
        fd = self._net.get(name)
        if fd is None:
            raise SourceError(self._net_errors.get(name, f"no {name} file"))
        return pread_all(fd, f"/proc/thread-self/net/{name}")

    def read_sysctl(self, name: str) -> str | None:
        sysctls = self._sysctls
        fd = sysctls.get(name) if sysctls is not None else None
        if fd is None:
            return None
        # A small read first: the kernel allocates and zeroes a buffer of the size asked
        # for each sysctl read (proc_sys_call_handler), 64 KiB costing 2.5 us more than
        # the value. The handlers print the whole value at offset 0 when it fits, so a
        # short read is the value a large one returns; a full one is read again, whole.
        try:
            raw = os.pread(fd, SYSCTL_READ, 0)
        except OSError as exc:
            raise SourceError(
                f"cannot read /proc/sys/net/ipv4/{name}: {exc.strerror or exc}"
            ) from exc
        if len(raw) < SYSCTL_READ and raw.isascii():
            return raw.decode("ascii")
        return pread_all(fd, f"/proc/sys/net/ipv4/{name}")

    def has_sysctls(self) -> bool:
        return self._sysctls is not None

    def has_handle(self, opener: Opener) -> bool:
        return opener in self._handles

    def missing(self, opener: Opener) -> str:
        if opener in self._handles:
            return ""
        return self.handle_errors.get(opener, "not opened")

    def handle(self, opener: Opener) -> Handle:
        found = self._handles.get(opener)
        if found is None:
            reason = self.handle_errors.get(opener, "not opened")
            raise SourceError(f"no {opener.name} for this namespace: {reason}")
        return found


def pread_all(fd: int, where: str) -> str:
    """The whole file from offset 0. A short read is the end: seq_file reads fill the
    buffer until the last record (fs/seq_file.c, seq_read_iter), sysctl handlers return
    the whole value at once."""
    size = PREAD_SIZE
    try:
        chunk = os.pread(fd, size, 0)
        if len(chunk) < size:  # nearly always: the whole file in one read
            return decode_text(chunk, where)
        chunks = [chunk]
        offset = size
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
