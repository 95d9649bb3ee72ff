"""`pytest -p tests.kernels.repeat --repeat N`: every selected test runs N times (ids
gain `[repeat-K]`), as scripts/test-kernels runs the tw_reuse test on each guest kernel."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--repeat", type=int, default=1, help="run each test this many times")


@pytest.fixture
def repeat_run(request: pytest.FixtureRequest) -> int:
    run: int = request.param
    return run


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    count: int = metafunc.config.getoption("repeat")
    if count > 1:
        metafunc.fixturenames.append("repeat_run")
        metafunc.parametrize(
            "repeat_run", range(count), indirect=True, ids=[f"repeat-{k}" for k in range(count)]
        )
