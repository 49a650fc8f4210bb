# pyproxy container image.
#
#   docker build -t pyproxy .
#   docker run --rm -p 8080:8080 -e PYPROXY_UPSTREAM=app:8081 pyproxy
#   docker run --rm -p 8080:8080 -v "$PWD/config:/etc/pyproxy:ro" pyproxy   # your routes
#
# Stage 1 builds the wheel from the sources; stage 2 installs only that wheel and its
# dependencies on a slim base, runs as an unprivileged user and reads its config from the
# directory /etc/pyproxy (mount yours over it; saved changes are hot-reloaded, ConfigMap
# symlink swaps included). See deploy/docker/pyproxy.yaml for the default config's knobs.
# Validated by tests/deploy/test_dockerfile.py (hadolint, and the same install + CMD +
# HEALTHCHECK steps run in a fresh venv).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README* ./
COPY pyproxy ./pyproxy
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYPROXY_HEALTH_URL=http://127.0.0.1:9901/readyz
RUN groupadd --system --gid 10001 pyproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pyproxy
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl && rm -rf /tmp/wheels
COPY deploy/docker/pyproxy.yaml /etc/pyproxy/pyproxy.yaml
USER 10001:10001
# 8080: the proxy listener; 9901: admin API, /metrics, /readyz, /healthz, dashboard.
EXPOSE 8080 9901
# SIGTERM drains (docs/operations.md): /readyz turns 503, drain_delay, then in-flight requests finish.
STOPSIGNAL SIGTERM
# slim has no curl: probe /readyz with the interpreter that is already there.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['PYPROXY_HEALTH_URL'], timeout=2)"]
CMD ["pyproxy", "run", "-c", "/etc/pyproxy"]
