#!/usr/bin/env bash
# Run containers/compose.yaml (the `equal` scenario, 10 s per run) where no
# registry and no Docker engine are available, as on this project's machines:
# the private dockerd of containers/dockerd.sh, the debootstrap base image of
# containers/base-image.sh, the image built with host networking (the private
# engine has no NAT), then `compose up`, then `compose down`.
#
#   bash containers/compose-local.sh            # as root; extra args go to `up`
#
# With a registry and an engine, none of this is needed:
#   docker compose -f containers/compose.yaml up --build \
#       --abort-on-container-exit --exit-code-from equal
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
PROJECT=dkstripe-compose

exec 9>/run/stripe-ci-docker.lock
flock 9
eval "$("$HERE/dockerd.sh" env)"
export DOCKER_HOST DOCKER_BUILDKIT

if docker compose version >/dev/null 2>&1; then
    compose() { docker compose "$@"; }
else
    if ! command -v docker-compose >/dev/null; then
        echo "[compose] installing docker-compose (Debian's, v1)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            docker-compose >/dev/null
    fi
    compose() { docker-compose "$@"; }
fi

STARTED=0
cleanup() {
    local rc=$?
    trap - EXIT
    compose -f "$HERE/compose.yaml" -p "$PROJECT" down --remove-orphans >/dev/null 2>&1 || true
    [[ $STARTED == 0 ]] || "$HERE/dockerd.sh" stop || true
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! "$HERE/dockerd.sh" status >/dev/null 2>&1; then
    "$HERE/dockerd.sh" start
    STARTED=1
fi
"$HERE/base-image.sh"
# The example configs hold their keys inline: stripe reads them only if private.
chmod 600 "$HERE"/config/*.toml
docker build -q --network host --target build -t stripe-build:cache "$REPO" >/dev/null
docker build -q --network host -t stripe:latest "$REPO" >/dev/null
compose -f "$HERE/compose.yaml" -p "$PROJECT" up --no-build \
    --abort-on-container-exit --exit-code-from equal "$@"
