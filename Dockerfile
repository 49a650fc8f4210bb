# pyproxy container image.
#
#   docker build -t pyproxy .
#   docker run --rm -p 8080:8080 -e PYPROXY_UPSTREAM=app:8081 pyproxy
#   docker run --rm -p 8080:8080 -v "$PWD/config:/etc/pyproxy:ro" pyproxy   # your routes
#
# Stage 1 (on BUILD_IMAGE) builds the wheel, compiling the hot path with mypyc (setup.py,
# pyproxy/compiled.py), and installs it with its dependencies into a venv (/opt/pyproxy).
# Stage 2 (on BASE_IMAGE, no compiler) copies only that venv, runs as an unprivileged user
# (uid 10001) and reads its config from the directory /etc/pyproxy (mount yours over it;
# saved changes are hot-reloaded, ConfigMap symlink swaps included). See
# deploy/docker/pyproxy.yaml for the default config's knobs. Needs BuildKit (the default
# builder since Docker 23; set DOCKER_BUILDKIT=1 on older engines).
#
# The two images must carry the same Python at the same path, on the same Debian release
# (the venv's interpreter link and the extensions' libc): python:3.11 has gcc and the Python
# headers, python:3.11-slim has neither, and both put Python in /usr/local/bin. The build
# fails rather than ship a pure-Python image when compiling fails.
#
# Without a registry, build on bases made from Debian packages (deploy/docker/README.md):
#   deploy/docker/base/build-base.sh python
#   deploy/docker/base/build-base.sh python-build
#   docker build --build-arg BASE_IMAGE=pyproxy-base:bookworm \
#       --build-arg BUILD_IMAGE=pyproxy-build-base:bookworm -t pyproxy .
# Build-time settings of your network stay out of the image: pip's index comes as build
# arguments (PIP_INDEX_URL, PIP_TRUSTED_HOST), a CA bundle for it as the BuildKit secret
# `pip_cert` (--secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt); both reach
# only the build stage. Tested on the built image by tests/containers/.

ARG BASE_IMAGE=python:3.11-slim
ARG BUILD_IMAGE=python:3.11

FROM ${BUILD_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.py README* ./
COPY pyproxy ./pyproxy
# A venv, not the system site-packages: Debian's Python refuses pip installs outside one
# (PEP 668), and the final stage then copies one directory. `pip wheel` fetches the build
# requirements (mypy, which brings mypyc) into an isolated environment that stays here.
# setup.py falls back to pure Python when compiling fails, so that a developer's install
# never fails: the image checks what it got and refuses to ship the fallback (--verbose
# keeps the compiler's messages in the build log for that case).
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/pyproxy \
    && /opt/pyproxy/bin/pip wheel --verbose --no-cache-dir --no-deps --wheel-dir /wheels . \
    && /opt/pyproxy/bin/pip install --no-cache-dir /wheels/*.whl \
    && /opt/pyproxy/bin/pip uninstall --yes pip \
    && build=$(/opt/pyproxy/bin/pyproxy --version) && echo "$build" \
    && case $build in *"compiled hot path"*) ;; \
        *) echo "the image ships the compiled hot path only; see the compiler's error above" >&2; \
           exit 1 ;; \
    esac

FROM ${BASE_IMAGE}
ENV PATH=/opt/pyproxy/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYPROXY_HEALTH_URL=http://127.0.0.1:9901/readyz
RUN groupadd --system --gid 10001 pyproxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin pyproxy
COPY --from=build /opt/pyproxy /opt/pyproxy
COPY deploy/docker/pyproxy.yaml /etc/pyproxy/pyproxy.yaml
USER 10001:10001
# 8080: the proxy listener; 9901: admin API, /metrics, /readyz, /healthz, dashboard.
EXPOSE 8080 9901
# SIGTERM drains (docs/operations.md): /readyz turns 503, drain_delay, then in-flight requests finish.
STOPSIGNAL SIGTERM
# Neither base has curl: probe /readyz with the interpreter that is already there.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['PYPROXY_HEALTH_URL'], timeout=2)"]
CMD ["pyproxy", "run", "-c", "/etc/pyproxy"]
