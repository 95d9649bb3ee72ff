"""`python -m mixin --config FILE`: a user's MixinConfig (job, thresholds, runbook base)
reaches every generated file; the thresholds' defaults are exporter/thresholds.py's, the
ones `timewait-exporter report` uses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter import thresholds
from exporter.report import findings
from mixin.__main__ import main
from mixin.config import DEFAULT, MixinConfig, Thresholds

REPO = Path(__file__).resolve().parent.parent

USER_CONFIG = """\
from mixin.config import MixinConfig, Thresholds

config = MixinConfig(
    job="node-tw",
    cluster_label="",
    runbook_base="https://wiki.example.com/runbooks/timewait/",
    thresholds=Thresholds(port_warning=0.7, port_critical=0.85, rate_warning=0.65),
)
"""


def alert_rules(root: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load((root / "deploy/prometheus/alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_a_user_config_file_reaches_the_generated_rules(tmp_path: Path) -> None:
    config_file = tmp_path / "my_mixin.py"
    config_file.write_text(USER_CONFIG)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "mixin", "--config", str(config_file), "--root", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rules = alert_rules(out)
    exhaustion = {
        rule["labels"]["severity"]: rule
        for rule in rules
        if rule["alert"] == "TcpEphemeralPortExhaustion"
    }
    assert ">= 0.7\n" in exhaustion["warning"]["expr"]
    assert ">= 0.85\n" in exhaustion["critical"]["expr"]
    assert "70% or more" in exhaustion["warning"]["annotations"]["description"]
    (rate,) = [rule for rule in rules if rule["alert"] == "TcpConnectionRateNearSustainable"]
    assert rate["expr"].endswith(">= 0.65")
    for rule in rules:
        assert 'job="timewait-exporter"' not in rule["expr"], rule["alert"]
        assert "cluster" not in rule["expr"], rule["alert"]
        assert rule["annotations"]["runbook_url"] == (
            f"https://wiki.example.com/runbooks/timewait/{rule['alert']}.md"
        )
    assert any('job="node-tw"' in rule["expr"] for rule in rules)
    recording = (out / "deploy/prometheus/recording.yml").read_text()
    assert 'job="node-tw"' in recording and 'job="timewait-exporter"' not in recording
    # The dashboards colour and describe with the same thresholds.
    fleet = json.loads((out / "grafana/fleet.json").read_text())
    steps = [
        [step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        for panel in fleet["panels"]
        if panel.get("type") == "timeseries"
        and panel["title"] == "Worst outbound utilisation over time"
    ]
    assert steps == [[None, 0.7, 0.85]]
    # The runbooks quote them too.
    runbook = (out / "docs/runbooks/TcpEphemeralPortExhaustion.md").read_text()
    assert "70% (warning) or 85% (critical)" in " ".join(runbook.split())
    # --check against what it wrote passes; against the repository's files it does not.
    assert main(["--config", str(config_file), "--root", str(out), "--check"]) == 0
    assert main(["--config", str(config_file), "--root", str(REPO), "--check"]) == 1


def test_a_config_file_without_config_is_refused(tmp_path: Path) -> None:
    config_file = tmp_path / "empty.py"
    config_file.write_text("job = 'x'\n")
    with pytest.raises(SystemExit, match="defines no `config = MixinConfig"):
        main(["--config", str(config_file), "--root", str(tmp_path), "--check"])


def test_thresholds_have_one_home() -> None:
    """The mixin's defaults and the report's are exporter/thresholds.py's."""
    assert DEFAULT.thresholds == thresholds.DEFAULT
    assert findings.THRESHOLDS is thresholds.DEFAULT
    assert thresholds.DEFAULT.port_warning == 0.8
    assert thresholds.DEFAULT.port_critical == 0.9


def test_runbook_urls_are_absolute() -> None:
    assert DEFAULT.runbook_url("TcpTimeWaitOverflow") == (
        "https://github.com/timewait-exporter/timewait-exporter/blob/main/docs/runbooks/"
        "TcpTimeWaitOverflow.md"
    )
    with pytest.raises(ValueError, match="absolute URL"):
        MixinConfig(runbook_base="docs/runbooks")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port_warning": 0.95, "port_critical": 0.9},
        {"port_critical": 1.5},
        {"rate_warning": 0},
        {"stale_intervals": 0},
    ],
)
def test_inconsistent_thresholds_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Thresholds"):
        Thresholds(**kwargs)
