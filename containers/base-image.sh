#!/usr/bin/env bash
# Make the image that ../Dockerfile starts FROM, without a registry.
#
# With a registry, `docker build` pulls python:3.11-slim-bookworm.  Where no
# registry is reachable (this project's CI), this script builds a Debian
# bookworm rootfs with debootstrap from the apt mirror the machine already
# uses, with Debian's python3 (3.11), pip, venv, iproute2, iperf3 and ping,
# imports it into the engine at $DOCKER_HOST and tags it with the same name, so
# the same Dockerfile builds in both worlds.
#
#   containers/base-image.sh            # skip if the tag exists
#   containers/base-image.sh --force    # rebuild
#
# Environment: BASE_IMAGE (default python:3.11-slim-bookworm), DEBIAN_MIRROR
# (default: the machine's own bookworm mirror), CA_BUNDLE (default
# /etc/ssl/certs/ca-certificates.crt: copied into the rootfs because TLS may
# be re-signed on the way to PyPI).
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PACKAGES=python3,python3-venv,python3-pip,ca-certificates,iproute2,iperf3,iputils-ping

log() { echo "[base-image] $*" >&2; }

if [[ ${1:-} != --force ]] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE present; skipping (use --force to rebuild)"
    exit 0
fi

# The machine's own Debian mirror: the first URI that serves a plain
# "bookworm" suite, from deb822 .sources files or one-line sources.list.
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        awk 'BEGIN{RS=""; FS="\n"}
             /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|\n|$)/ || /(^|\n)Suites:[ \t]*bookworm([ \t]|\n|$)/ {
               for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); print a[2]; exit }
             }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { if ($(i+1) == "bookworm") print $i; break } }' "$f"
    done
}
MIRROR=${DEBIAN_MIRROR:-$(find_mirror | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
fi

ROOTFS=$(mktemp -d /var/tmp/stripe-rootfs.XXXXXX)
cleanup() {
    # debootstrap may leave /proc or /sys mounted if interrupted.
    local m
    for m in proc sys dev/pts dev; do
        mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
    done
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

log "debootstrap bookworm (minbase + $PACKAGES) from $MIRROR"
t0=$SECONDS
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS" "$MIRROR" \
    >"$ROOTFS.log" 2>&1 || { tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
log "debootstrap took $((SECONDS - t0)) s"

# Make it look like the official image where the Dockerfile cares, and slim it.
cp "$CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$ROOTFS/usr/local/bin/pip" 2>/dev/null || true
# Debian's python is "externally managed"; the official image's is not.  The
# Dockerfile installs into a venv, so this only matters for ad-hoc use.
rm -f "$ROOTFS"/usr/lib/python3.*/EXTERNALLY-MANAGED
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/var/log/*.log "$ROOTFS"/var/cache/debconf/*-old
find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
echo "stripe-base" >"$ROOTFS/etc/hostname"

log "importing as $BASE_IMAGE ($(du -sh --one-file-system "$ROOTFS" | cut -f1))"
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --change 'LABEL org.opencontainers.image.description=stripe-debootstrap-base' \
    --message "debootstrap bookworm minbase + $PACKAGES (stripe containers/base-image.sh)" \
    - "$BASE_IMAGE" >/dev/null
log "done: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$BASE_IMAGE")"
