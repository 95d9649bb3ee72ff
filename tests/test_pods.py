"""Pod attribution from cgroup paths and kubelet's log directories (recorded layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.pods import PodName, parse_pod_log_dir, pod_uid_from_cgroup, read_pod_names
from tests.conftest import FIXTURES

CGROUPS = FIXTURES / "discovery"


@pytest.mark.parametrize(
    ("name", "uid"),
    [
        ("cgroup-v2-systemd-containerd", "3f1c2a9e-8b7d-4c1e-9a2b-5d6e7f8a9b0c"),
        ("cgroup-v1-cgroupfs-docker", "0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e"),
        ("cgroup-v1-systemd-crio-guaranteed", "7e6d5c4b-3a29-1807-f6e5-d4c3b2a19080"),
        ("cgroup-v2-private-namespace", "11223344-5566-7788-99aa-bbccddeeff00"),
        ("cgroup-v2-static-pod", "6d8f4e2b1c0a9f8e7d6c5b4a39281706"),
        ("cgroup-not-a-pod", None),
    ],
)
def test_pod_uid_in_every_kubelet_layout(name: str, uid: str | None) -> None:
    assert pod_uid_from_cgroup((CGROUPS / name).read_text()) == uid


def test_pod_log_directory_names() -> None:
    assert parse_pod_log_dir("kube-system_coredns-5d78c9869d-x2x7q_0b1c2d3e-4f5a") == (
        "0b1c2d3e-4f5a",
        PodName("kube-system", "coredns-5d78c9869d-x2x7q"),
    )
    assert parse_pod_log_dir("not-a-pod") is None
    assert parse_pod_log_dir("a_b") is None
    assert parse_pod_log_dir("a__c") is None


def test_read_pod_names(tmp_path: Path) -> None:
    (tmp_path / "web_api-0_11111111-2222-3333-4444-555555555555").mkdir()
    (tmp_path / "stray-file").write_text("")
    assert read_pod_names(tmp_path) == {
        "11111111-2222-3333-4444-555555555555": PodName("web", "api-0")
    }
    assert read_pod_names(tmp_path / "missing") == {}
