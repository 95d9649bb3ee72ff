"""The real Prometheus server scrapes the real daemon in a namespace whose outbound bucket
is exhausted; our alert rules (deploy/prometheus/alerts.yml) must go pending on that data.
(Their `for:` durations are minutes; promtool unit tests cover the firing transitions.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kernel import Netns
from tests.test_capacity import exhaust, exhaustion_namespace

ROOT = Path(__file__).resolve().parent.parent


def query(netns: Netns, port: int, expr: str) -> list[dict[str, object]]:
    code = (
        "import json, sys, urllib.parse, urllib.request\n"
        f"url = 'http://127.0.0.1:{port}/api/v1/query?' + "
        "urllib.parse.urlencode({'query': sys.argv[1]})\n"
        "print(urllib.request.urlopen(url, timeout=5).read().decode())"
    )
    out = netns.run(sys.executable, "-c", code, expr, check=False).stdout
    if not out:
        return []
    result: list[dict[str, object]] = json.loads(out)["data"]["result"]
    return result


def test_prometheus_scrapes_the_exporter_and_our_alerts_go_pending(
    netns: Netns, tmp_path: Path
) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus missing (Debian package prometheus)")
        pytest.skip("prometheus missing (Debian package prometheus)")
    listener = exhaustion_namespace(netns, "0")
    assert exhaust(netns, listener, close_every=2) == 89
    exporter_port, prometheus_port = 19961, 19090  # inside the test's own namespace
    shutil.copyfile(ROOT / "deploy/prometheus/alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: timewait-exporter\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    daemon = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns.name,
            sys.executable,
            "-m",
            "exporter",
            "serve",
            "--netns=self",
            "--poll.interval",
            "1",
            "--web.listen-address",
            f"127.0.0.1:{exporter_port}",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns.name,
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pending: set[str] = set()
        ratio: list[dict[str, object]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ratio = query(netns, prometheus_port, "tcptw_outbound_port_utilization_max_ratio")
            alerts = query(netns, prometheus_port, 'ALERTS{alertstate="pending"}')
            pending = {str(a["metric"]["alertname"]) for a in alerts}  # type: ignore[index]
            if {
                "TcpEphemeralPortsExhaustionImminent",
                "TcpEphemeralPortBucketNearCapacity",
            } <= pending:
                break
            time.sleep(0.5)
        assert ratio and ratio[0]["value"][1] == "1"  # type: ignore[index]
        assert ratio[0]["metric"]["netns"] == netns.name  # type: ignore[index]
        assert {
            "TcpEphemeralPortsExhaustionImminent",
            "TcpEphemeralPortsExhaustionWarning",
            "TcpEphemeralPortBucketNearCapacity",
        } <= pending
        up = query(netns, prometheus_port, 'up{job="timewait-exporter"}')
        assert up[0]["value"][1] == "1"  # type: ignore[index]
        assert not query(netns, prometheus_port, "tcptw_source_success == 0")
    finally:
        for proc in (server, daemon):
            proc.terminate()
            proc.wait(timeout=10)
