"""Every network namespace on the node, found without creating or entering any.

Two places name a namespace (as an nsfs inode):
- /proc/<pid>/ns/net of every process (readlink gives "net:[<inode>]"; another user's
  process needs CAP_SYS_PTRACE, which is a ptrace-mode access check);
- nsfs bind mounts, which keep a namespace alive with no process in it: `ip netns add`
  (/run/netns/<name>), containerd's and CRI-O's CNI pins (/var/run/netns/cni-<id>,
  /var/run/netns/<uuid>), Docker's /var/run/docker/netns/<id>. They are listed in pid 1's
  mountinfo with fstype nsfs and root "net:[<inode>]" (fs/proc_namespace.c).

The poller diffs one discovery against the last: a namespace found for the first time is
opened, one no longer found is released.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

# An inode number: at most 20 ASCII digits (int() refuses over 4300 and \d takes "٣").
_NS_LINK = re.compile(r"net:\[([0-9]{1,20})\]")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class FoundNamespace:
    inode: int
    pids: tuple[int, ...]  # processes in it, ascending
    mounts: tuple[str, ...]  # nsfs bind mounts of it, as paths in pid 1's mount namespace

    @property
    def mount_name(self) -> str | None:
        """The bind mount's file name (the `ip netns` name), first in sort order."""
        names = sorted(os.path.basename(m) for m in self.mounts)
        return names[0] if names else None


def parse_ns_link(target: str) -> int | None:
    match = _NS_LINK.fullmatch(target)
    return int(match.group(1)) if match else None


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (fs/proc_namespace.c).
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[tuple[int, str]]:
    """(inode, mount point) of every nsfs mount of a network namespace.

    A line: id parent major:minor root mountpoint options [optional...] - fstype source
    superoptions (Documentation/filesystems/proc.rst, /proc/<pid>/mountinfo)."""
    found: list[tuple[int, str]] = []
    # Only "\n" ends a line and only " " separates fields: a mount point may hold any other
    # character unescaped, U+2028 and U+00A0 included (str.splitlines and str.split break
    # at those).
    for line in text.split("\n"):
        fields = line.split(" ")
        try:
            dash = fields.index("-")
        except ValueError:
            continue
        if dash < 6 or len(fields) <= dash + 1 or fields[dash + 1] != "nsfs":
            continue
        inode = parse_ns_link(_unescape(fields[3]))
        if inode is not None:
            found.append((inode, _unescape(fields[4])))
    return found


@dataclass
class Refusals:
    """What a scan could not read (judged in privileges.py)."""

    listed: bool = True  # procfs itself could be listed
    links: int = 0  # processes whose link was refused (EACCES, EPERM: ptrace_may_access)


def scan_processes(procfs: Path, refusals: Refusals | None = None) -> dict[int, list[int]]:
    """Namespace inode → pids in it (ascending). A process that exits during the scan,
    or whose link this exporter may not read, is passed over (and counted in
    `refusals`)."""
    by_inode: dict[int, list[int]] = {}
    try:
        entries = os.listdir(procfs)
    except OSError:
        if refusals is not None:
            refusals.listed = False
        return by_inode
    pids = sorted(int(name) for name in entries if name.isascii() and name.isdigit())
    for pid in pids:
        try:
            target = os.readlink(procfs / str(pid) / "ns" / "net")
        except OSError as exc:
            if refusals is not None and exc.errno in (errno.EACCES, errno.EPERM):
                refusals.links += 1
            continue
        inode = parse_ns_link(target)
        if inode is not None:
            by_inode.setdefault(inode, []).append(pid)
    return by_inode


def read_mounts(procfs: Path) -> list[tuple[int, str]]:
    """nsfs mounts from pid 1's mountinfo (the host's mount namespace when procfs is the
    host's), and from the exporter's own when pid 1's cannot be read."""
    mounts: list[tuple[int, str]] = []
    for owner in ("1", "self"):
        try:
            text = (procfs / owner / "mountinfo").read_text(errors="replace")
        except OSError:
            continue
        mounts += parse_mountinfo(text)
    return mounts


def discover(procfs: Path, refusals: Refusals | None = None) -> dict[int, FoundNamespace]:
    processes = scan_processes(procfs, refusals)
    mounts: dict[int, set[str]] = {}
    for inode, path in read_mounts(procfs):
        mounts.setdefault(inode, set()).add(path)
    return {
        inode: FoundNamespace(
            inode, tuple(processes.get(inode, ())), tuple(sorted(mounts.get(inode, ())))
        )
        for inode in sorted(processes.keys() | mounts.keys())
    }
