"""The rendered bodies are prometheus_client's, byte for byte: exposition.encode against
the library's own encoders, on the exporter's series and on generated families that go
through every escaping rule."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Exemplar, Timestamp

from exporter.config import Config
from exporter.engine import exposition
from exporter.engine.collector import SnapshotCollector
from exporter.engine.exposition import PRELOADED, Collected, Exposition, encode
from exporter.engine.poller import Poller
from tests.conftest import TREES
from tests.engine.test_collector import KERNELS

ACCEPTS = [
    *PRELOADED,
    "application/openmetrics-text;version=1.0.0;escaping=underscores",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=2.0.0;escaping=allow-utf-8",
    "application/openmetrics-text",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=underscores",
    "text/plain;version=1.0.0;escaping=values",
    "text/plain;version=0.0.4",
]
ENCODERS = [choose_encoder(accept)[0] for accept in ACCEPTS]


def assert_library_bytes(metrics: list[Metric], times: int = 2) -> None:
    """Every format, rendered `times` over (what is kept between renders is used)."""
    for encoder in ENCODERS:
        expected: bytes | str
        try:
            expected = encoder(Collected(metrics))
        except Exception as exc:
            expected = f"{type(exc).__name__}: {exc}"
        for _ in range(times):
            got: bytes | str
            try:
                got = encode(encoder, Collected(metrics))
            except Exception as exc:
                got = f"{type(exc).__name__}: {exc}"
            assert got == expected, encoder


def tree_metrics(kernel: str, detail: str) -> list[Metric]:
    tree = TREES / kernel
    config = Config(
        procfs=tree / "proc",
        sysfs=tree / "sys",
        netns="self",
        netns_name="fixture",
        collectors=frozenset({"sysctl", "netstat", "snmp", "sockstat", "slab"}),
        detail=detail,
    )
    poller = Poller(config)
    try:
        snapshot = poller.poll_once()
    finally:
        poller.close()
    collector = SnapshotCollector(config)
    collector.update(snapshot)
    return list(collector.collect())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("detail", ["full", "compact"])
def test_every_format_of_a_recorded_tree_is_the_library_s(kernel: str, detail: str) -> None:
    metrics = tree_metrics(kernel, detail)
    assert_library_bytes(metrics)
    for accept in PRELOADED:  # the exporter's series never need the library's encoders
        encoder = choose_encoder(accept)[0]
        fast = exposition._fast_encoder(encoder)
        assert fast is not None
        assert fast(Collected(metrics)) == encoder(Collected(metrics))


def test_the_preloaded_bodies_are_the_library_s_of_one_collection() -> None:
    """refresh collects once: every body is the library's rendering of that collection."""
    metrics = tree_metrics("linux-6.18", "compact")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collected(metrics))
    ProcessCollector(registry=registry)
    calls: list[int] = []

    class Counting:
        def collect(self) -> list[Metric]:
            calls.append(1)
            return list(registry.collect())

    rendered = Exposition(Counting())
    assert len(calls) == 1
    for accept in PRELOADED:
        encoder, content_type = choose_encoder(accept)
        body = rendered.cached(content_type)
        assert body is not None
        collected = Collected(list(registry.collect()))
        # process_* move between collections: compare the exporter's series only.
        ours = [line for line in body.plain.split(b"\n") if b"process_" not in line]
        theirs = [line for line in encoder(collected).split(b"\n") if b"process_" not in line]
        assert ours == theirs


# -- generated families: names, label names and values, help texts and values that each
# escaping treats differently ------------------------------------------------------------

_CHARS = st.sampled_from(list('az_AZ09:."\\\n é中\U0001f600-'))
_NAME = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True),
    st.text(_CHARS, min_size=1, max_size=8),
)
_LABEL = st.one_of(
    st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
    st.text(_CHARS, min_size=1, max_size=6),
).filter(lambda name: not name.startswith("__"))
_VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 0.0, -0.0, 1, 1.0, True, 1e22, 123456789.0, 1234567.5, math.nan]),
)
_TYPES = st.sampled_from(
    ["counter", "gauge", "summary", "histogram", "gaugehistogram", "unknown", "info", "stateset"]
)


@st.composite
def families(draw: st.DrawFn) -> list[Metric]:
    metrics = []
    for name in draw(st.lists(_NAME, max_size=4, unique=True)):
        try:
            metric = Metric(name, draw(st.text(_CHARS, max_size=12)), draw(_TYPES))
        except ValueError:
            continue
        if draw(st.booleans()):
            metric.unit = draw(st.sampled_from(["", "seconds", "bytes"]))
        keys = draw(st.lists(_LABEL, max_size=3, unique=True))
        suffixes = ["", "_total", "_created", "_gsum", "_gcount", "_bucket", "_info"]
        for _ in range(draw(st.integers(0, 5))):
            labels = {key: draw(st.text(_CHARS, max_size=6)) for key in keys}
            if draw(st.booleans()):  # the same labels in another order
                labels = dict(reversed(labels.items()))
            timestamp = draw(st.sampled_from([None, None, None, 1.5, Timestamp(3, 5)]))
            exemplar = draw(st.sampled_from([None, None, None, Exemplar({"a": "b"}, 1.0)]))
            metric.add_sample(
                name + draw(st.sampled_from(suffixes)),
                labels,
                draw(_VALUE),
                timestamp,
                exemplar,
            )
        metrics.append(metric)
    return metrics


@settings(max_examples=300, deadline=None)
@given(st.lists(families(), min_size=1, max_size=3))
def test_generated_families_render_as_the_library_renders_them(
    renders: list[list[Metric]],
) -> None:
    """Several renders in a row with one encoder each: kept texts never leak between them."""
    for metrics in renders:
        assert_library_bytes(metrics, times=1)


def test_only_known_formats_take_the_fast_path() -> None:
    fast: Callable[..., object] | None
    for accept in PRELOADED:
        fast = exposition._fast_encoder(choose_encoder(accept)[0])
        assert fast is not None, accept
    dots = choose_encoder("application/openmetrics-text;version=1.0.0;escaping=dots")[0]
    assert exposition._fast_encoder(dots) is None
