"""Pod attribution from cgroup paths and kubelet's log directories (recorded layouts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.netns.pods import PodName, parse_pod_log_dir, pod_uid_from_cgroup, read_pod_names
from tests.conftest import FIXTURES
from tests.fuzzing import FUZZ, mutated, texts

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


# -- property tests (hypothesis); fuzz/targets.py runs the same parsers under atheris -----

_HEX = "0123456789abcdef"
_UUID = st.uuids().map(str)
_STATIC_UID = st.text(st.sampled_from(_HEX), min_size=32, max_size=32)
_ID = st.text(st.sampled_from(_HEX), min_size=64, max_size=64)  # a container id
_DNS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@st.composite
def cgroup_files(draw: st.DrawFn) -> tuple[str, str]:
    """A /proc/<pid>/cgroup of a pod's process in one of kubelet's layouts."""
    uid = draw(_UUID | _STATIC_UID)
    qos = draw(st.sampled_from(["", "burstable", "besteffort"]))
    container = draw(_ID)
    if draw(st.booleans()):  # systemd driver
        slice_ = f"kubepods-{qos}" if qos else "kubepods"
        runtime = draw(st.sampled_from(["cri-containerd", "crio", "docker"]))
        path = (
            f"/kubepods.slice/{slice_}.slice/{slice_}-pod{uid.replace('-', '_')}.slice"
            f"/{runtime}-{container}.scope"
        )
    else:  # cgroupfs driver
        path = f"/kubepods{'/' + qos if qos else ''}/pod{uid}/{container}"
    if draw(st.booleans()):
        path = "/.." * draw(st.integers(1, 3)) + path  # a private cgroup namespace
    if draw(st.booleans()):
        lines = [f"0::{path}"]
    else:
        lines = [f"{i}:{c}:{path}" for i, c in enumerate(["cpu,cpuacct", "memory", "pids"], 1)]
        lines.insert(0, "1:name=systemd:/init.scope" if draw(st.booleans()) else "0::/")
    return "\n".join(lines) + "\n", uid


@FUZZ
@given(cgroup_files())
def test_generated_cgroup_file_gives_its_pod_uid(doc: tuple[str, str]) -> None:
    text, uid = doc
    assert pod_uid_from_cgroup(text) == uid


@FUZZ
@given(_DNS, _DNS, _UUID)
def test_pod_log_dir_round_trip(namespace: str, pod: str, uid: str) -> None:
    assert parse_pod_log_dir(f"{namespace}_{pod}_{uid}") == (uid, PodName(namespace, pod))


@FUZZ
@given(
    mutated(st.sampled_from([p.read_bytes() for p in sorted(CGROUPS.glob("cgroup-*"))]))
    | st.binary()
)
def test_mutated_cgroup_files_and_names_never_raise(data: bytes) -> None:
    for text in texts(data):
        uid = pod_uid_from_cgroup(text)
        assert uid is None or len(uid) in (32, 36)
        parse_pod_log_dir(text)
