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
K8S_ROOT = REPO / "deploy" / "kubernetes"
K8S_DIR = K8S_ROOT / "base"
OVERLAY_DIR = K8S_ROOT / "overlays" / "tls-auth"
WEB_CONFIG_DIR = "/etc/timewait-exporter"
SYSTEMD_UNIT = REPO / "deploy" / "systemd" / "timewait-exporter.service"
# `systemd-analyze security --offline=yes` of the unit, as recorded in docs/security.md.
SYSTEMD_EXPOSURE = 2.2
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


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize` renders (offline: no cluster is contacted)."""
    result = run([tool("kubectl"), "kustomize", str(directory)], REPO, timeout=60)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def one(objects: list[dict[str, Any]], kind: str, name: str = "timewait-exporter") -> Any:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_container(daemonset: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = daemonset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


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
    # `kubectl apply -k deploy/kubernetes` is the base (kustomize refuses an overlay that
    # sits inside its base's directory, so the base lives in base/).
    assert load_yaml(K8S_ROOT / "kustomization.yaml")["resources"] == ["base"]


def test_kustomize_builds_the_base() -> None:
    objects = kustomize(K8S_ROOT)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "Namespace",
            "DaemonSet",
            "Service",
            "NetworkPolicy",
            "ServiceMonitor",
            "PrometheusRule",
        ]
    )
    assert all(
        o["metadata"].get("namespace") == "timewait-exporter"
        for o in objects
        if o["kind"] != "Namespace"
    )


def test_daemonset_matches_image_and_exporter_flags() -> None:
    ds = load_yaml(K8S_DIR / "daemonset.yaml")
    assert ds["kind"] == "DaemonSet"
    pod, container = pod_container(ds)
    assert "hostPID" not in pod  # /host/proc/thread-self works from the pod's PID namespace
    assert pod["automountServiceAccountToken"] is False  # no API calls
    args = container["args"]
    assert args[0] == "serve", "args replace the image's CMD, so they must start with serve"
    assert {
        "--web.listen-address=:9961",
        "--path.procfs=/host/proc",
        "--path.pod-logs=/var/log/pods",
    } <= set(args)
    assert not any(a.startswith("--path.sysfs") for a in args)  # the container's own /sys
    context = container["securityContext"]
    assert set(context["capabilities"]["add"]) == {"SYS_ADMIN", "SYS_PTRACE"}  # each explained
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False and context["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {"proc": "/proc", "pod-logs": "/var/log/pods"}
    assert all(m["readOnly"] for m in mounts.values() if m["name"] in host_paths)
    comment = (K8S_DIR / "daemonset.yaml").read_text().split("apiVersion")[0]
    for word in (
        "hostPID",
        "SYS_ADMIN",
        "SYS_PTRACE",
        "runAsUser 0",
        "/host/proc",
        "No hostPID",
        "No host /sys",
        "/var/log/pods",
        "AppArmor unconfined",
        "No hostNetwork",
        "NetworkPolicy",
    ):
        assert word in comment, f"the DaemonSet's header does not explain {word}"

    image, _, tag = container["image"].partition(":")
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    images = {entry["name"]: entry for entry in kustomization["images"]}
    assert image in images, f"{image} is not in kustomization.yaml images"
    assert images[image].get("newTag", tag) == tag


def test_daemonset_serves_on_the_pod_ip() -> None:
    """No hostNetwork (NetworkPolicy does not apply to hostNetwork pods on most CNIs), so
    no host port and no ClusterFirstWithHostNet either, anywhere in the deploy files."""
    pod, container = pod_container(load_yaml(K8S_DIR / "daemonset.yaml"))
    assert "hostNetwork" not in pod and "dnsPolicy" not in pod
    assert container["ports"] == [{"name": "metrics", "containerPort": PORT, "protocol": "TCP"}]
    for path in sorted((REPO / "deploy").rglob("*")):
        if path.suffix in (".yaml", ".yml"):
            text = "\n".join(
                line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
            )
            for key in ("hostNetwork:", "hostPort:", "ClusterFirstWithHostNet"):
                assert key not in text, f"{path.relative_to(REPO)} still has {key}"


def test_daemonset_probes() -> None:
    """Liveness asks whether the process serves, readiness whether polls are recent
    (/readyz fails after 3 poll intervals, 45 s at the default 15 s)."""
    _, container = pod_container(load_yaml(K8S_DIR / "daemonset.yaml"))
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert readiness["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for probe in (liveness, readiness):
        assert probe["timeoutSeconds"] < probe["periodSeconds"]
    # A restart needs a minute of silence; readiness turns within a poll interval or two
    # of /readyz turning.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= 2 * 15


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
    # Targets are pod IPs: instance is the node name, stable across pod restarts.
    targets = {
        r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"] if "targetLabel" in r
    }
    assert targets["instance"] == targets["node"] == ["__meta_kubernetes_pod_node_name"]


def test_networkpolicy_admits_only_prometheus_and_denies_egress() -> None:
    policy = load_yaml(K8S_DIR / "networkpolicy.yaml")
    ds = load_yaml(K8S_DIR / "daemonset.yaml")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert spec.get("egress", []) == [], "the exporter connects nowhere: no egress at all"
    (rule,) = spec["ingress"]
    (peer,) = rule["from"]  # one peer holding both selectors: namespace AND pod must match
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
    }
    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert rule["ports"] == [{"protocol": "TCP", "port": PORT}]
    comment = (K8S_DIR / "networkpolicy.yaml").read_text().split("apiVersion")[0]
    assert "ADAPT" in comment and "hostNetwork" in comment


def test_tls_auth_overlay_renders_what_it_claims() -> None:
    objects = kustomize(OVERLAY_DIR)
    base_args = pod_container(load_yaml(K8S_DIR / "daemonset.yaml"))[1]["args"]
    pod, container = pod_container(one(objects, "DaemonSet"))
    assert container["args"] == [*base_args, f"--web.config.file={WEB_CONFIG_DIR}/web-config.yml"]
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "metrics",
        "scheme": "HTTPS",
    }
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "metrics",
        "scheme": "HTTPS",
    }
    assert "hostPID" not in pod_container(one(objects, "DaemonSet"))[0]
    annotations = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false"  # scrapers without credentials

    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == WEB_CONFIG_DIR]
    assert mount["readOnly"] is True and "subPath" not in mount  # subPath never updates
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["projected"]["defaultMode"] == 0o400
    files = {
        item["path"]: source["secret"]["name"]
        for source in volume["projected"]["sources"]
        for item in source["secret"]["items"]
    }
    assert sorted(files) == ["tls.crt", "tls.key", "web-config.yml"]

    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    certificates = {o["spec"]["secretName"]: o for o in objects if o["kind"] == "Certificate"}
    assert files["web-config.yml"] in secrets  # with kustomize's hash suffix
    assert files["tls.crt"] == files["tls.key"] in certificates
    serving = certificates[files["tls.crt"]]

    (endpoint,) = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    tls = endpoint["tlsConfig"]
    assert tls["ca"]["secret"] == {"name": files["tls.crt"], "key": "ca.crt"}
    assert tls["serverName"] in serving["spec"]["dnsNames"]
    auth = endpoint["basicAuth"]
    assert auth["username"]["name"] == auth["password"]["name"] in secrets
    assert {auth["username"]["key"], auth["password"]["key"]} <= set(
        secrets[auth["password"]["name"]]["data"]
    )
    assert any(o["kind"] == "NetworkPolicy" for o in objects)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "timewait-exporter", obj["metadata"]["name"]


def overlay_credentials() -> tuple[str, str]:
    pairs = dict(
        line.split("=", 1)
        for line in (OVERLAY_DIR / "prometheus-credentials.env").read_text().splitlines()
        if "=" in line
    )
    return pairs["username"], pairs["password"]


def test_tls_auth_web_config_is_valid_for_the_exporter(tmp_path: Path) -> None:
    """The overlay's web-config.yml, as mounted next to a throwaway certificate: it holds
    only exporter-toolkit keys, the exporter loads it and its TLS files, and its hash is
    the bcrypt of the password Prometheus is given."""
    import bcrypt

    from exporter.tls import build_context
    from exporter.webconfig import load_web_config

    text = (OVERLAY_DIR / "web-config.yml").read_text()
    document = yaml.safe_load(text)
    assert set(document) <= {"tls_server_config", "basic_auth_users", "http_server_config"}
    tls_section = document["tls_server_config"]
    assert set(tls_section) <= {
        "cert_file",
        "key_file",
        "client_ca_file",
        "client_auth_type",
        "min_version",
        "max_version",
    }
    assert (tls_section["cert_file"], tls_section["key_file"]) == ("tls.crt", "tls.key")
    user, password = overlay_credentials()
    assert list(document["basic_auth_users"]) == [user]
    assert bcrypt.checkpw(password.encode(), document["basic_auth_users"][user].encode())
    assert "example" in password and "EXAMPLE" in text  # nobody mistakes it for a real one

    (tmp_path / "web-config.yml").write_text(text)
    run(
        [
            tool("openssl"),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=timewait-exporter",
            "-addext",
            "subjectAltName=DNS:timewait-exporter.timewait-exporter.svc",
            "-keyout",
            "tls.key",
            "-out",
            "tls.crt",
        ],
        tmp_path,
        timeout=30,
    )
    config = load_web_config(tmp_path / "web-config.yml")
    assert config.tls is not None
    assert config.tls.cert_file == tmp_path / "tls.crt"  # relative to the config file
    assert set(config.users) == {user}
    build_context(config.tls)  # loads the certificate and key


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
    unit = SYSTEMD_UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0] != "#"
    )
    granted = set(settings["AmbientCapabilities"].split())
    assert granted == set(settings["CapabilityBoundingSet"].split())
    assert granted == {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
    header = unit.split("[Unit]")[0]
    assert all(cap in header for cap in granted), "every capability is explained"
    assert int(settings["LimitNOFILE"]) >= 16384  # descriptors kept per namespace


def test_systemd_unit_reloads_with_sighup() -> None:
    unit = SYSTEMD_UNIT.read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit.splitlines()
    # The one listening port may be bound, and it is the exporter's default.
    assert f"SocketBindAllow=tcp:{PORT}" in unit and "SocketBindDeny=any" in unit


def test_systemd_analyze_exposure_stays_at_the_recorded_level(tmp_path: Path) -> None:
    shutil.copy2(SYSTEMD_UNIT, tmp_path / SYSTEMD_UNIT.name)
    result = subprocess.run(
        [
            tool("systemd-analyze"),
            "security",
            "--offline=yes",
            "--no-pager",
            SYSTEMD_UNIT.name,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    exposure = float(match.group(1))
    assert exposure <= SYSTEMD_EXPOSURE, (
        f"exposure rose to {exposure} (recorded {SYSTEMD_EXPOSURE}):\n{result.stdout}"
    )
    doc = (REPO / "docs" / "security.md").read_text()
    assert f"**{SYSTEMD_EXPOSURE}**" in doc, "docs/security.md records another score"
