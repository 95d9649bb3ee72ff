"""What a source declares, and what it reads through.

A source is one module (one package for sockdiag) that ends with one `Source(...)`: its
name (the --collector.<name> flag and the `source` label), its scope, the files and
handles it needs opened inside each namespace, its options (flags), its reader, and its
renderer of metric families. The engine (exporter/engine/) knows sources only through
these declarations: adding one is its module plus one line in exporter/engine/registry.py.

A feed (the socket-destroy events) is a long-lived reader beside the polls: it declares
its handles and options the same way and hands the engine one immutable result per poll.

Per-namespace readers see the namespace through a `NetnsPoll`: the files opened inside
it, its handles, and `poll.result(other)`, the reading of another source in the same
namespace during the same poll, read once however many sources need it. A source that
needs another declares it in `requires`; the engine opens the files of both.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.sources import SourceError

if TYPE_CHECKING:
    from exporter.config import Config

T = TypeVar("T")
V = TypeVar("V")
Rows = list[tuple[str, T]]  # (netns label, the source's result in that namespace)

LAST_POLL = " (value from the last poll)"


def netns_gauge(name: str, text: str) -> GaugeMetricFamily:
    """A gauge with only the netns label; HELP says the value is from the last poll."""
    return GaugeMetricFamily(name, text + LAST_POLL, labels=["netns"])


@dataclass(frozen=True)
class DetailView:
    """Which namespaces this poll shows in full (exporter/engine/detail.py has the rule).

    full: --metrics.detail=full, every namespace in full. Otherwise (compact) the quiet
    namespaces show only the series alerts need, the rest summed into rows labelled
    netns="" (gauges summed; counters as the increments the exporter saw while they were
    quiet), so that sums over every series stay exact.
    """

    full: bool = True
    detailed: frozenset[str] = frozenset()  # compact: the namespaces shown in full
    # Shown in full since this poll: their counters are first exposed at the previous
    # poll's values, so that increase() counts the move that made them notable.
    entering: frozenset[str] = frozenset()
    previous: Mapping[tuple[str, str], object] = field(default_factory=dict)  # (source, netns)
    # (source, field) → increments of that counter in quiet namespaces, since start.
    folds: Mapping[tuple[str, str], int] = field(default_factory=dict)
    reasons: Mapping[str, str] = field(default_factory=dict)  # netns → why in full

    def shows(self, netns: str) -> bool:
        return self.full or netns in self.detailed

    def counter(self, source: str, netns: str, name: str, value: int) -> int:
        """The value to expose for a counter of a namespace shown in full."""
        if netns in self.entering:
            before = self.previous.get((source, netns))
            if isinstance(before, Mapping) and name in before:
                return int(before[name])
        return value

    def fold(self, source: str, name: str) -> int:
        return self.folds.get((source, name), 0)


FULL = DetailView()
FOLDED = ""  # the netns label of the rows that sum the quiet namespaces


@dataclass(frozen=True)
class Notable(Generic[T]):
    """What a source's `notable` sees of one namespace."""

    data: T
    previous: T | None  # its reading in the previous poll
    results: Mapping[str, object]  # the namespace's other sources' readings, by name
    peers: object  # what the source's `peers` made of every namespace's reading


class Scope(Enum):
    NETNS = "netns"  # read in every namespace; series carry the netns label
    HOST = "host"  # read once per poll for the node; series carry no netns label


@dataclass(frozen=True, eq=False)
class Option(Generic[V]):
    """A flag `--<flag>` that a source or feed declares: its default (the one home of
    that default), its parser (ValueError: a one-line usage error) and its help group.
    A bool default makes a --<flag>/--no-<flag> pair."""

    flag: str
    default: V
    help: str
    parse: Callable[[str], V]
    group: str = "collectors"
    metavar: str | None = None
    shown_default: str | None = None  # the default as --help shows it, when not str(default)

    @property
    def dest(self) -> str:
        return "option_" + self.flag.replace(".", "_").replace("-", "_")

    def value(self, config: Config) -> V:
        return cast(V, config.options.get(self.flag, self.default))

    def add_to(self, parser: argparse._ArgumentGroup) -> None:
        if isinstance(self.default, bool):
            parser.add_argument(
                f"--{self.flag}",
                dest=self.dest,
                action=argparse.BooleanOptionalAction,
                default=self.default,
                help=self.help,
            )
            return
        parser.add_argument(
            f"--{self.flag}",
            dest=self.dest,
            default=None,
            metavar=self.metavar or "_".join(self.flag.split(".")[-2:]).upper().replace("-", "_"),
            help=f"{self.help} (default {self.default_text()})",
        )

    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        pattern = getattr(self.default, "pattern", None)
        return str(pattern if pattern is not None else self.default)

    def from_args(self, args: argparse.Namespace) -> V:
        given = getattr(args, self.dest)
        if given is None:
            return self.default
        if isinstance(self.default, bool):
            return cast(V, given)
        return self.parse(given)


class Handle(Protocol):
    def close(self) -> None: ...


@dataclass(frozen=True, eq=False)
class Opener:
    """Something a source opens inside each namespace besides /proc files (a netlink
    socket), called in a thread that has entered the namespace. required: a failure
    fails the namespace's opening; otherwise the reason is kept (`NetnsFiles.handle`
    raises it) and the rest of the namespace is read."""

    name: str
    open: Callable[[Path], Handle]  # given the procfs mount (its thread-self is here)
    required: bool = True


class PollFiles(Protocol):
    """What a per-namespace reader reads through (exporter/netns/context.py)."""

    def read_net(self, name: str) -> str: ...
    def has_net(self, name: str) -> bool: ...
    def read_sysctl(self, name: str) -> str | None: ...
    def has_sysctls(self) -> bool: ...
    def handle(self, opener: Opener) -> Handle: ...
    def missing(self, opener: Opener) -> str:
        """Why an optional handle could not be opened ("" when it is open)."""
        ...

    def reopen(self, opener: Opener) -> None: ...


@dataclass
class NetnsPoll:
    """One namespace during one poll."""

    label: str
    files: PollFiles
    config: Config
    # State kept per poll worker across polls (receive buffers), by its factory.
    worker: dict[object, object]
    # What consumers of this namespace's readings demand of its sources (a feed that
    # listens here demands the sockdiag Classifier).
    demands: frozenset[str] = frozenset()
    warnings: dict[str, str] = field(default_factory=dict)  # source name → message
    _memo: dict[str, object] = field(default_factory=dict)

    def result(self, source: Source[T]) -> T:
        """`source`'s reading of this namespace in this poll, read at most once."""
        if source.name not in self._memo:
            try:
                self._memo[source.name] = source.read_netns(self)
            except SourceError as exc:
                self._memo[source.name] = exc
        value = self._memo[source.name]
        if isinstance(value, SourceError):
            raise value
        return cast(T, value)

    def scratch(self, factory: Callable[[], V]) -> V:
        """Worker-local state made once by `factory` (e.g. large receive buffers)."""
        if factory not in self.worker:
            self.worker[factory] = factory()
        return cast(V, self.worker[factory])

    def warn(self, source: Source[Any], message: str) -> None:
        self.warnings[source.name] = message


@dataclass(frozen=True, eq=False)
class Source(Generic[T]):
    name: str
    help: str
    scope: Scope
    render: Callable[[Rows[T], Config, DetailView], Iterable[Metric]]
    read_netns: Callable[[NetnsPoll], T] = field(default=lambda poll: _no_reader())
    read_host: Callable[[Config], T] = field(default=lambda config: _no_reader())
    net_files: tuple[str, ...] = ()  # /proc/thread-self/net/<name>, opened in each namespace
    sysctl_files: tuple[str, ...] = ()  # /proc/sys/net/ipv4/<name>
    openers: tuple[Opener, ...] = ()
    options: tuple[Option[Any], ...] = ()
    requires: tuple[Source[Any], ...] = ()  # read through NetnsPoll.result
    # What reading a namespace came to (tcptw_poll_namespaces' outcome); None: "read".
    outcome: Callable[[T], str] | None = None
    outcomes: tuple[tuple[str, str], ...] = ()  # (outcome, what it means), for HELP
    # Why a namespace must be shown in full ("" when quiet): the compact detail rule.
    notable: Callable[[Notable[T]], str] | None = None
    peers: Callable[[Sequence[T]], object] | None = None  # once per poll, for notable
    # The counters of a reading, by name: folded for quiet namespaces (DetailView.folds).
    counters: Callable[[T], Mapping[str, int]] | None = None


def _no_reader() -> Any:
    raise AssertionError("this source has no reader for that scope")


class FeedSession(Protocol):
    """A running feed, owned by one Poller."""

    def after_poll(self, key: int | None, label: str, poll: NetnsPoll) -> str:
        """After a namespace's sources were read (its handles and their results); returns
        why the feed cannot serve this namespace ("" when it can), logged on change."""

    def forget(self, key: int | None) -> None:
        """Before the namespace's handles close."""

    def result(self, detail: DetailView) -> object:
        """The feed's immutable reading for this poll's snapshot."""

    def close(self) -> None: ...


@dataclass(frozen=True, eq=False)
class Feed:
    """A reader that runs between polls (the destroy events)."""

    name: str
    enabled: Callable[[Config], bool]
    start: Callable[[Config], FeedSession]
    render: Callable[[object, Config, DetailView], Iterable[Metric]]
    openers: tuple[Opener, ...] = ()
    options: tuple[Option[Any], ...] = ()
    requires: tuple[Source[Any], ...] = ()
    # Demanded of the required sources in each namespace where this feed's openers
    # opened (see NetnsPoll.demands).
    demands: tuple[str, ...] = ()


def options_of(declared: Iterable[Source[Any] | Feed]) -> list[Option[Any]]:
    """Every option once, in declaration order."""
    seen: dict[str, Option[Any]] = {}
    for item in declared:
        for option in item.options:
            seen.setdefault(option.flag, option)
    return list(seen.values())


def option_values(
    declared: Iterable[Source[Any] | Feed], args: argparse.Namespace
) -> Mapping[str, object]:
    return {option.flag: option.from_args(args) for option in options_of(declared)}
