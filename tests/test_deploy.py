"""Consistency and lint checks for the deployment artefacts: Dockerfile, Kubernetes manifests,
systemd unit, Prometheus rules and the Grafana dashboard."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROM_DIR = REPO / "deploy" / "prometheus"
K8S_DIR = REPO / "deploy" / "kubernetes"
DASHBOARD = REPO / "grafana" / "timewait-exporter.json"
PORT = 9961
METRIC_RE = re.compile(r"tcptw_[a-z0-9_]+")

# The metric catalog, used when README.md does not (yet) carry the catalog table.
CATALOG = frozenset(
    {
        "tcptw_sockets",
        "tcptw_tcpext_tw_total",
        "tcptw_tcpext_tw_recycled_total",
        "tcptw_tcpext_tw_killed_total",
        "tcptw_tcpext_tcp_time_wait_overflow_total",
        "tcptw_tcpext_paws_passive_total",
        "tcptw_tcpext_paws_active_total",
        "tcptw_tcpext_paws_estab_total",
        "tcptw_tcpext_paws_old_ack_total",
        "tcptw_tcpext_paws_timewait_total",
        "tcptw_tcpext_ts_ecr_rejected_total",
        "tcptw_tcpext_tcp_ack_skipped_time_wait_total",
        "tcptw_tcpext_tcp_ack_skipped_paws_total",
        "tcptw_tcpext_listen_overflows_total",
        "tcptw_tcpext_listen_drops_total",
        "tcptw_sockstat_tcp_inuse",
        "tcptw_sockstat_tcp_orphan",
        "tcptw_sockstat_tcp_tw",
        "tcptw_sockstat_tcp_alloc",
        "tcptw_sockstat_tcp_memory_bytes",
        "tcptw_sysctl_ip_local_port_range_min",
        "tcptw_sysctl_ip_local_port_range_max",
        "tcptw_sysctl_ip_local_reserved_ports",
        "tcptw_sysctl_tcp_tw_reuse",
        "tcptw_sysctl_tcp_tw_reuse_delay_seconds",
        "tcptw_sysctl_tcp_tw_recycle",
        "tcptw_sysctl_tcp_max_tw_buckets",
        "tcptw_sysctl_tcp_timestamps",
        "tcptw_sysctl_tcp_fin_timeout_seconds",
        "tcptw_sysctl_tcp_ehash_entries",
        "tcptw_slab_objects",
        "tcptw_slab_active_objects",
        "tcptw_slab_object_size_bytes",
        "tcptw_slab_memory_bytes",
        "tcptw_outbound_ports_used",
        "tcptw_outbound_ports_capacity",
        "tcptw_outbound_timewait_sockets",
        "tcptw_inbound_sockets",
        "tcptw_inbound_timewait_sockets",
        "tcptw_outbound_port_utilization_max_ratio",
        "tcptw_ephemeral_ports_in_use",
        "tcptw_ephemeral_ports_available",
        "tcptw_buckets_folded",
        "tcptw_source_success",
        "tcptw_source_duration_seconds",
        "tcptw_poll_duration_seconds",
        "tcptw_last_poll_timestamp_seconds",
        "tcptw_poll_overruns_total",
        "tcptw_build_info",
    }
)


def tool(name: str) -> str:
    """Path of a command-line tool; missing tools fail the test under CI=true, else skip it."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed")
    return found


def run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output unless it exits 0."""
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def known_metrics() -> tuple[frozenset[str], tuple[str, ...]]:
    """Exact names and name prefixes (`tcptw_tcpext_<counter>` rows) of the metric catalog:
    README.md's table when it has one, otherwise CATALOG."""
    readme = REPO / "README.md"
    text = readme.read_text() if readme.exists() else ""
    if "tcptw_sockets" not in text:
        return CATALOG, ()
    rows = [line for line in text.splitlines() if line.lstrip().startswith("|")]
    names = {name for row in rows for name in METRIC_RE.findall(row)}
    return frozenset(n for n in names if not n.endswith("_")), tuple(
        n for n in names if n.endswith("_")
    )


def unknown_metrics(exprs: list[str]) -> set[str]:
    exact, prefixes = known_metrics()
    exact = exact | {name.removesuffix("_total") for name in exact}
    used = {name for expr in exprs for name in METRIC_RE.findall(expr)}
    return {
        name
        for name in used
        if name not in exact
        and name.removesuffix("_total") not in exact
        and not name.startswith(prefixes)
    }


def alert_exprs() -> list[str]:
    groups = load_yaml(PROM_DIR / "alerts.yml")["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


# --- Prometheus -------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    run([tool("promtool"), "check", "rules", "alerts.yml"], PROM_DIR)


def test_promtool_rule_unit_tests() -> None:
    run([tool("promtool"), "test", "rules", "alerts_test.yml"], PROM_DIR)


def test_promtool_check_config() -> None:
    run([tool("promtool"), "check", "config", "prometheus.yml"], PROM_DIR)


def test_alert_exprs_use_catalog_metrics() -> None:
    exprs = alert_exprs()
    assert len(exprs) >= 10
    assert unknown_metrics(exprs) == set()


def test_prometheusrule_matches_alerts_file() -> None:
    rule = load_yaml(K8S_DIR / "prometheusrule.yaml")
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == load_yaml(PROM_DIR / "alerts.yml")["groups"]


# --- Docker -------------------------------------------------------------------------------


def test_hadolint() -> None:
    run([tool("hadolint"), "Dockerfile"], REPO)


def test_dockerfile_contract() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {PORT}$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["timewait-exporter"]' in text
    assert 'CMD ["serve"]' in text


def dockerfile_copies() -> Iterator[str]:
    """Source paths of the Dockerfile's COPY instructions (flags and destination dropped)."""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY":
            yield from (word for word in words[1:-1] if not word.startswith("--"))


@pytest.mark.timeout(600)
def test_dockerfile_install_steps_work(tmp_path: Path) -> None:
    """Replays the image build without docker: a build context holding only what the
    Dockerfile COPYs, `pip install .` into a fresh venv, then the console script."""
    context = tmp_path / "src"
    context.mkdir()
    for source in dockerfile_copies():
        path = REPO / source
        assert path.exists(), f"the Dockerfile COPYs {source}, which does not exist"
        if path.is_dir():
            shutil.copytree(
                path, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            shutil.copy2(path, context / source)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        ".",
    ]
    run(pip, context, timeout=540)
    result = run([str(venv / "bin" / "timewait-exporter"), "--help"], tmp_path, timeout=60)
    assert "--path.procfs" in result.stdout


# --- Kubernetes ---------------------------------------------------------------------------


def k8s_docs() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        for path in sorted(K8S_DIR.glob("*.yaml"))
    }


def test_k8s_manifests_are_well_formed() -> None:
    docs = k8s_docs()
    assert "kustomization.yaml" in docs
    for name, objects in docs.items():
        assert objects, f"{name} is empty"
        for obj in objects:
            assert obj.get("apiVersion") and obj.get("kind"), name
            assert obj.get("metadata", {}).get("name"), name
    resources = docs["kustomization.yaml"][0]["resources"]
    assert sorted(resources) == sorted(set(docs) - {"kustomization.yaml"})


def test_daemonset_matches_image_and_exporter_flags() -> None:
    ds = load_yaml(K8S_DIR / "daemonset.yaml")
    assert ds["kind"] == "DaemonSet"
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "serve", "args replace the image's CMD, so they must start with serve"
    assert {
        "--path.procfs=/host/proc",
        "--path.sysfs=/host/sys",
        "--path.pod-logs=/var/log/pods",
    } <= set(args)
    assert [p["containerPort"] for p in container["ports"]] == [PORT]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": PORT}
    context = container["securityContext"]
    assert set(context["capabilities"]["add"]) == {"SYS_ADMIN", "SYS_PTRACE"}  # each explained
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert all(mounts[path]["readOnly"] for path in ("/host/proc", "/host/sys", "/var/log/pods"))
    comment = (K8S_DIR / "daemonset.yaml").read_text().split("apiVersion")[0]
    for word in ("hostNetwork", "hostPID", "SYS_ADMIN", "SYS_PTRACE", "/var/log/pods"):
        assert word in comment, f"the DaemonSet's header does not explain {word}"

    image, _, tag = container["image"].partition(":")
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    images = {entry["name"]: entry for entry in kustomization["images"]}
    assert image in images, f"{image} is not in kustomization.yaml images"
    assert images[image].get("newTag", tag) == tag


def test_service_and_servicemonitor_agree() -> None:
    service = load_yaml(K8S_DIR / "service.yaml")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == PORT
    port_name = service["spec"]["ports"][0]["name"]
    monitor = load_yaml(K8S_DIR / "servicemonitor.yaml")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port_name
    assert endpoint["interval"] == "15s"


# --- Grafana ------------------------------------------------------------------------------


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def test_dashboard_structure_and_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] == 39
    panels = list(walk_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"instance", "netns"} <= set(variables)

    exprs = [t["expr"] for panel in panels for t in panel.get("targets", [])]
    exprs += [json.dumps(variables[name]["query"]) for name in ("instance", "netns")]
    assert len(exprs) >= 20
    assert unknown_metrics(exprs) == set()
    datasources = {json.dumps(p["datasource"]) for p in panels if p.get("type") != "row"}
    assert datasources == {json.dumps({"type": "prometheus", "uid": "${datasource}"})}


def test_systemd_unit_grants_exactly_the_explained_capabilities() -> None:
    unit = (REPO / "deploy" / "systemd" / "timewait-exporter.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    granted = set(settings["AmbientCapabilities"].split())
    assert granted == set(settings["CapabilityBoundingSet"].split())
    assert granted == {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
    header = unit.split("[Unit]")[0]
    assert all(cap in header for cap in granted), "every capability is explained"
    assert int(settings["LimitNOFILE"]) >= 16384  # descriptors kept per namespace
