from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel import Netns, kernel_tests_unavailable, new_netns

FIXTURES = Path(__file__).parent / "fixtures"
TREES = FIXTURES / "trees"
_unavailable: list[str | None] = []


def _kernel_reason() -> str | None:
    if not _unavailable:
        _unavailable.append(kernel_tests_unavailable())
    return _unavailable[0]


@pytest.fixture
def kernel() -> None:
    """Kernel tests build their own namespaces: skipped with the reason when not root or
    without `ip netns`; under CI=true they must run, so the same condition fails instead."""
    reason = _kernel_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"kernel test cannot run under CI=true: {reason}")
        pytest.skip(reason)


@pytest.fixture
def netns(kernel: None) -> Iterator[Netns]:
    """A fresh named namespace with lo up, tcp_rfc1337=1 and tcp_tw_reuse=0."""
    with new_netns() as namespace:
        yield namespace


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A writable copy of the recorded Linux 6.18 /proc + /sys tree (symlinks kept)."""
    target = tmp_path / "tree"
    shutil.copytree(TREES / "linux-6.18", target, symlinks=True)
    return target
