"""The container image without Docker or a registry, for tests/test_image.py.

- **A stand-in base.** The Dockerfile starts from `debian:bookworm-slim`; here an image of
  the same packages is built by `mmdebstrap --variant=minbase` with the dpkg path
  excludes of Debian's official slim images (docs, man pages, locales), merged /usr, and
  the same three suites. The tarball is cached under CACHE_DIR, keyed by everything that
  makes it (release, suites, variant, excludes), and rebuilt after MAX_AGE so that the
  package versions it was made from stay current. What it does not prove: the official
  image's exact bytes and digest (it is built by debuerreotype from a dated snapshot).
- **A throwaway podman store.** `--root`/`--runroot` in a temporary directory, and a
  containers.conf (named by CONTAINERS_CONF) with the settings this kind of machine needs:
  runc (crun refuses a cgroup v1 hybrid layout), cgroupfs, a file events logger, and
  ulimits podman may set without CAP_SYS_RESOURCE.
- **The build.** The shipped Dockerfile, unmodified, with `--format docker` (the OCI
  format drops HEALTHCHECK), `--network host`, `--pull=never`, and build arguments only:
  the Debian package versions the mirror offers now (the Dockerfile's pins are its
  defaults), pip's index as this machine's pip is configured, and the host's CA bundle
  mounted read-only for the build only (pip reaches the index through the host's trust
  store).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
CACHE_DIR = Path(os.environ.get("TIMEWAIT_IMAGE_CACHE", "/var/cache/timewait-exporter-test"))
MAX_AGE = 3 * 86400.0  # seconds a cached base is used before it is rebuilt
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA = "/run/host-ca.crt"  # where the build sees it (PIP_CERT)
TOOLS = ("podman", "runc", "mmdebstrap", "ip", "ss", "nsenter")
# Debian's slim images (debuerreotype's slimify) keep no docs, man pages or locales.
SLIM_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
MIRROR = "http://deb.debian.org"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def missing_tools() -> list[str]:
    return [name for name in TOOLS if shutil.which(name) is None]


def dockerfile_text() -> str:
    return DOCKERFILE.read_text()


def dockerfile_args() -> dict[str, str]:
    """The Dockerfile's ARG defaults (the last one wins)."""
    found: dict[str, str] = {}
    for match in re.finditer(r"^ARG (\w+)=(\S*)$", dockerfile_text(), re.MULTILINE):
        found[match.group(1)] = match.group(2)
    return found


def base_image() -> str:
    """The Dockerfile's base image (its BASE_IMAGE default)."""
    return dockerfile_args()["BASE_IMAGE"]


def pinned_packages() -> dict[str, list[str]]:
    """Build argument → the Debian packages the Dockerfile pins with it
    ("python3.11-minimal=${PYTHON_VERSION}")."""
    pins: dict[str, list[str]] = {}
    for package, arg in re.findall(r'"([a-z0-9][a-z0-9.+-]*)=\$\{(\w+)\}"', dockerfile_text()):
        pins.setdefault(arg, []).append(package)
    return pins


def release() -> str:
    """The Debian release of the base image's tag (debian:bookworm-slim → bookworm)."""
    match = re.fullmatch(r"(?:docker\.io/(?:library/)?)?debian:(\w+)-slim", base_image())
    assert match, f"the stand-in is built for debian:<release>-slim, not {base_image()}"
    return match.group(1)


def mmdebstrap_command(target: Path, versions: Path) -> list[str]:
    name = release()
    packages = sorted({p for ps in pinned_packages().values() for p in ps})
    return [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=tar",
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        *(f"--dpkgopt={option}" for option in SLIM_EXCLUDES),
        # The versions the mirror offers now for the packages the Dockerfile pins.
        '--customize-hook=chroot "$1" apt-cache policy ' + " ".join(packages) + f" > {versions}",
        name,
        str(target),
        f"deb {MIRROR}/debian {name} main",
        f"deb {MIRROR}/debian {name}-updates main",
        f"deb {MIRROR}/debian-security {name}-security main",
    ]


def _key(command: Sequence[str]) -> str:
    return hashlib.sha256("\0".join(command).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Base:
    tarball: Path
    versions: dict[str, str]  # package → the mirror's candidate version
    built: bool  # False when it came from the cache


def parse_policy(text: str) -> dict[str, str]:
    """package → Candidate from `apt-cache policy` output."""
    out: dict[str, str] = {}
    package = ""
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            package = line[:-1]
        elif line.strip().startswith("Candidate:") and package:
            out[package] = line.split(":", 1)[1].strip()
    return out


def stand_in_base(refresh: bool = False) -> Base:
    """The cached base tarball, built when missing, older than MAX_AGE or `refresh`."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    probe = mmdebstrap_command(Path("/tarball"), Path("/versions"))
    key = f"{release()}-{_key(probe)}"
    tarball = CACHE_DIR / f"base-{key}.tar"
    versions = CACHE_DIR / f"base-{key}.versions"
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; others wait and reuse it
        fresh = (
            tarball.exists()
            and versions.exists()
            and time.time() - tarball.stat().st_mtime < MAX_AGE
        )
        built = False
        if refresh or not fresh:
            partial = tarball.with_name(tarball.name + ".partial")
            partial_versions = versions.with_name(versions.name + ".partial")
            result = subprocess.run(
                mmdebstrap_command(partial, partial_versions),
                capture_output=True,
                text=True,
                timeout=600,
            )
            if result.returncode != 0:
                partial.unlink(missing_ok=True)
                raise RuntimeError(f"mmdebstrap failed:\n{result.stderr[-3000:]}")
            partial_versions.replace(versions)
            partial.replace(tarball)
            built = True
        for old in CACHE_DIR.glob("base-*"):  # other keys: superseded bases
            if old not in (tarball, versions):
                old.unlink(missing_ok=True)
    return Base(tarball, parse_policy(versions.read_text()), built)


def pip_settings() -> dict[str, str]:
    """pip's index settings on this machine (environment first, then `pip config`), as
    PIP_* build arguments; file:// indexes are left out (the build cannot see them)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    )
    config: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition("=")
        key = name.rsplit(".", 1)[-1]
        # the environment (":env:") wins over files; later files win over earlier
        if key in ("index-url", "extra-index-url", "trusted-host") and (
            key not in config or name.startswith(":env:")
        ):
            config[key] = value.strip("'\"")
    out: dict[str, str] = {}
    for key in ("index-url", "extra-index-url", "trusted-host"):
        value = os.environ.get("PIP_" + key.upper().replace("-", "_"), config.get(key, ""))
        words = [w for w in value.split() if not w.startswith("file:")]
        if words:
            out["PIP_" + key.upper().replace("-", "_")] = " ".join(words)
    return out


class Podman:
    """podman with its own store under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        conf = directory / "containers.conf"
        directory.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.prefix = [
            "podman",
            "--root",
            str(directory / "root"),
            "--runroot",
            str(directory / "run"),
            "--storage-driver",
            "overlay",
            "--tmpdir",
            str(directory / "tmp"),
        ]
        (directory / "tmp").mkdir(exist_ok=True)

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.prefix, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)}: exit {result.returncode}\n"
                f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
            )
        return result

    def inspect(self, kind: str, name: str) -> dict[str, object]:
        document = json.loads(self.run(kind, "inspect", name).stdout)
        assert isinstance(document, list) and len(document) == 1
        found = document[0]
        assert isinstance(found, dict)
        return found

    def destroy(self) -> None:
        """Remove every container and image of the store, then the store itself."""
        self.run("rm", "--all", "--force", "--time", "0", check=False)
        self.run("system", "reset", "--force", check=False, timeout=120)
        with contextlib.suppress(OSError):
            subprocess.run(
                ["umount", "-R", str(self.directory / "root" / "overlay")], capture_output=True
            )
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True)
class Built:
    tag: str
    build_args: dict[str, str]
    base_built: bool
    seconds: float
    log: str


def build_args(versions: dict[str, str]) -> dict[str, str]:
    """Debian versions the mirror offers where they differ from the Dockerfile's pins."""
    defaults = dockerfile_args()
    out: dict[str, str] = {}
    for arg, packages in pinned_packages().items():
        offered = {versions.get(p, "") for p in packages}
        assert len(offered) == 1 and "" not in offered and "(none)" not in offered, (
            f"the mirror offers {arg} packages {packages} as {offered}"
        )
        (version,) = offered
        if version != defaults.get(arg):
            out[arg] = version
    return out


def build(podman: Podman, tag: str, revision: str) -> Built:
    """The stand-in base imported as the Dockerfile's base, then the Dockerfile built.
    A build that fails because the mirror replaced a cached version is retried once on
    a rebuilt base."""
    started = time.monotonic()
    base = stand_in_base()
    log = ""
    for attempt in (1, 2):
        podman.run("import", str(base.tarball), base_image(), timeout=300)
        args = {
            **build_args(base.versions),
            **pip_settings(),
            "PIP_CERT": BUILD_CA,
            "REVISION": revision,
        }
        command = [
            "build",
            "--format",
            "docker",
            "--network",
            "host",
            "--pull=never",
            "--jobs=2",  # the build and rootfs stages download side by side
            "--volume",
            f"{HOST_CA}:{BUILD_CA}:ro",
            "--tag",
            tag,
            *(f"--build-arg={k}={v}" for k, v in sorted(args.items())),
            str(REPO),
        ]
        result = podman.run(*command, check=False, timeout=900)
        log = result.stdout + result.stderr
        if result.returncode == 0:
            return Built(tag, args, base.built, time.monotonic() - started, log)
        if attempt == 1 and not base.built and "was not found" in log:
            base = stand_in_base(refresh=True)
            continue
        break
    raise AssertionError(f"podman build failed:\n{log[-6000:]}")


@contextlib.contextmanager
def holder(namespace: str) -> Iterator[subprocess.Popen[bytes]]:
    """A process inside /run/netns/<namespace>: a container with its own PID namespace
    finds namespaces through processes (/proc/1 of the host may be unreadable)."""
    process = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{namespace}", "sleep", "3600"],
        stdin=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()
