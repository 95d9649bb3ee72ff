"""timewait-exporter: TCP TIME-WAIT and ephemeral-port exhaustion, per network namespace."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("timewait-exporter")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
