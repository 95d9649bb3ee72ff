"""Command line: `timewait-exporter [serve]` runs the daemon, `timewait-exporter dump` prints
one poll's exposition, `timewait-exporter report` a diagnosis from two polls."""

from __future__ import annotations

# ruff: noqa: E402 (the SIGHUP handler goes before the imports)
import signal

# A SIGHUP (systemd's reload) must never end the process, not even while it starts: the
# default action terminates it, and the imports below take a good fraction of a second.
# The daemon installs its own handler (re-read the web config) once its loop runs.
signal.signal(signal.SIGHUP, signal.SIG_IGN)

import argparse
import dataclasses
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter import __version__, log
from exporter.config import DEFAULTS, NETNS_ALL, NETNS_SELF, Config
from exporter.engine.collector import SnapshotCollector
from exporter.engine.poller import Poller
from exporter.engine.registry import COLLECTORS, FEEDS, SOURCES
from exporter.netns.context import raise_fd_limit
from exporter.sources.declare import option_values, options_of
from exporter.web.server import parse_listen_address

DEFAULT_POD_LOGS = "/var/log/pods"


MIN_POLL_INTERVAL = 0.1  # seconds; below this the poll loop only burns CPU
TELEMETRY_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr (and exit 2), as the README promises; --help
    still prints the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="timewait-exporter",
        description="Prometheus exporter for TCP TIME-WAIT and ephemeral-port exhaustion.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "dump", "report", "healthcheck"),
        default="serve",
        help="serve (default): run the daemon; dump: one poll, exposition on stdout; "
        "report: two polls --window apart, a diagnosis with findings and remedies; "
        "healthcheck: GET /healthz of the local daemon (its flags, or these), exit 0 or 1",
    )
    web = parser.add_argument_group("web")
    web.add_argument(
        "--web.listen-address",
        dest="listen_address",
        default=DEFAULTS.listen_address,
        help=f"[host]:port to listen on (default {DEFAULTS.listen_address}, every address)",
    )
    web.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default=DEFAULTS.telemetry_path,
        help=f"path of the metrics page (default {DEFAULTS.telemetry_path})",
    )
    web.add_argument(
        "--web.config.file",
        dest="web_config_file",
        default="",
        help="exporter-toolkit web config (YAML): TLS, basic auth, response headers; "
        "re-read when it or its certificates change, and on SIGHUP (default: none)",
    )
    web.add_argument(
        "--web.max-requests",
        dest="max_requests",
        type=int,
        default=DEFAULTS.max_requests,
        help="concurrent telemetry requests; more are answered 503 at once "
        f"(default {DEFAULTS.max_requests})",
    )
    web.add_argument(
        "--web.max-connections",
        dest="max_connections",
        type=int,
        default=DEFAULTS.max_connections,
        help="open connections at once; more are closed at once "
        f"(default {DEFAULTS.max_connections})",
    )
    web.add_argument(
        "--web.read-timeout",
        dest="read_timeout",
        type=float,
        default=DEFAULTS.read_timeout,
        help="seconds a client has to send a whole request head "
        f"(default {DEFAULTS.read_timeout:g})",
    )
    web.add_argument(
        "--web.idle-timeout",
        dest="idle_timeout",
        type=float,
        default=DEFAULTS.idle_timeout,
        help="seconds an idle keep-alive connection is kept; keep it above the scrape "
        f"interval (default {DEFAULTS.idle_timeout:g})",
    )
    poll = parser.add_argument_group("polling")
    poll.add_argument(
        "--poll.interval",
        dest="poll_interval",
        type=float,
        default=DEFAULTS.poll_interval,
        help=f"seconds between polls (default {DEFAULTS.poll_interval:g}); a poll starts no "
        "new namespace after this long, and the ones left over keep their last figures",
    )
    poll.add_argument(
        "--poll.workers",
        dest="poll_workers",
        type=int,
        default=DEFAULTS.poll_workers,
        help="threads that poll namespaces side by side (default: 1 where most namespaces "
        "share the host's established hash, 2 where they have their own)",
    )
    poll.add_argument(
        "--metrics.detail",
        dest="detail",
        choices=("compact", "full"),
        default=DEFAULTS.detail,
        help="compact (default): a quiet namespace shows only the series alerts read, the "
        'rest summed into netns="" rows, and a notable one everything; full: every series '
        "of every namespace",
    )
    poll.add_argument(
        "--metrics.detail-hold",
        dest="detail_hold",
        type=float,
        default=DEFAULTS.detail_hold,
        help="seconds a namespace stays in full detail after it was last notable "
        f"(default {DEFAULTS.detail_hold:g})",
    )
    poll.add_argument(
        "--netns",
        dest="netns",
        default=NETNS_ALL,
        help="which network namespaces: all (default: every one on the node), self (the "
        "exporter's own), or a comma-separated list of netns labels",
    )
    paths = parser.add_argument_group("paths")
    paths.add_argument(
        "--path.procfs", dest="procfs", default="/proc", help="procfs mount point (default /proc)"
    )
    paths.add_argument(
        "--path.sysfs", dest="sysfs", default="/sys", help="sysfs mount point (default /sys)"
    )
    paths.add_argument(
        "--path.pod-logs",
        dest="pod_logs",
        default=None,
        help="kubelet's pod log directory, for pod names (default /var/log/pods, where it exists)",
    )
    paths.add_argument(
        "--netns.name",
        dest="netns_name",
        default=None,
        help="netns label of the exporter's own namespace (default: detect)",
    )
    collectors = parser.add_argument_group("collectors")
    for source, text in COLLECTORS.items():
        collectors.add_argument(
            f"--collector.{source}",
            dest=f"collector_{source}",
            action=argparse.BooleanOptionalAction,
            default=True,
            help=text,
        )
    groups = {"collectors": collectors, "polling": poll}
    for option in options_of([*SOURCES, *FEEDS]):
        if option.group not in groups:
            groups[option.group] = parser.add_argument_group(option.group)
        option.add_to(groups[option.group])
    report = parser.add_argument_group("report")
    report.add_argument(
        "--window",
        dest="window",
        default="5s",
        help="report: time between its two polls, e.g. 5s, 500ms, 0.2 (default 5s)",
    )
    report.add_argument(
        "--format",
        dest="format",
        default="text",
        choices=("text", "json"),
        help="report: text for a terminal, json (docs/report.schema.json) for programs",
    )
    report.add_argument(
        "--fail-on",
        dest="fail_on",
        type=float,
        default=None,
        metavar="RATIO",
        help="report: exit 3 when any outbound bucket's used/capacity reaches RATIO, or "
        "when any connect() failed with EADDRNOTAVAIL during the window",
    )
    logs = parser.add_argument_group("logging")
    logs.add_argument("--log.level", dest="log_level", default="info", choices=log.LEVELS)
    logs.add_argument(
        "--log.format",
        dest="log_format",
        default="auto",
        choices=("auto", "json", "console"),
        help="auto: JSON unless stderr is a terminal",
    )
    return parser


def netns_selection(text: str) -> str | frozenset[str]:
    if text in (NETNS_ALL, NETNS_SELF):
        return text
    labels = frozenset(word.strip() for word in text.split(",") if word.strip())
    if not labels:
        raise ValueError("--netns takes all, self, or a comma-separated list of netns labels")
    return labels


def config_from_args(args: argparse.Namespace) -> Config:
    if args.poll_workers is not None and args.poll_workers < 1:
        raise ValueError("--poll.workers must be at least 1")
    return Config(
        procfs=Path(args.procfs),
        sysfs=Path(args.sysfs),
        pod_logs=Path(args.pod_logs or DEFAULT_POD_LOGS),
        netns=netns_selection(args.netns),
        netns_name=args.netns_name,
        collectors=frozenset(s for s in COLLECTORS if getattr(args, f"collector_{s}")),
        options=option_values([*SOURCES, *FEEDS], args),
        detail=args.detail,
        detail_hold=args.detail_hold,
        poll_interval=args.poll_interval,
        poll_workers=args.poll_workers,
        listen_address=args.listen_address,
        telemetry_path=args.telemetry_path,
        web_config_file=Path(args.web_config_file) if args.web_config_file else None,
        max_requests=args.max_requests,
        max_connections=args.max_connections,
        read_timeout=args.read_timeout,
        idle_timeout=args.idle_timeout,
        log_level=args.log_level,
        log_format=args.log_format,
    )


def dump(config: Config) -> int:
    """One poll, exposition on stdout, every series of every namespace (full detail).
    Exit 1 only when no source at all could be read."""
    config = dataclasses.replace(config, detail="full")
    poller = Poller(config)
    snapshot = poller.poll_once()
    poller.close()
    collector = SnapshotCollector(config)
    collector.update(snapshot)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    sys.stdout.buffer.write(generate_latest(registry))
    sys.stdout.flush()
    return 0 if any(result.ok for result in snapshot.results) else 1


def parse_window(text: str) -> float:
    """Seconds from "5s", "500ms", "2m" or a bare number of seconds."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m)?\s*", text)
    if match is None:
        raise ValueError(f"--window takes a duration such as 5s, 500ms or 0.2, got {text!r}")
    value = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2) or "s"]
    if not 0 <= value <= 3600:
        raise ValueError("--window must be between 0 and 1h")
    return value


def report(config: Config, window: float, fmt: str, fail_on: float | None) -> int:
    """Two polls `window` apart, the diagnosis on stdout. With --fail-on, exit 3 when a
    bucket's ratio reaches it or a connect() failed with EADDRNOTAVAIL in the window; 1
    when no source at all could be read; else 0."""
    from exporter.report import engine, render_json, render_text

    first, second, events = engine.observe(config, window)
    result = engine.build(first, second, fail_on, events)
    if fmt == "json":
        text = render_json.render(result)
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        text = render_text.render(result, colour=colour)
    sys.stdout.write(text)
    sys.stdout.flush()
    if not any(r.ok for r in second.results):
        return 1
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "healthcheck":
        from exporter import healthcheck

        return healthcheck.main(args, sys.argv[1:] if argv is None else argv, parser)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    problem = startup_problem(config) or path_problem(args)
    if problem:
        parser.error(problem)
    window = 0.0
    if args.command == "report":
        try:
            window = parse_window(args.window)
        except ValueError as exc:
            parser.error(str(exc))
        if args.fail_on is not None and not (math.isfinite(args.fail_on) and args.fail_on > 0):
            parser.error("--fail-on takes a positive ratio, e.g. 0.8")
    log.configure(config.log_level, config.log_format)
    raise_fd_limit()  # each namespace keeps its descriptors open between polls
    if args.command == "dump":
        return dump(config)
    if args.command == "report":
        if config.log_level == "info":
            log.configure("warning", config.log_format)  # the report is the output
        return report(config, window, args.format, args.fail_on)
    from exporter import daemon

    try:
        daemon.run(config)
    except daemon.StartupError as exc:
        print(f"timewait-exporter: {exc}", file=sys.stderr)
        return 1
    return 0


def path_problem(args: argparse.Namespace) -> str:
    """A path flag naming no directory ("" when fine). The default pod log directory may
    be missing (no kubelet on the host); one given explicitly must exist."""
    given = [("--path.procfs", args.procfs), ("--path.sysfs", args.sysfs)]
    if args.pod_logs is not None:
        given.append(("--path.pod-logs", args.pod_logs))
    for flag, path in given:
        if not Path(path).is_dir():
            return f"{flag} {path} is not a directory"
    return ""


def startup_problem(config: Config) -> str:
    """What makes the flags unusable, checked before anything starts ("" when fine)."""
    if not math.isfinite(config.poll_interval) or config.poll_interval < MIN_POLL_INTERVAL:
        return f"--poll.interval must be at least {MIN_POLL_INTERVAL:g} seconds"
    if not math.isfinite(config.detail_hold) or config.detail_hold < 0:
        return "--metrics.detail-hold must be a number of seconds, 0 or more"
    if config.max_requests < 1:
        return "--web.max-requests must be at least 1"
    if config.max_connections < 1:
        return "--web.max-connections must be at least 1"
    for flag, seconds in (
        ("--web.read-timeout", config.read_timeout),
        ("--web.idle-timeout", config.idle_timeout),
    ):
        if not math.isfinite(seconds) or seconds <= 0:
            return f"{flag} must be a positive number of seconds"
    if not config.telemetry_path.startswith("/"):
        return f"--web.telemetry-path must start with /, got {config.telemetry_path!r}"
    if not TELEMETRY_PATH.fullmatch(config.telemetry_path):
        return (
            f"--web.telemetry-path {config.telemetry_path!r} holds a character a request "
            "path cannot match (letters, digits and / . _ ~ - only)"
        )
    if config.telemetry_path in ("/", "/healthz", "/readyz"):
        return f"--web.telemetry-path {config.telemetry_path} is taken by another page"
    if config.collectors is not None and not config.collectors:
        return "every collector is disabled: nothing to export"
    try:
        parse_listen_address(config.listen_address)
    except ValueError as exc:
        return f"--web.listen-address: {exc}"
    return ""
