"""Whether `--netns=all` (or a list of names) can see and enter the node's namespaces, so
that an exporter missing a privilege says so instead of quietly polling only itself.

What the kernel checks:
- Finding a namespace through a process: readlink and open of /proc/<pid>/ns/net go
  through proc_ns_get_link (fs/proc/namespaces.c), which calls ptrace_may_access(task,
  PTRACE_MODE_READ_FSCREDS) and fails with EACCES. For a process of another user, or one
  whose permitted capabilities are not a subset of the caller's effective ones (any
  root process with more capabilities than the exporter), that needs CAP_SYS_PTRACE
  (__ptrace_may_access in kernel/ptrace.c, cap_ptrace_access_check in
  security/commoncap.c); an LSM (AppArmor's runtime-default profiles) may refuse it even
  then.
- Entering one: setns(2) (kernel/nsproxy.c) calls ns->ops->install, netns_install in
  net/core/net_namespace.c, which needs CAP_SYS_ADMIN in the user namespace owning the
  target and in the caller's own, else EPERM (a seccomp filter also answers EPERM).

The capability bits are those of CapEff in /proc/self/status (CAP_SYS_PTRACE 19,
CAP_SYS_ADMIN 21, include/uapi/linux/capability.h), read once: they do not change while
the process runs. The evidence is re-judged on every poll from what the poll itself met:
links discovery was refused, whether it could list --path.procfs at all, and whether
setns was refused (sticky until a namespace is entered again).

Reasons (a bounded set; each is one series of tcptw_netns_discovery_limited):
- no_cap_sys_ptrace: no CAP_SYS_PTRACE and links were refused: other processes'
  namespaces are not found.
- no_cap_sys_admin: no CAP_SYS_ADMIN, or setns refused (no CAP_SYS_ADMIN in the target's
  user namespace, or seccomp): namespaces are found but cannot be entered.
- ns_link_denied: links refused although CAP_SYS_PTRACE is held, and the host's namespace
  is not found (an LSM such as AppArmor, or a user namespace). A few refusals while the
  host's namespace is found are not a limit: some kernels refuse pid 1 even to root.
- proc_unreadable: --path.procfs cannot be listed: no process is seen at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

log = structlog.get_logger("timewait_exporter.poller")

CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21

# reason → how the warning names it
REASONS: dict[str, str] = {
    "no_cap_sys_ptrace": "no CAP_SYS_PTRACE",
    "no_cap_sys_admin": "no CAP_SYS_ADMIN",
    "ns_link_denied": "/proc/<pid>/ns/net refused despite CAP_SYS_PTRACE (AppArmor?)",
    "proc_unreadable": "--path.procfs cannot be listed",
}
# Reasons after which discovery sees (almost) only the exporter's own namespace.
_UNSEEN = frozenset({"no_cap_sys_ptrace", "ns_link_denied", "proc_unreadable"})


def effective_capabilities(status: str = "/proc/self/status") -> int | None:
    """CapEff of the process as a bit mask; None when it cannot be read."""
    try:
        with open(status) as file:
            for line in file:
                if line.startswith("CapEff:"):
                    return int(line.split(":", 1)[1].strip(), 16)
    except (OSError, ValueError):
        return None
    return None


@dataclass(frozen=True, slots=True)
class Evidence:
    """What one discovery met."""

    listed: bool = True  # --path.procfs could be listed
    links_refused: int = 0  # processes whose /proc/<pid>/ns/net was refused
    host_found: bool = True  # the initial (host's) namespace is among those found


def judge(capabilities: int | None, evidence: Evidence, setns_refused: bool) -> frozenset[str]:
    """The reasons that hold (empty: not limited). Unknown capabilities (None) count as
    held: only the evidence speaks then."""

    def has(bit: int) -> bool:
        return capabilities is None or bool(capabilities >> bit & 1)

    reasons: set[str] = set()
    if not evidence.listed:
        reasons.add("proc_unreadable")
    if evidence.links_refused:
        if not has(CAP_SYS_PTRACE):
            reasons.add("no_cap_sys_ptrace")
        elif not evidence.host_found:
            reasons.add("ns_link_denied")
    if not has(CAP_SYS_ADMIN) or setns_refused:
        reasons.add("no_cap_sys_admin")
    return frozenset(reasons)


def describe(reasons: frozenset[str], polled: int) -> str:
    """The log line's event: what is missing and what it costs (`polled`: namespaces
    open, the exporter's own included)."""
    causes = ", ".join(REASONS[r] for r in sorted(reasons))
    if reasons & _UNSEEN and polled <= 1:
        lost = "only the exporter's own namespace is polled"
    else:
        parts = []
        if reasons & _UNSEEN:
            parts.append("the namespaces of processes it may not read are not found")
        if "no_cap_sys_admin" in reasons:
            parts.append("namespaces are found but cannot be entered")
        lost = "; ".join(parts)
    return f"namespace discovery is limited ({causes}): {lost}"


class DiscoveryLimits:
    """The judgement of every poll, logged once per change."""

    def __init__(self) -> None:
        self.capabilities = effective_capabilities()
        self.evidence = Evidence()
        self.setns_refused = False  # the last setns into another namespace was refused
        self.reasons: frozenset[str] = frozenset()

    def conclude(self, polled: int) -> tuple[tuple[str, bool], ...]:
        """Every reason with whether it holds now (the metric's series); logs a change.
        `polled`: the namespaces open after the poll, the exporter's own included."""
        reasons = judge(self.capabilities, self.evidence, self.setns_refused)
        if reasons != self.reasons:
            if reasons:
                log.warning(
                    describe(reasons, polled),
                    reasons=sorted(reasons),
                    capabilities=f"{self.capabilities:x}" if self.capabilities is not None else "?",
                    links_refused=self.evidence.links_refused,
                    namespaces_polled=polled,
                    metric="tcptw_netns_discovery_limited",
                )
            else:
                log.info("namespace discovery is no longer limited")
        self.reasons = reasons
        return tuple((reason, reason in reasons) for reason in REASONS)
