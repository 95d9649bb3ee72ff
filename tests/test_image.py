"""The container image, built from the shipped Dockerfile and run under the DaemonSet's own
security settings (read from deploy/kubernetes/base/daemonset.yaml, not copied).

No Docker and no registry: tests/image.py builds a stand-in for `debian:bookworm-slim`
from the same Debian packages with mmdebstrap (cached between runs), imports it into a
throwaway podman store, and builds the Dockerfile unmodified. The container then runs
with the manifest's capabilities, no-new-privileges, read-only root, memory and CPU
limits, user, volumes (the host's /proc read-only at /host/proc; /tmp a small tmpfs) and
args, in a private PID namespace and its own network namespace, and must see two test
namespaces exactly as `ss` does inside them. The image has no shell: the test reads files
inside it with its python3. Then it runs again without SYS_PTRACE, without SYS_ADMIN and
without either: each logs one warning naming what is missing, sets
tcptw_netns_discovery_limited{reason} and answers /readyz with 503.

Needs root, podman, runc, mmdebstrap, iproute2 and network access to the Debian mirror and
pip's index. Skipped with the reason otherwise; under CI=true it fails instead.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import subprocess
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import image
from tests.conftest import skip_or_fail
from tests.exposition import samples, series
from tests.kernel import (
    Netns,
    kernel_tests_unavailable,
    new_netns,
    server_closes_first,
    ss_states,
    time_wait_pairs,
    wait_until,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parent.parent
DAEMONSET = REPO / "deploy" / "kubernetes" / "base" / "daemonset.yaml"
TAG = "localhost/timewait-exporter:test"
PORT = 9961
# `podman image inspect` size (uncompressed) at most; measured 135 MB (README).
SIZE_BUDGET = 150_000_000
# Added to the manifest's args: a poll a second, so the test does not wait 15 s a poll.
EXTRA_ARGS = ("--poll.interval=1",)
OUT = "tcptw_outbound_connections_closed_total"
IN = "tcptw_inbound_connections_closed_total"
LOST = "tcptw_socket_events_lost_total"
# Capability numbers (linux/capability.h) of those a manifest may add.
CAPABILITIES = {"DAC_READ_SEARCH": 2, "NET_ADMIN": 12, "SYS_PTRACE": 19, "SYS_ADMIN": 21}
# (outbound TIME-WAIT, inbound TIME-WAIT) made in each test namespace.
PLAN = ((7, 3), (4, 2))
# Capabilities taken from the manifest's `add` → the reasons tcptw_netns_discovery_limited
# must give (exporter/netns/privileges.py).
LIMITED = {
    "no-sys-ptrace": (("SYS_PTRACE",), {"no_cap_sys_ptrace"}),
    "no-sys-admin": (("SYS_ADMIN",), {"no_cap_sys_admin"}),
    "no-capabilities": (("SYS_ADMIN", "SYS_PTRACE"), {"no_cap_sys_ptrace", "no_cap_sys_admin"}),
}
_runs = itertools.count()


def _unavailable() -> str | None:
    reason = kernel_tests_unavailable()
    if reason:
        return reason
    missing = image.missing_tools()
    if missing:
        return f"the image test needs {', '.join(missing)} (scripts/test installs them)"
    if not image.HOST_CA.exists():
        return f"no CA bundle at {image.HOST_CA}"
    return None


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[image.Podman]:
    reason = _unavailable()
    if reason is not None:
        skip_or_fail(f"image test: {reason}")
    store = image.Podman(tmp_path_factory.mktemp("podman"))
    try:
        yield store
    finally:
        store.destroy()


@pytest.fixture(scope="module")
def built(podman: image.Podman) -> image.Built:
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return image.build(podman, TAG, revision or "unknown")


# --- the manifest's pod, as podman arguments ------------------------------------------------


def _daemonset() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    ds = yaml.safe_load(DAEMONSET.read_text())
    template = ds["spec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    return template, pod, container


def _quantity_bytes(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def _cpus(text: str) -> str:
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


def pod_arguments(scratch: Path) -> tuple[list[str], list[str]]:
    """(podman run options, container args) for the DaemonSet's container. Every setting of
    its securityContext, resources, volumes and pod spec that changes how the process
    runs is translated; an unknown one fails the test rather than being ignored."""
    template, pod, container = _daemonset()
    options: list[str] = []
    context = dict(container["securityContext"])
    handled = {
        "runAsUser",
        "runAsGroup",
        "runAsNonRoot",
        "privileged",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "capabilities",
        "seccompProfile",
        "appArmorProfile",
    }
    assert set(context) <= handled, f"untranslated securityContext: {set(context) - handled}"
    assert context.get("privileged") is not True
    if "runAsUser" in context:
        options.append(f"--user={context['runAsUser']}:{context.get('runAsGroup', 0)}")
    if context.get("runAsNonRoot"):
        assert context.get("runAsUser", 0) != 0
    caps = context.get("capabilities", {})
    options += [f"--cap-drop={c}" for c in caps.get("drop", [])]
    options += [f"--cap-add={c}" for c in caps.get("add", [])]
    if context.get("allowPrivilegeEscalation") is False:
        options.append("--security-opt=no-new-privileges")
    if context.get("readOnlyRootFilesystem"):
        # podman adds tmpfs on /tmp, /run and /var/tmp to --read-only; Kubernetes does not.
        options += ["--read-only", "--read-only-tmpfs=false"]
    seccomp = context.get("seccompProfile", {}).get("type", "RuntimeDefault")
    assert seccomp in ("RuntimeDefault", "Unconfined")
    if seccomp == "Unconfined":
        options.append("--security-opt=seccomp=unconfined")
    annotations = template["metadata"].get("annotations", {})
    apparmor = annotations.get(
        f"container.apparmor.security.beta.kubernetes.io/{container['name']}"
    )
    if apparmor == "unconfined" or context.get("appArmorProfile", {}).get("type") == "Unconfined":
        options.append("--security-opt=apparmor=unconfined")
    limits = container.get("resources", {}).get("limits", {})
    if "memory" in limits:
        options.append(f"--memory={_quantity_bytes(limits['memory'])}")
    if "cpu" in limits:
        options.append(f"--cpus={_cpus(limits['cpu'])}")
    # Pod level: no hostPID, no hostNetwork (the caller adds the network namespace).
    for key in ("hostPID", "hostNetwork", "hostIPC", "shareProcessNamespace"):
        assert not pod.get(key), f"untranslated pod setting {key}"
    if pod.get("securityContext"):
        raise AssertionError(f"untranslated pod securityContext {pod['securityContext']}")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        mode = "ro" if mount.get("readOnly") else "rw"
        if "hostPath" in volume:
            host = volume["hostPath"]["path"]
            if host == "/var/log/pods" and not Path(host).is_dir():
                # DirectoryOrCreate: kubelet would make it empty; the test does not touch
                # the host's /var/log, it mounts an empty directory of its own.
                host = str(scratch / "pod-logs")
                Path(host).mkdir(exist_ok=True)
            options.append(f"--volume={host}:{mount['mountPath']}:{mode}")
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            assert volume["emptyDir"].get("medium") == "Memory", "only memory emptyDirs"
            tmpfs = f"--tmpfs={mount['mountPath']}:{mode},mode=1777"
            options.append(tmpfs + (f",size={_quantity_bytes(size)}" if size else ""))
        else:
            raise AssertionError(f"untranslated volume {volume}")
    return options, [*container["args"], *EXTRA_ARGS]


# --- the running container ------------------------------------------------------------------


@dataclass
class Pod:
    podman: image.Podman
    name: str
    netns: Netns  # the container's own network namespace (a pod's)
    tests: list[Netns] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # test namespace → netns label

    def get(self, path: str) -> tuple[int, str]:
        with self.netns.inside():
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, response.read().decode()
            finally:
                conn.close()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, body = self.get("/metrics")
        assert status == 200, body
        return samples(body)

    def logs(self) -> str:
        result = self.podman.run("logs", self.name, check=False)
        return result.stdout + result.stderr


def _label(parsed: dict[tuple[str, frozenset[tuple[str, str]]], float], ns: Netns) -> str | None:
    """The netns label the exporter gave a test namespace: its `ip netns` name, or
    ino-<inode> when it found it through the holder process only."""
    inode = f"ino-{ns.inode}"
    for labels in series(parsed, "tcptw_netns_info"):
        label = dict(labels)["netns"]
        if label == ns.name or label.endswith(inode):
            return label
    return None


@pytest.fixture(scope="module")
def pod(
    podman: image.Podman, built: image.Built, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pod]:
    scratch = tmp_path_factory.mktemp("pod")
    options, args = pod_arguments(scratch)
    usage = podman.run("run", "--rm", "--entrypoint", "timewait-exporter", built.tag, "--help")
    if "--metrics.detail" in usage.stdout:
        args.append("--metrics.detail=full")  # each test namespace's figures by name
    with ExitStack() as stack:
        own = stack.enter_context(new_netns("twi-pod"))
        tests = [stack.enter_context(new_netns("twi")) for _ in PLAN]
        for ns in tests:
            stack.enter_context(image.holder(ns.name))
        name = f"twi-{os.getpid()}"
        podman.run(
            "run",
            "--detach",
            "--name",
            name,
            "--health-interval=disable",  # no systemd timer: `podman healthcheck run` only
            f"--network=ns:{own.path}",
            *options,
            built.tag,
            *args,
        )
        running = Pod(podman, name, own, tests)
        stack.callback(podman.run, "rm", "--force", "--time", "0", name, check=False)

        waiting: list[str] = ["no answer"]  # what readiness waits for, last seen

        def ready() -> bool:
            try:
                parsed = running.metrics()
            except (OSError, http.client.HTTPException) as exc:
                waiting[:] = [f"/metrics: {exc}"]
                return False
            for ns in tests:
                label = _label(parsed, ns)
                if label is None:
                    known = sorted(dict(k)["netns"] for k in series(parsed, "tcptw_netns_info"))
                    waiting[:] = [f"{ns.name} (ino-{ns.inode}) not among {known}"]
                    return False
                if not any(dict(labels)["netns"] == label for labels in series(parsed, LOST)):
                    waiting[:] = [f"no {LOST} for {label}: destroy-event listener not up"]
                    return False
                running.labels[ns.name] = label
            status, body = running.get("/readyz")
            waiting[:] = [f"/readyz {status}: {body[:200]}"]
            return status == 200

        try:
            wait_until(ready, timeout=60, what="the exporter sees both test namespaces")
        except AssertionError:
            raise AssertionError(
                f"not ready: {waiting[0]}; container log:\n{running.logs()[-4000:]}"
            ) from None
        yield running


@dataclass(frozen=True)
class Traffic:
    before: dict[tuple[str, frozenset[tuple[str, str]]], float]
    after: dict[tuple[str, frozenset[tuple[str, str]]], float]
    ss: dict[str, dict[tuple[str, str], int]]  # test namespace → (family, state) → count


@pytest.fixture(scope="module")
def traffic(pod: Pod) -> Traffic:
    """Closed connections in both test namespaces (outbound and inbound TIME-WAIT on
    loopback), then the first poll that started after the last one."""
    before = pod.metrics()
    for ns, (outbound, inbound) in zip(pod.tests, PLAN, strict=True):
        listener = ns.listen("127.0.0.1", 8080)
        time_wait_pairs(ns, listener, outbound)
        server_closes_first(ns, listener, inbound)
    done = time.time()
    expected = 2 * sum(outbound + inbound for outbound, inbound in PLAN)  # a close per side

    def settled() -> bool:
        """A poll started after the connections, and it counted every close (the
        destroy events are read by their own thread, so the first such poll may not)."""
        parsed = pod.metrics()
        stamps = series(parsed, "tcptw_last_poll_timestamp_seconds").values()
        labels = set(pod.labels.values())
        closes = sum(
            v - before.get((name, k), 0.0)
            for name in (OUT, IN)
            for k, v in series(parsed, name).items()
            if dict(k)["netns"] in labels
        )
        return bool(stamps) and all(v > done + 0.05 for v in stamps) and closes >= expected

    with contextlib.suppress(AssertionError):  # the tests say what is missing
        wait_until(settled, timeout=20, what="a poll after the connections")
    after = pod.metrics()
    counted = {ns.name: dict(ss_states(["ip", "netns", "exec", ns.name])) for ns in pod.tests}
    return Traffic(before, after, counted)


# --- tests ------------------------------------------------------------------------------------


def test_image_metadata(podman: image.Podman, built: image.Built) -> None:
    inspect = podman.inspect("image", built.tag)
    config: dict[str, Any] = inspect["Config"]  # type: ignore[assignment]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    assert labels["org.opencontainers.image.revision"] == built.build_args["REVISION"]
    assert labels["org.opencontainers.image.source"] == project["urls"]["Source"]
    assert config["Entrypoint"] == ["timewait-exporter"]
    assert config["Cmd"] == ["serve"]
    assert inspect.get("User", "") in ("", "0", "root", "0:0")  # see the Dockerfile's header
    healthcheck: dict[str, Any] = inspect["Healthcheck"]  # type: ignore[assignment]
    assert healthcheck["Test"] == ["CMD", "timewait-exporter", "healthcheck"]
    size = int(inspect["Size"])  # type: ignore[call-overload]
    print(f"image {size / 1e6:.0f} MB, built in {built.seconds:.0f} s", end=" ")
    print(f"(base {'built' if built.base_built else 'cached'}; args {built.build_args})")
    assert size <= SIZE_BUDGET, f"the image is {size / 1e6:.0f} MB"
    # No pip and no apt work left in the runtime image's venv.
    listing = podman.run(
        "run",
        "--rm",
        "--entrypoint",
        "python3",
        built.tag,
        "-c",
        "import os; print(*os.listdir('/opt/venv/bin'), *os.listdir('/usr/bin'))",
    ).stdout.split()
    assert "pip" not in listing and "apt-get" not in listing and "sh" not in listing, listing


def test_timewait_counts_equal_ss_in_two_namespaces(pod: Pod, traffic: Traffic) -> None:
    for ns, (outbound, inbound) in zip(pod.tests, PLAN, strict=True):
        label = pod.labels[ns.name]
        counted = traffic.ss[ns.name]
        exported = {
            (dict(k)["family"], dict(k)["state"]): v
            for k, v in series(traffic.after, "tcptw_sockets").items()
            if dict(k)["netns"] == label
        }
        assert counted[("ipv4", "time_wait")] == outbound + inbound
        for key in set(counted) | set(exported):
            assert exported.get(key, 0) == counted.get(key, 0), (label, key, exported, counted)


def test_event_counters_match_the_connections(pod: Pod, traffic: Traffic) -> None:
    """Every close is counted once on each side. The exporter sees every namespace of the
    machine and keeps the node's --buckets.top largest buckets, summing the others into
    each namespace's `other` series: the sums per namespace are exact either way."""
    for ns, (outbound, inbound) in zip(pod.tests, PLAN, strict=True):
        label = pod.labels[ns.name]
        closes = outbound + inbound  # each connection closes once on each side

        def increase(name: str, label: str = label) -> float:
            return sum(
                v - traffic.before.get((name, k), 0.0)
                for k, v in series(traffic.after, name).items()
                if dict(k)["netns"] == label
            )

        related = "\n".join(
            f"{k[0]}{sorted(k[1])} {traffic.before.get(k)} -> {v}"
            for k, v in traffic.after.items()
            if k[0] in (OUT, IN, LOST, "tcptw_socket_events_up") and ("netns", label) in k[1]
        )
        assert increase(OUT) == closes, related
        assert increase(IN) == closes, related
        assert traffic.after[(LOST, frozenset({"netns": label}.items()))] == 0, related


def test_health_endpoints_answer(pod: Pod) -> None:
    assert pod.get("/healthz")[0] == 200
    assert pod.get("/readyz")[0] == 200


def test_image_healthcheck_passes(pod: Pod) -> None:
    result = pod.podman.run("healthcheck", "run", pod.name, check=False)
    assert result.returncode == 0, (result.stdout, result.stderr, pod.logs()[-2000:])


def test_root_filesystem_is_read_only(pod: Pod) -> None:
    write = "open('{}', 'w').write('x')"
    result = pod.podman.run(
        "exec", pod.name, "python3", "-c", write.format("/opt/venv/probe"), check=False
    )
    assert result.returncode != 0 and "Read-only file system" in result.stderr, result
    # /tmp is the manifest's memory emptyDir: writable.
    pod.podman.run("exec", pod.name, "python3", "-c", write.format("/tmp/probe"))
    inspect = pod.podman.inspect("container", pod.name)
    host_config: dict[str, Any] = inspect["HostConfig"]  # type: ignore[assignment]
    assert host_config["ReadonlyRootfs"] is True


def read(pod: Pod, path: str) -> str:
    """A file as the container sees it (the image has no shell and no cat)."""
    program = f"import sys; sys.stdout.write(open({path!r}).read())"
    return pod.podman.run("exec", pod.name, "python3", "-c", program).stdout


def test_runs_with_the_manifests_privileges_only(pod: Pod) -> None:
    """The process holds exactly the manifest's capabilities, with no_new_privs, as uid 0,
    as PID 1 of its own PID namespace."""
    status = read(pod, "/proc/1/status")
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Uid"].split()[0] == "0"
    added = _daemonset()[2]["securityContext"]["capabilities"]["add"]
    assert int(fields["CapEff"], 16) == sum(1 << CAPABILITIES[name] for name in added)
    assert read(pod, "/proc/1/cmdline").split("\0")[1:3] == [
        "/opt/venv/bin/timewait-exporter",
        "serve",
    ]


@pytest.mark.parametrize("case", list(LIMITED))
def test_a_missing_capability_is_loud(
    podman: image.Podman, built: image.Built, tmp_path: Path, case: str
) -> None:
    """The manifest's pod with capabilities taken away, beside a test namespace held by a
    process: one warning naming the missing capability and what is lost, the metric with
    exactly those reasons at 1, /readyz 503. Without SYS_PTRACE the test namespace is not
    found; without SYS_ADMIN it is found and fails (tcptw_source_success 0)."""
    dropped, expected = LIMITED[case]
    options, args = pod_arguments(tmp_path)
    added = [o for o in options if o.startswith("--cap-add=")]
    assert {o.removeprefix("--cap-add=") for o in added} >= set(dropped), added
    options = [o for o in options if o.removeprefix("--cap-add=") not in dropped]
    with ExitStack() as stack:
        own = stack.enter_context(new_netns("twi-pod"))
        test = stack.enter_context(new_netns("twi"))
        stack.enter_context(image.holder(test.name))
        name = f"twi-{os.getpid()}-{case}-{next(_runs)}"
        podman.run(
            "run",
            "--detach",
            "--name",
            name,
            "--health-interval=disable",
            f"--network=ns:{own.path}",
            *options,
            built.tag,
            *args,
        )
        stack.callback(podman.run, "rm", "--force", "--time", "0", name, check=False)
        pod = Pod(podman, name, own, [test])
        reasons: dict[str, float] = {}

        def polled() -> bool:
            try:
                parsed = pod.metrics()
            except (OSError, http.client.HTTPException):
                return False
            found = series(parsed, "tcptw_netns_discovery_limited")
            reasons.update({dict(k)["reason"]: v for k, v in found.items()})
            return bool(found)

        try:
            wait_until(polled, timeout=60, what="tcptw_netns_discovery_limited")
        except AssertionError:
            raise AssertionError(f"no metric; container log:\n{pod.logs()[-4000:]}") from None
        assert {r for r, v in reasons.items() if v == 1} == expected, reasons
        status, body = pod.get("/readyz")
        assert status == 503 and "namespace discovery is limited" in body, body
        assert all(reason in body for reason in expected), body
        parsed = pod.metrics()
        label = _label(parsed, test)
        if "no_cap_sys_ptrace" in expected:
            assert label is None, "found without SYS_PTRACE"
        else:
            assert label is not None
            success = {
                dict(k)["source"]: v
                for k, v in series(parsed, "tcptw_source_success").items()
                if dict(k)["netns"] == label
            }
            assert success and set(success.values()) == {0.0}, success
        time.sleep(2.5)  # two more polls: the warning is not repeated
        events = [json.loads(line) for line in pod.logs().splitlines() if line.startswith("{")]
    warnings = [e for e in events if str(e["event"]).startswith("namespace discovery is limited")]
    assert len(warnings) == 1, events
    (warning,) = warnings
    assert warning["level"] == "warning" and warning["reasons"] == sorted(expected), warning
    for capability in dropped:
        assert f"no CAP_{capability}" in warning["event"], warning
    lost = (
        "only the exporter's own namespace is polled"
        if "no_cap_sys_ptrace" in expected
        else "namespaces are found but cannot be entered"
    )
    assert str(warning["event"]).endswith(f"): {lost}"), warning
    assert warning["namespaces_polled"] == 1, warning
    print(f"{case}: {warning['event']}", end=" ")
