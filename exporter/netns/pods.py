"""Which Kubernetes pod a network namespace belongs to, without any API call.

The pod UID is in the cgroup path of its processes, in every layout kubelet makes:
- systemd driver: kubepods[-<qos>].slice/kubepods[-<qos>]-pod<uid with _ for ->.slice/
  cri-containerd-<id>.scope (or crio-<id>.scope, docker-<id>.scope);
- cgroupfs driver: kubepods[/<qos>]/pod<uid>/<container id>;
in cgroup v1 (one line per hierarchy) and v2 ("0::<path>"), and relative to a private
cgroup namespace ("/../../kubepods-..."). Static pods have a 32-hex-digit UID.

The names come from kubelet's log directory: /var/log/pods/<namespace>_<pod>_<uid>/
(pkg/kubelet/kuberuntime/helpers.go, BuildPodLogsDirectory). Namespace and pod names are
DNS names, which never hold "_".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_POD = re.compile(rf"(?:^|[/-])pod({_UUID}|[0-9a-f]{{32}})(?:\.slice)?(?=/|$)")


@dataclass(frozen=True, slots=True)
class PodName:
    namespace: str
    name: str


def pod_uid_from_cgroup(text: str) -> str | None:
    """The pod UID in a /proc/<pid>/cgroup file, or None outside any pod."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        match = _POD.search(path)
        if match:
            return match.group(1).replace("_", "-")
    return None


def read_pod_uid(procfs: Path, pid: int) -> str | None:
    try:
        text = (procfs / str(pid) / "cgroup").read_text(errors="replace")
    except OSError:
        return None
    return pod_uid_from_cgroup(text)


def parse_pod_log_dir(name: str) -> tuple[str, PodName] | None:
    parts = name.split("_")
    if len(parts) != 3 or not all(parts):
        return None
    namespace, pod, uid = parts
    return uid, PodName(namespace, pod)


def read_pod_names(pod_logs: Path) -> dict[str, PodName]:
    """Pod UID → name, from kubelet's log directories; empty when there are none."""
    try:
        entries = os.listdir(pod_logs)
    except OSError:
        return {}
    names: dict[str, PodName] = {}
    for entry in entries:
        parsed = parse_pod_log_dir(entry)
        if parsed is not None:
            names[parsed[0]] = parsed[1]
    return names
