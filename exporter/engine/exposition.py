"""The /metrics bodies, rendered once per poll in the poll's thread, plain and gzipped, in
every format a scraper has asked for, so that a scrape only copies bytes: its cost does
not grow with the namespaces or series.

The format is prometheus_client's own choice (exposition.choose_encoder) from the Accept
header: text 0.0.4 by default, OpenMetrics when asked, with its version and escaping. A
content type seen for the first time is rendered at once off the event loop, then kept
up to date with the others at each poll."""

from __future__ import annotations

import functools
import gzip
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import exposition
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString, parse_version
from prometheus_client.validation import _is_valid_legacy_metric_name

Encoder = Callable[[Collector], bytes]
_float_text: Callable[[object], str] = floatToGoString
# Unused by ALLOWUTF8 escaping, the only one label values get (the text encoder passes
# False there).
_rune = om._is_legacy_labelname_rune
MAX_FORMATS = 16  # Accept headers are client input: bound what is rendered each poll
# What Prometheus itself sends (2.x and 3.x): rendered from the first poll on.
PRELOADED = (
    "",
    "application/openmetrics-text;version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
)


@dataclass(frozen=True)
class Body:
    plain: bytes
    gzipped: bytes


class Exposition:
    def __init__(self, registry: Collector) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._encoders: dict[str, Encoder] = {}
        for accept in PRELOADED:
            encoder, content_type = choose_encoder(accept)
            self._encoders[content_type] = encoder
        self._bodies: dict[str, Body] = {}
        self._served = False  # a /metrics body went out since the last refresh
        self.refresh()

    def mark_served(self) -> None:
        """A scrape took the current bodies (the server, on the loop)."""
        self._served = True

    def was_served(self) -> bool:
        """Whether a scraper saw the bodies of the last poll (read before the next
        refresh): a series first exposed at a previous value must be seen once."""
        return self._served

    @staticmethod
    def negotiate(accept: str) -> tuple[Encoder, str]:
        """(encoder, content type) for an Accept header: string work only, loop-safe."""
        return choose_encoder(accept)

    def refresh(self) -> None:
        """Render every known format now (call from a worker thread, never the loop).
        The registry is collected once for all of them."""
        with self._lock:
            encoders = dict(self._encoders)
        collected = Collected(list(self.registry.collect()))
        bodies = {
            content_type: _render(encoder, collected) for content_type, encoder in encoders.items()
        }
        with self._lock:
            self._bodies = bodies
            self._served = False

    def cached(self, content_type: str) -> Body | None:
        with self._lock:
            return self._bodies.get(content_type)

    def render(self, content_type: str, encoder: Encoder) -> Body:
        """A format not rendered yet: render it now (worker thread) and from now on at
        every refresh, unless MAX_FORMATS are known already."""
        body = _render(encoder, Collected(list(self.registry.collect())))
        with self._lock:
            if content_type in self._encoders or len(self._encoders) < MAX_FORMATS:
                self._encoders[content_type] = encoder
                self._bodies = {**self._bodies, content_type: body}
        return body


class Collected:
    """The metrics of one collection, handed to every format (a Collector)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics
        self.values = _Values()

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def _render(encoder: Encoder, collected: Collected) -> Body:
    plain = encode(encoder, collected)
    return Body(plain, gzip.compress(plain, compresslevel=1))


# -- the formats Prometheus asks for, rendered as prometheus_client renders them ----------
#
# Its encoders escape every metric name, label name and label value of every sample again
# at each render (character by character for OpenMetrics names), which took most of a
# render's time. Here each sample's text before its value is made by the same library
# functions, once per distinct (name, labels) and kept while it is in use; its value once
# per render. Anything these do not handle (timestamps, exemplars, native histograms, a
# format or escaping other than these) goes to the library's own encoder, as does
# anything that raises (the library then raises its own error). tests/engine/
# test_exposition.py checks the bytes are the library's.


def encode(encoder: Encoder, collected: Collected) -> bytes:
    """encoder(collected): the body of one format."""
    fast = _fast_encoder(encoder)
    if fast is not None:
        try:
            body = fast(collected)
        except Exception:  # the library says what is wrong, in its own words
            body = None
        if body is not None:
            return body
    return encoder(collected)


_Fast = Callable[[Collected], bytes | None]
_FAST: dict[tuple[str, str], _Fast] = {}


def _fast_encoder(encoder: Encoder) -> _Fast | None:
    if encoder is exposition.generate_latest:
        return _FAST[("text", om.UNDERSCORES)]
    if not isinstance(encoder, functools.partial) or encoder.args:
        return None
    keywords = dict(encoder.keywords)
    escaping = keywords.pop("escaping", None)
    if encoder.func is exposition.generate_latest and not keywords:
        return _FAST.get(("text", str(escaping)))
    if encoder.func is om.generate_latest and set(keywords) <= {"version"}:
        version = keywords.get("version", "1.0.0")
        if isinstance(version, str) and parse_version(version) >= (1, 0, 0):
            return _FAST.get(("openmetrics", str(escaping)))
    return None


class _Values:
    """floatToGoString of the sample values of one collection, each once."""

    def __init__(self) -> None:
        self._text: dict[object, str] = {}

    def text(self, value: float) -> str:
        if not value:  # 0.0 and -0.0 are equal keys but print differently
            return _float_text(value)
        found = self._text.get(value)  # equal numbers print alike (float() of each)
        if found is None:
            found = self._text[value] = _float_text(value)
        return found


class _Prefixes:
    """Each sample's text before its value, by (name, labels); kept across renders while
    in use (a key unused for a whole render is dropped)."""

    def __init__(self, make: Callable[[str, dict[str, str]], str]) -> None:
        self._make = make
        self._current: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._previous: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        self._lock = threading.Lock()  # renders of a new format run beside the poll's

    def __enter__(self) -> Callable[[str, dict[str, str]], str]:
        self._lock.acquire()
        current, previous, make = self._current, self._previous, self._make

        def prefix(name: str, labels: dict[str, str]) -> str:
            key = (name, tuple(labels.items()))
            found = current.get(key)
            if found is None:
                found = previous.get(key)
                if found is None:
                    found = make(name, labels)
                current[key] = found
            return found

        return prefix

    def __exit__(self, *exc: object) -> None:
        self._previous, self._current = self._current, {}
        self._lock.release()


def _plain(samples: Iterable[Sample]) -> bool:
    """No timestamp, exemplar or native histogram: what the fast encoders handle."""
    return all(
        s.timestamp is None and s.exemplar is None and s.native_histogram is None for s in samples
    )


def _text_encoder(escaping: str) -> _Fast:
    """exposition.generate_latest(registry, escaping)."""
    escape_name = functools.lru_cache(maxsize=4096)(
        functools.partial(om.escape_metric_name, escaping=escaping)
    )

    def make(name: str, labels: dict[str, str]) -> str:
        # exposition.generate_latest's sample_line, up to the value.
        if labels:
            labelstr = ",".join(
                [
                    f'{om.escape_label_name(k, escaping)}="{om._escape(v, om.ALLOWUTF8, _rune)}"'
                    for k, v in sorted(labels.items())
                ]
            )
        else:
            labelstr = ""
        if escaping != om.ALLOWUTF8 or _is_valid_legacy_metric_name(name):
            if labelstr:
                labelstr = f"{{{labelstr}}}"
            return f"{om.escape_metric_name(name, escaping)}{labelstr} "
        maybe_comma = ""
        if labelstr:
            maybe_comma = ","
        return f"{{{om.escape_metric_name(name, escaping)}{maybe_comma}{labelstr}}} "

    prefixes = _Prefixes(make)
    suffixes = ("_created", "_gsum", "_gcount")

    def encode(collected: Collected) -> bytes | None:
        metrics = collected.metrics
        if not all(_plain(metric.samples) for metric in metrics):
            return None
        value = collected.values.text
        output: list[str] = []
        append = output.append
        with prefixes as prefix:
            for metric in metrics:
                mname = metric.name
                mtype = metric.type
                if mtype == "counter":
                    mname = mname + "_total"
                elif mtype == "info":
                    mname = mname + "_info"
                    mtype = "gauge"
                elif mtype == "stateset":
                    mtype = "gauge"
                elif mtype == "gaugehistogram":
                    mtype = "histogram"
                elif mtype == "unknown":
                    mtype = "untyped"
                name = escape_name(mname)
                doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
                append(f"# HELP {name} {doc}\n")
                append(f"# TYPE {name} {mtype}\n")
                special = {metric.name + suffix: suffix for suffix in suffixes}
                om_samples: dict[str, list[str]] = {}
                for s in metric.samples:
                    line = f"{prefix(s.name, s.labels)}{value(s.value)}\n"
                    suffix = special.get(s.name)
                    if suffix is None:
                        append(line)
                    else:
                        om_samples.setdefault(suffix, []).append(line)
                for suffix, lines in sorted(om_samples.items()):
                    name = escape_name(metric.name + suffix)
                    append(f"# HELP {name} {doc}\n")
                    append(f"# TYPE {name} gauge\n")
                    output.extend(lines)
        return "".join(output).encode("utf-8")

    return encode


def _openmetrics_encoder(escaping: str) -> _Fast:
    """openmetrics.exposition.generate_latest(registry, escaping, version >= 1.0.0)."""
    escape_name = functools.lru_cache(maxsize=4096)(
        functools.partial(om.escape_metric_name, escaping=escaping)
    )

    def make(name: str, labels: dict[str, str]) -> str:
        # openmetrics.exposition.generate_latest's sample line, up to the value.
        if escaping == om.ALLOWUTF8 and not _is_valid_legacy_metric_name(name):
            labelstr = om.escape_metric_name(name, escaping)
            if labels:
                labelstr += ","
        else:
            labelstr = ""
        if labels:
            items = sorted(labels.items())
            labelstr += ",".join(
                [
                    f'{om.escape_label_name(k, escaping)}="'
                    f'{om._escape(v, om.ALLOWUTF8, om._is_legacy_labelname_rune)}"'
                    for k, v in items
                ]
            )
        if labelstr:
            labelstr = "{" + labelstr + "}"
        if (escaping != om.ALLOWUTF8) or _is_valid_legacy_metric_name(name):
            return f"{om._escape(name, escaping, om._is_legacy_labelname_rune)}{labelstr} "
        return f"{labelstr} "

    prefixes = _Prefixes(make)

    def encode(collected: Collected) -> bytes | None:
        metrics = collected.metrics
        if not all(_plain(metric.samples) for metric in metrics):
            return None
        value = collected.values.text
        output: list[str] = []
        append = output.append
        with prefixes as prefix:
            for metric in metrics:
                name = escape_name(metric.name)
                doc = om._escape(metric.documentation, om.ALLOWUTF8, om._is_legacy_labelname_rune)
                append(f"# HELP {name} {doc}\n")
                append(f"# TYPE {name} {metric.type}\n")
                if metric.unit:
                    append(f"# UNIT {name} {metric.unit}\n")
                for s in metric.samples:
                    text = value(s.value) if s.value is not None else ""
                    append(f"{prefix(s.name, s.labels)}{text}\n")
        append("# EOF\n")
        return "".join(output).encode("utf-8")

    return encode


for _escaping in (om.UNDERSCORES, om.ALLOWUTF8):
    _FAST[("text", _escaping)] = _text_encoder(_escaping)
    _FAST[("openmetrics", _escaping)] = _openmetrics_encoder(_escaping)
