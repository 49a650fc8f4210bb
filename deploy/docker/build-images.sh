#!/usr/bin/env bash
# Builds the images the compose lab and the container tests run:
#
#   pyproxy:local                the Dockerfile at the repository root
#   pyproxy-prometheus:bookworm  Prometheus from Debian's package (base/build-base.sh)
#
# The pyproxy image's base is $PYPROXY_BASE_IMAGE: python:3.11-slim when the engine has it or
# can pull it, else the stand-in made from Debian packages (pyproxy-base:bookworm, built
# here when missing). Set it to skip the guess (CI sets pyproxy-base:bookworm).
#
# The build stage, which compiles the hot path, runs on $PYPROXY_BUILD_IMAGE: unset, the
# Dockerfile's default (python:3.11) on the official base, and on the Debian stand-in its
# twin with gcc and the Python headers (pyproxy-build-base:bookworm, built here when missing):
# both stages must have the same Python at the same path.
#
# This machine's settings reach only the build stage, never the image: a CA bundle for pip
# ($PIP_CERT) as the BuildKit secret `pip_cert`, $PIP_INDEX_URL / $PIP_TRUSTED_HOST as build
# arguments. $PYPROXY_BUILD_NETWORK (default: the engine's default) is passed as `docker
# build --network` for engines whose bridge cannot reach the package index.
set -euo pipefail
cd "$(dirname "$0")/../.."

docker=${DOCKER:-docker}
# BuildKit is needed (the secret mount). A CLI of Docker 23 or later builds with BuildKit only
# through the buildx plugin; Debian's docker.io CLI (20.10) has it built in. Without buildx,
# prefer Debian's CLI when it is there.
if [ -z "${DOCKER:-}" ] && ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then
    docker=/usr/bin/docker
fi
export DOCKER=$docker
here=deploy/docker

base=${PYPROXY_BASE_IMAGE:-}
if [ -z "$base" ]; then
    if "$docker" image inspect python:3.11-slim >/dev/null 2>&1 \
            || timeout 60 "$docker" pull -q python:3.11-slim >/dev/null 2>&1; then
        base=python:3.11-slim
    else
        echo "python:3.11-slim cannot be pulled: building on the Debian stand-in base" >&2
        base=pyproxy-base:bookworm
    fi
fi
build_image=${PYPROXY_BUILD_IMAGE:-}
if [ "$base" = pyproxy-base:bookworm ]; then
    "$here/base/build-base.sh" python
    build_image=${build_image:-pyproxy-build-base:bookworm}
fi
if [ "$build_image" = pyproxy-build-base:bookworm ]; then
    "$here/base/build-base.sh" python-build
fi
"$here/base/build-base.sh" prometheus

args=(--build-arg "BASE_IMAGE=$base" --tag pyproxy:local)
if [ -n "$build_image" ]; then
    args+=(--build-arg "BUILD_IMAGE=$build_image")
fi
for setting in PIP_INDEX_URL PIP_TRUSTED_HOST; do
    if [ -n "${!setting:-}" ]; then
        args+=(--build-arg "$setting")
    fi
done
if [ -n "${PIP_CERT:-}" ] && [ -s "$PIP_CERT" ]; then
    args+=(--secret "id=pip_cert,src=$PIP_CERT")
fi
if [ -n "${PYPROXY_BUILD_NETWORK:-}" ]; then
    args+=(--network "$PYPROXY_BUILD_NETWORK")
fi
started=$(date +%s)
DOCKER_BUILDKIT=1 "$docker" build --progress=plain "${args[@]}" . >&2
echo "pyproxy:local built on $base (build stage on ${build_image:-python:3.11})" \
    "in $(( $(date +%s) - started )) s;" \
    "$("$docker" image inspect --format '{{.Size}}' pyproxy:local) bytes"
