from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.kernel import Netns, kernel_tests_unavailable, new_netns

FIXTURES = Path(__file__).parent / "fixtures"
TREES = FIXTURES / "trees"
_unavailable: list[str | None] = []


def _kernel_reason() -> str | None:
    if not _unavailable:
        _unavailable.append(kernel_tests_unavailable())
    return _unavailable[0]


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with the reason; under CI=true, where every test must run, fail it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"cannot run under CI=true: {reason}")
    pytest.skip(reason)


def tool(name: str, source: str) -> str:
    """The path of a command-line tool (on PATH or beside the venv's python); a missing
    one skips the test, or fails it under CI=true. source: where it comes from."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        skip_or_fail(f"{name} missing ({source})")
    return found


def require_kernel() -> None:
    """Kernel tests build their own namespaces: skipped with the reason when not root or
    without `ip netns`; under CI=true they must run, so the same condition fails instead."""
    reason = _kernel_reason()
    if reason is not None:
        skip_or_fail(reason)


@pytest.fixture
def kernel() -> None:
    require_kernel()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the kernel or netns fixture are marked `kernel` (`-m "not kernel"`
    deselects them); modules mark the others that need root with `pytestmark`."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        if callspec is not None:  # a parameter named `kernel` (a recorded tree) is no fixture
            fixtures -= set(callspec.params)
        if fixtures & {"kernel", "netns"}:
            item.add_marker(pytest.mark.kernel)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked `kernel` gets the kernel fixture's check, fixture or not."""
    if item.get_closest_marker("kernel") is not None:
        require_kernel()


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
