# timewait-exporter container image, made of Debian bookworm packages and the hash-pinned
# wheels of image-requirements.txt, in three stages from debian:bookworm-slim:
#   build:  Debian's python3.11 and a venv (/opt/venv) of the wheels and the exporter;
#   rootfs: the runtime's root filesystem, unpacked from the Debian packages of python3.11
#           and the libraries it and the wheels link (base-files, libc6, libssl3, ...);
#   final:  FROM scratch, that root filesystem alone: the interpreter, its libraries and the
#           venv; no shell, no apt, no dpkg, no pip (135 MB; a bookworm-slim runtime with
#           apt-installed python3.11 was 198 MB). Package metadata for image scanners is in
#           /var/lib/dpkg/status.d/ and /etc/os-release, as in distroless images. To look
#           around inside: `timewait-exporter report`, or `python3`.
#
#   podman build --format docker -t timewait-exporter:0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" .
#   (docker build takes the same arguments, without --format)
#
#   docker run --rm --network host --memory 192m \
#     --cap-drop ALL --cap-add SYS_ADMIN --cap-add SYS_PTRACE \
#     --security-opt apparmor=unconfined --security-opt no-new-privileges \
#     --read-only --tmpfs /tmp -v /proc:/host/proc:ro -v /var/log/pods:/var/log/pods:ro \
#     timewait-exporter:0.1.0 serve --path.procfs=/host/proc
#
# Pinned inputs: the Debian release (bookworm); the Debian package versions below, as
# build args (PYTHON_VERSION for the interpreter; BINUTILS_VERSION for `strip`, in the
# build stage only): a newer point or security release replaces them on the mirror, so
# bump them then (`apt-cache policy python3.11-minimal binutils` in a bookworm container
# shows the current ones); the libraries at the versions apt resolves for that python
# (those of the base image where it has them); every wheel by version and hash
# (image-requirements.txt). To pin the base image as well, pass
# BASE_IMAGE=debian:bookworm-slim@sha256:<digest>.
#
# The image runs as root ON PURPOSE (no USER: uid 0, as the DaemonSet's runAsUser: 0).
# The exporter enters other network namespaces with setns(2) (CAP_SYS_ADMIN) and opens
# /proc/<pid>/ns/net of other users' processes and /proc/1/root/<nsfs mount>
# (CAP_SYS_PTRACE). Kubernetes and Docker only make added capabilities effective for
# uid 0 (there are no ambient capabilities), so a non-root user would hold none of them.
# Contain it instead: drop every other capability, no-new-privileges, a read-only root
# filesystem with /tmp on tmpfs, /proc of the host read-only (see
# deploy/kubernetes/base/daemonset.yaml). Nothing in the image writes: Python does not
# write bytecode (PYTHONDONTWRITEBYTECODE; everything is compiled at build time).
#
# The HEALTHCHECK (`timewait-exporter healthcheck`) follows the serving process's flags:
# it reads the command line of the `timewait-exporter serve` process in the container
# (its listen address and --web.config.file, for TLS) and GETs /healthz on loopback. Flags
# given to `healthcheck` itself replace that. Build with --format docker under podman, or
# the OCI format drops the HEALTHCHECK.

ARG BASE_IMAGE=debian:bookworm-slim
ARG PYTHON_VERSION=3.11.2-6+deb12u9
ARG BINUTILS_VERSION=2.40-2

FROM ${BASE_IMAGE} AS build
ARG PYTHON_VERSION
ARG BINUTILS_VERSION
# pip's index: PyPI by default, trusted through Debian's CA bundle. Behind a proxy with its
# own CA, mount that bundle read-only for the build and name it, e.g.
#   -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro --build-arg PIP_CERT=/run/host-ca.crt
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        "python3.11-venv=${PYTHON_VERSION}" \
        "binutils=${BINUTILS_VERSION}" \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY image-requirements.txt ./
RUN python3.11 -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --only-binary=:all: \
        -r image-requirements.txt
COPY pyproject.toml README.md LICENSE ./
COPY exporter/ ./exporter/
# The project's own wheel, built offline with the pinned setuptools; then pip, setuptools
# and numpy's test suites leave the venv, and the extension modules' debug information
# (uvloop's alone is 10 MB) is stripped. The wheels' bundled libraries (*.libs/) are
# left as auditwheel made them.
RUN /opt/venv/bin/pip install --no-index --no-deps --no-build-isolation . \
    && /opt/venv/bin/pip uninstall -y -q setuptools pip \
    && find /opt/venv/lib/python3.11/site-packages/numpy -depth -type d -name tests \
        -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3.11/site-packages/numpy/_core/include \
    && find /opt/venv/lib/python3.11/site-packages -name '*.so' -not -path '*.libs/*' \
        -exec strip --strip-debug {} + \
    && /opt/venv/bin/timewait-exporter --version

# The runtime's root filesystem: the Debian packages of python3.11 and of every library it
# and the wheels link (numpy: libstdc++6), unpacked without maintainer scripts (so no
# shell, apt or dpkg in the image) over a merged /usr, their control data in
# /var/lib/dpkg/status.d/ for image scanners, as in distroless images. The versions are
# those `apt-get install` resolves for the pinned python. A package missing from the list
# fails the check below.
FROM ${BASE_IMAGE} AS rootfs
ARG PYTHON_VERSION
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /debs
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        "python3.11-minimal=${PYTHON_VERSION}" \
        "libpython3.11-stdlib=${PYTHON_VERSION}" \
    && packages=( \
        python3.11-minimal libpython3.11-minimal libpython3.11-stdlib media-types \
        base-files libc6 libgcc-s1 gcc-12-base libstdc++6 zlib1g libexpat1 libssl3 \
        libffi8 libbz2-1.0 liblzma5 libuuid1 libsqlite3-0 libncursesw6 libtinfo6 \
        libreadline8 libdb5.3 libcrypt1 libnsl2 libtirpc3 libtirpc-common \
        libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1 \
    ) \
    && mapfile -t pinned < <(dpkg-query -W -f '${Package}=${Version}\n' "${packages[@]}") \
    && apt-get download "${pinned[@]}" \
    && mkdir -p /rootfs/usr/bin /rootfs/usr/lib /rootfs/usr/lib64 /rootfs/usr/sbin \
        /rootfs/var/lib/dpkg/status.d /rootfs/etc \
    && ln -s usr/bin /rootfs/bin && ln -s usr/lib /rootfs/lib \
    && ln -s usr/lib64 /rootfs/lib64 && ln -s usr/sbin /rootfs/sbin \
    && for deb in ./*.deb; do \
        dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C /rootfs; \
        name="$(dpkg-deb -f "$deb" Package)"; \
        { dpkg-deb -f "$deb"; echo "Status: install ok installed"; } \
            > "/rootfs/var/lib/dpkg/status.d/${name}"; \
    done \
    && rm -rf /var/lib/apt/lists/* /debs/*.deb /rootfs/usr/share/doc /rootfs/usr/share/man \
        /rootfs/usr/share/info /rootfs/usr/share/lintian /rootfs/usr/share/locale \
    && echo "root:x:0:0:root:/root:/usr/sbin/nologin" > /rootfs/etc/passwd \
    && echo "root:x:0:" > /rootfs/etc/group \
    && install -d -m 1777 /rootfs/tmp \
    && install -d -m 0700 /rootfs/root
COPY --from=build /opt/venv /rootfs/opt/venv
# Byte-compile the standard library (Debian does it in postinst, which did not run), and
# prove the root filesystem complete: every extension module of the standard library
# loads in it (so no library is missing), and so do the exporter and what it imports.
RUN python3.11 -m compileall -q -j 0 -s /rootfs -p / /rootfs/usr/lib/python3.11 \
    && chroot /rootfs /opt/venv/bin/python -c "import importlib, pathlib; \
[importlib.import_module(p.name.split('.')[0]) \
 for p in pathlib.Path('/usr/lib/python3.11/lib-dynload').glob('*.so')]; \
import exporter.cli, exporter.daemon, exporter.healthcheck, numpy, uvloop, aiohttp, \
bcrypt, yaml, ssl, pyroute2" \
    && chroot /rootfs /opt/venv/bin/timewait-exporter --version

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/timewait-exporter/timewait-exporter
LABEL org.opencontainers.image.title="timewait-exporter" \
      org.opencontainers.image.description="Prometheus exporter for TCP TIME-WAIT and ephemeral-port exhaustion, per network namespace" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"

COPY --from=rootfs /rootfs/ /
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /
EXPOSE 9961

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["timewait-exporter", "healthcheck"]

ENTRYPOINT ["timewait-exporter"]
CMD ["serve"]
