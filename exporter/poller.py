"""One poll: run every enabled source for each namespace and build one immutable Snapshot.

A poll runs in a worker thread, never on the event loop. Sources fail alone: an exception
becomes a failed SourceResult and a log line on each change of state (ok to failed,
failed to ok, or a new error)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from exporter.capacity import PortPolicy
from exporter.config import Config
from exporter.netns import label_for_inode, own_inode
from exporter.snapshot import Snapshot, SourceResult
from exporter.socket_stats import collect_socket_stats
from exporter.sources import PAGE_SIZE, NetnsView, SourceError
from exporter.sources.netstat import read_netstat, select_fields
from exporter.sources.slab import read_slab
from exporter.sources.sockstat import read_sockstat
from exporter.sources.sysctl import Sysctls, read_sysctls

log = structlog.get_logger("timewait_exporter.poller")


class Poller:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._last_state: dict[tuple[str, str], str] = {}  # "" when ok, else the error

    def own_namespace(self) -> NetnsView:
        cfg = self.config
        label = cfg.netns_name or label_for_inode(own_inode(), cfg.run_netns, cfg.procfs)
        return NetnsView(
            label=label, proc_net=cfg.procfs / "net", proc_sys_net=cfg.procfs / "sys" / "net"
        )

    def poll_namespace(self, netns: NetnsView) -> list[SourceResult]:
        """The sysctls are read first: the sock_diag pass needs the port range and
        tcp_tw_reuse of the same namespace to sort sockets into buckets."""
        cfg = self.config
        results: list[SourceResult] = []
        sysctls: Sysctls | None = None
        if "sysctl" in cfg.collectors:
            result = self._run(netns.label, "sysctl", lambda: read_sysctls(netns))
            results.append(result)
            sysctls = result.data
        elif "sockdiag" in cfg.collectors:
            try:
                sysctls = read_sysctls(netns)
            except SourceError as exc:
                sysctls = None
                self._note(netns.label, "sysctl", f"needed for buckets: {exc}")
            else:
                self._note(netns.label, "sysctl", "")
        policy = port_policy(sysctls)
        sources: dict[str, Callable[[], Any]] = {
            "sockdiag": lambda: collect_socket_stats(policy, cfg.buckets),
            "netstat": lambda: select_fields(read_netstat(netns), cfg.netstat_fields),
            "sockstat": lambda: read_sockstat(netns),
        }
        for name, fn in sources.items():
            if name in cfg.collectors:
                results.append(self._run(netns.label, name, fn))
        return results

    def poll_once(self) -> Snapshot:
        started_at = time.time()
        start = time.perf_counter()
        results = self.poll_namespace(self.own_namespace())
        if "slab" in self.config.collectors:
            cfg = self.config
            results.append(
                self._run("", "slab", lambda: tuple(read_slab(cfg.procfs, cfg.sysfs, PAGE_SIZE)))
            )
        return Snapshot(
            results=tuple(results),
            started_at=started_at,
            duration_seconds=time.perf_counter() - start,
        )

    def _run(self, netns: str, source: str, fn: Callable[[], Any]) -> SourceResult:
        start = time.perf_counter()
        try:
            data = fn()
        except Exception as exc:  # a failing source must never stop the others
            error = f"{type(exc).__name__}: {exc}"
            self._note(netns, source, error)
            return SourceResult(source, netns, False, time.perf_counter() - start, None, error)
        self._note(netns, source, "")
        return SourceResult(source, netns, True, time.perf_counter() - start, data)

    def _note(self, netns: str, source: str, error: str) -> None:
        key = (netns, source)
        previous = self._last_state.get(key)
        self._last_state[key] = error
        if previous == error:
            return
        if error:
            log.error("source failed", netns=netns, source=source, error=error)
        elif previous:
            log.info("source recovered", netns=netns, source=source)


def port_policy(sysctls: Sysctls | None) -> PortPolicy | None:
    """What connect() obeys in this namespace; None without ip_local_port_range."""
    if sysctls is None or sysctls.port_range is None:
        return None
    return PortPolicy(
        port_range=sysctls.port_range,
        reserved=sysctls.reserved_ports or (),
        tw_reuse=int(sysctls.values.get("tcp_tw_reuse", 0)),
        timestamps=int(sysctls.values.get("tcp_timestamps", 1)),
    )
