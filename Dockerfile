# timewait-exporter container image.
#
#   docker build -t timewait-exporter:0.1.0 .
#   docker run --rm --network host --pid host \
#     --cap-drop ALL --cap-add SYS_ADMIN --cap-add SYS_PTRACE \
#     --security-opt apparmor=unconfined --security-opt no-new-privileges \
#     -v /proc:/host/proc:ro -v /sys:/host/sys:ro -v /var/log/pods:/var/log/pods:ro \
#     timewait-exporter:0.1.0 serve --path.procfs=/host/proc --path.sysfs=/host/sys
#
# The image runs as root ON PURPOSE. The exporter enters other network namespaces with
# setns(2) (CAP_SYS_ADMIN) and opens /proc/<pid>/ns/net of other users' processes and
# /proc/1/root/<nsfs mount> (CAP_SYS_PTRACE). Kubernetes and
# Docker only make added capabilities effective for uid 0 (there are no ambient
# capabilities), so a non-root user would hold none of them. Contain it instead: drop
# every other capability, mount the root filesystem read-only, and bind /proc and /sys
# read-only (see deploy/kubernetes/base/daemonset.yaml).
FROM python:3.11.11-slim-bookworm

LABEL org.opencontainers.image.title="timewait-exporter" \
      org.opencontainers.image.description="Prometheus exporter for TCP TIME-WAIT and ephemeral-port exhaustion, per network namespace" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ ./exporter/
RUN pip install --no-cache-dir . \
    && rm -rf /src/build /src/*.egg-info

WORKDIR /
EXPOSE 9961

# /healthz answers while the process serves (no poll, no exposition rendered). Assumes
# the default --web.listen-address (:9961) over plain HTTP: with TLS from --web.config.file,
# override it (docker run --health-cmd) or disable it (--no-healthcheck).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9961/healthz', timeout=4)"]

ENTRYPOINT ["timewait-exporter"]
CMD ["serve"]
