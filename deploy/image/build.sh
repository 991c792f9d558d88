#!/bin/bash
# Builds the tracer OCI image from Debian packages only, no registry:
#   1. a minimal Debian rootfs (debootstrap), cached under $CACHE by the hash
#      of its package list, so rebuilds skip this slow step;
#   2. tracer's wheels (built on the host, where pip's index is) installed
#      into a virtualenv inside a copy of that rootfs by its own python3, the
#      BPF objects copied in, pip and the package caches removed;
#   3. the tree as one tar with fixed order, owners and times
#      (SOURCE_DATE_EPOCH), imported with `podman import`, and kept as
#      $CACHE/tracer-KEY.tar (for `podman import` or `ctr image import` elsewhere).
# KEY hashes the rootfs key, the sources that go into the wheel and the BPF
# objects: an image already built from the same inputs is not built again.
# Usage: deploy/image/build.sh [TAG]   (run from the repository, as root)
# Prints the image id, its size in bytes and the tar's path.
set -euo pipefail

TAG=${1:-localhost/tracer:latest}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${TRACER_IMAGE_CACHE:-/var/cache/tracer-image}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Run time only: python, libbpf, and python3-venv to make the virtualenv.
PACKAGES=python3,python3-venv,libbpf1,ca-certificates
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct)}

key=$(printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES" | sha256sum | cut -c1-12)
base="$CACHE/rootfs-$key"
mkdir -p "$CACHE"
chmod 0700 "$CACHE"
if [ ! -e "$base/.complete" ]; then
    echo "debootstrap $SUITE into $base (once; cached)" >&2
    rm -rf "$base" "$base.tmp"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$base.tmp" "$MIRROR" >&2
    # What a runtime image never needs: apt's lists and caches, docs, locales.
    rm -rf "$base.tmp"/var/lib/apt/lists/* "$base.tmp"/var/cache/apt/* \
        "$base.tmp"/usr/share/doc/* "$base.tmp"/usr/share/man/* \
        "$base.tmp"/usr/share/locale/* "$base.tmp"/usr/share/info/*
    mv "$base.tmp" "$base"
    touch "$base/.complete"
fi

src=$( (cd "$REPO" && git ls-files -z --cached --others --exclude-standard -- tracer enrich export policy forensics pyproject.toml \
        | xargs -0 sha256sum && sha256sum export/proto_gen/*.py build/bpf/*.bpf.o \
        deploy/image/build.sh) \
    | sha256sum | cut -c1-12)
image_key="$key-$src"
tarball="$CACHE/tracer-$image_key.tar"
if [ -e "$tarball" ] && [ "$(podman image inspect --format '{{index .Labels "tracer.key"}}' \
        "$TAG" 2>/dev/null)" = "$image_key" ]; then
    echo "image $TAG is up to date ($image_key)" >&2
    podman image inspect --format '{{.Id}} {{.Size}}' "$TAG" | tr '\n' ' '
    echo "$tarball"
    exit 0
fi

work=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'umount -q "$work/root/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
echo "wheels" >&2
"$REPO/.venv/bin/pip" wheel -q --wheel-dir "$work/wheels" "$REPO" >&2
cp -a "$base" "$work/root"
rm -f "$work/root/.complete"
mkdir -p "$work/root/opt/tracer/bpf" "$work/root/tmp/wheels"
cp "$work/wheels"/*.whl "$work/root/tmp/wheels/"
cp "$REPO"/build/bpf/*.bpf.o "$work/root/opt/tracer/bpf/"
mount -t proc proc "$work/root/proc"
# Nothing of the host's environment (its pip settings) inside.
in_root() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root chroot "$work/root" "$@"; }
in_root /usr/bin/python3 -m venv /opt/tracer/venv
in_root /opt/tracer/venv/bin/pip install -q --no-index --no-compile \
    --find-links /tmp/wheels tracer >&2
in_root /opt/tracer/venv/bin/pip uninstall -q -y pip setuptools >&2 || true
# The kubernetes client's asyncio twin (kubernetes.aio, a third of the image):
# tracer uses the synchronous client, and nothing outside aio imports it.
rm -rf "$work/root"/opt/tracer/venv/lib/python3*/site-packages/kubernetes/aio
umount "$work/root/proc"
# Byte code written now, with fixed timestamps, instead of by the first run
# into a read-only root.
in_root /opt/tracer/venv/bin/python -m compileall -q --invalidation-mode \
    unchecked-hash /opt/tracer/venv/lib >/dev/null
rm -rf "$work/root/tmp/wheels" "$work/root/root/.cache" "$work/root/var/log"/* \
    "$work/root/var/cache/ldconfig/aux-cache"
find "$work/root" -xdev -newermt "@$SOURCE_DATE_EPOCH" -print0 \
    | xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"
tar -C "$work/root" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime \
    --owner=0 --group=0 --numeric-owner --xattrs --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -cf "$work/rootfs.tar" .
rm -f "$CACHE"/tracer-*.tar
mv "$work/rootfs.tar" "$tarball"
# The image this tag named until now, removed once nothing names it.
previous=$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
podman import \
    --change "LABEL tracer.key=$image_key" \
    --change 'ENV TRACER_BPF_DIR=/opt/tracer/bpf' \
    --change 'ENV PATH=/opt/tracer/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENTRYPOINT ["/opt/tracer/venv/bin/tracer"]' \
    --change 'CMD ["run"]' \
    "$tarball" "$TAG" >&2
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$TAG")" ]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
fi
podman image inspect --format '{{.Id}} {{.Size}}' "$TAG" | tr '\n' ' '
echo "$tarball"
