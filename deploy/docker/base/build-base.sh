#!/usr/bin/env bash
# Stand-in base images made from Debian packages, for machines that cannot reach an image
# registry (CI among them): debootstrap a minimal bookworm root filesystem and `docker
# import` it. Needs root, debootstrap and a running Docker engine.
#
#   deploy/docker/base/build-base.sh python        # pyproxy-base:bookworm (python3, venv, pip)
#   deploy/docker/base/build-base.sh python-build  # pyproxy-build-base:bookworm (the same, with
#                                                  # gcc and the headers to compile the hot path)
#   deploy/docker/base/build-base.sh prometheus    # pyproxy-prometheus:bookworm
#
# The root filesystem is kept as a tarball in $PYPROXY_IMAGE_CACHE (default
# ~/.cache/pyproxy-images), so a later run -- even against a fresh engine -- only imports it.
# Its name carries a hash of the recipe (this script's steps and the kind's packages): a
# changed recipe builds anew, and adding or changing one kind leaves the others' tarballs
# valid. Delete the tarball to fetch the packages again. The mirror is the one this machine's
# apt sources name (override with DEBIAN_MIRROR). Python in bookworm is 3.11, what pyproxy's
# requires-python asks for.
set -euo pipefail

kind=${1:?usage: build-base.sh python|python-build|prometheus}
suite=bookworm
docker=${DOCKER:-docker}
cache=${PYPROXY_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pyproxy-images}

case $kind in
    python)
        image=pyproxy-base:$suite
        packages=python3,python3-venv,python3-pip,ca-certificates
        changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
                 --change 'ENV LANG=C.UTF-8'
                 --change 'CMD ["python3"]') ;;
    python-build)
        # The Dockerfile's build stage: the runtime base's packages (its Python, the same
        # bookworm release, so the venv and the extensions built here run there) plus what
        # mypyc's C needs. Never a runtime base: the compiler stays out of the image.
        image=pyproxy-build-base:$suite
        packages=python3,python3-venv,python3-pip,python3-dev,gcc,libc6-dev,ca-certificates
        changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
                 --change 'ENV LANG=C.UTF-8'
                 --change 'CMD ["python3"]') ;;
    prometheus)
        image=pyproxy-prometheus:$suite
        packages=prometheus,ca-certificates
        # Debian's package runs as the `prometheus` user it creates; the web UI assets live
        # in /usr/share/prometheus. Storage in /prometheus, as in the upstream image.
        changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
                 --change 'USER prometheus'
                 --change 'WORKDIR /prometheus'
                 --change 'EXPOSE 9090'
                 --change 'ENTRYPOINT ["/usr/bin/prometheus"]'
                 --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]') ;;
    *) echo "unknown base: $kind (python|python-build|prometheus)" >&2; exit 2 ;;
esac

if "$docker" image inspect "$image" >/dev/null 2>&1; then
    echo "$image: already in the engine"
    exit 0
fi

mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)\/\?$/\1/p' \
    /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)}
mirror=${mirror:-$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' \
    /etc/apt/sources.list 2>/dev/null)}
mirror=${mirror:-http://deb.debian.org/debian}

# The recipe: every line of this script but the choice of kind above, and this kind's
# packages. The image's --change settings are applied at import, not part of the tarball.
recipe=$( { sed '/^case \$kind in$/,/^esac$/d' "$0"; echo "$packages"; } \
    | sha256sum | cut -c1-12)
tarball=$cache/$kind-$suite-$recipe.tar
if [ ! -s "$tarball" ]; then
    mkdir -p "$cache"
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    chmod 755 "$rootfs"  # it becomes the image's /: every user must reach into it
    echo "$image: debootstrap $suite from $mirror"
    debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" \
        >"$cache/debootstrap-$kind.log" 2>&1 \
        || { tail -n 30 "$cache/debootstrap-$kind.log" >&2; exit 1; }
    # Nothing of this machine goes into the image: no apt lists or caches, no logs, and a
    # resolv.conf the engine replaces at run time anyway.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/* "$rootfs"/tmp/*
    # Nor what a container never reads: documentation and translations (~50 MB).
    rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/usr/share/locale/*
    : >"$rootfs/etc/resolv.conf"
    if [ "$kind" = prometheus ]; then
        mkdir -p "$rootfs/prometheus"
        chroot "$rootfs" chown prometheus:prometheus /prometheus
    fi
    tar -C "$rootfs" --numeric-owner -cf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
fi
"$docker" import "${changes[@]}" "$tarball" "$image" >/dev/null
echo "$image: imported from $tarball"
