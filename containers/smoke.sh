#!/usr/bin/env bash
# Container smoke test (CI): build the stripe image without a registry and run
# a server and a client container joined by two links.
#
#   bash containers/smoke.sh            # as root
#
# 1. installs docker.io and debootstrap if missing, starts a private dockerd
#    (containers/dockerd.sh: own data root, socket, pidfile; no iptables);
# 2. makes the base image with debootstrap unless it is cached in that data
#    root (containers/base-image.sh), builds the stripe image;
# 3. starts dkstripe-server and dkstripe-client on two internal networks
#    (dkstripe-link0/1, fixed addresses), each link shaped to 5 Mbit/s;
# 4. pings across the tunnel both ways, checks that each container shaped
#    both its link interfaces (fails otherwise), runs iperf3 for
#    SMOKE_SECONDS (3 s) over each plain link and through the tunnel, prints
#    the table;
# 5. always removes its containers and networks and stops the dockerd it
#    started (a dockerd that was already running is left running).
# Exits non-zero on any failure.  Runs are serialized with a lock, so running
# it twice, even at once, is safe.
#
# Environment: SMOKE_SECONDS (3), SMOKE_RATE_MBIT (5), SMOKE_MIN_SHARE (0.3:
# fail if the tunnel gets less than this share of the two links' sum),
# SMOKE_KEEP_DOCKERD=1 (leave the dockerd running, for repeated runs).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
SECONDS_PER_RUN=${SMOKE_SECONDS:-3}
RATE_MBIT=${SMOKE_RATE_MBIT:-5}
MIN_SHARE=${SMOKE_MIN_SHARE:-0.3}
IMAGE=stripe:latest
PREFIX=dkstripe
# Own subnets, apart from compose.yaml's 172.29.0/1.0, so both can coexist.
NET0=172.29.100 NET1=172.29.101
LOCK=/run/stripe-ci-docker.lock

T0=$SECONDS
phase_start=$SECONDS
declare -a TIMES=()
step() {  # step NAME: ends the previous phase's clock, starts the next
    local now=$SECONDS
    [[ -n ${CUR:-} ]] && TIMES+=("$CUR $((now - phase_start))s")
    CUR=$1 phase_start=$now
    echo "== smoke: $1"
}

[[ $(id -u) == 0 ]] || { echo "smoke: needs root (dockerd, debootstrap)" >&2; exit 1; }

exec 9>"$LOCK"
if ! flock -n 9; then
    echo "smoke: another run holds $LOCK; waiting" >&2
    flock 9
fi

eval "$("$HERE/dockerd.sh" env)"
export DOCKER_HOST DOCKER_BUILDKIT
STARTED_DOCKERD=0
WORK=$(mktemp -d /tmp/dkstripe-smoke.XXXXXX)
RC=1

remove_ours() {
    local ids
    ids=$(docker ps -aq --filter "name=^${PREFIX}-" 2>/dev/null || true)
    [[ -z $ids ]] || docker rm -f $ids >/dev/null 2>&1 || true
    ids=$(docker network ls -q --filter "name=^${PREFIX}-" 2>/dev/null || true)
    [[ -z $ids ]] || docker network rm $ids >/dev/null 2>&1 || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    echo "== smoke: cleanup"
    if docker version >/dev/null 2>&1; then
        if [[ $rc != 0 ]]; then
            for c in server client; do
                echo "--- last log lines of $PREFIX-$c:"
                docker logs --tail 25 "$PREFIX-$c" 2>&1 || true
            done
        fi
        remove_ours
        # Old builds of the image, untagged by the new one.
        docker image prune -f >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    if [[ $STARTED_DOCKERD == 1 && ${SMOKE_KEEP_DOCKERD:-0} != 1 ]]; then
        "$HERE/dockerd.sh" stop || true
    fi
    echo "== smoke: $([[ $rc == 0 ]] && echo PASSED || echo "FAILED (exit $rc)") in $((SECONDS - T0)) s"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "engine"
if ! "$HERE/dockerd.sh" status >/dev/null 2>&1; then
    "$HERE/dockerd.sh" start
    STARTED_DOCKERD=1
else
    echo "smoke: using the private dockerd that is already running"
fi
remove_ours   # leftovers of a run that was killed

step "base image"
"$HERE/base-image.sh"

step "stripe image"
# Host network for RUN steps: the private engine has no default bridge and
# no NAT, and pip must reach PyPI.
# The build stage gets a tag of its own so that pruning old untagged images
# keeps it: warm runs then reuse its pip layers.
if ! { docker build --network host --target build -t stripe-build:cache "$REPO" \
       && docker build --network host -t "$IMAGE" "$REPO"; } >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    exit 1
fi
docker image ls --format 'image {{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE"

step "containers"
sed -e "s/172\.29\.0\./$NET0./g" -e "s/172\.29\.1\./$NET1./g" \
    "$HERE/config/server.toml" >"$WORK/server.toml"
sed -e "s/172\.29\.0\./$NET0./g" -e "s/172\.29\.1\./$NET1./g" \
    "$HERE/config/client.toml" >"$WORK/client.toml"
chmod 600 "$WORK"/*.toml  # inline keys: stripe wants them private
docker network create --internal --subnet "$NET0.0/24" "$PREFIX-link0" >/dev/null
docker network create --internal --subnet "$NET1.0/24" "$PREFIX-link1" >/dev/null
for role in server client; do
    host=$([[ $role == server ]] && echo 2 || echo 3)
    docker create --name "$PREFIX-$role" --hostname "$PREFIX-$role" \
        --cap-add NET_ADMIN --device /dev/net/tun \
        --network "$PREFIX-link0" --ip "$NET0.$host" \
        -v "$WORK/$role.toml:/etc/stripe/stripe.toml:ro" \
        --entrypoint sh "$IMAGE" \
        -c "stripe-shape $RATE_MBIT && exec stripe $role -c /etc/stripe/stripe.toml" \
        >/dev/null 2>"$WORK/create.log" || { cat "$WORK/create.log" >&2; exit 1; }
    docker network connect --ip "$NET1.$host" "$PREFIX-link1" "$PREFIX-$role"
    docker start "$PREFIX-$role" >/dev/null
done
docker exec -d "$PREFIX-server" iperf3 -s

step "ping"
# stripe-scenario waits for the tunnel; ping first to print RTTs both ways.
deadline=$((SECONDS + 20))
until docker exec "$PREFIX-client" ping -c 1 -W 1 -n -q 10.2.0.2 >/dev/null 2>&1; do
    for c in client server; do
        [[ $(docker inspect -f '{{.State.Running}}' "$PREFIX-$c") == true ]] \
            || { echo "smoke: FAIL: $PREFIX-$c exited" >&2; exit 1; }
    done
    if ((SECONDS >= deadline)); then
        echo "smoke: FAIL: no ping reply from 10.2.0.2 through the tunnel in 20 s" >&2
        exit 1
    fi
    sleep 0.5
done
docker exec "$PREFIX-client" ping -c 3 -i 0.2 -W 2 -n 10.2.0.2 | tail -n 2
docker exec "$PREFIX-server" ping -c 3 -i 0.2 -W 2 -n 10.2.0.1 | tail -n 2

step "shaping"
# Each container shapes its two link interfaces before it becomes stripe; a
# container that shaped fewer would run (part of) its links unshaped, and the
# figures below would not be the 2 x $RATE_MBIT Mbit/s they claim to be.
for c in server client; do
    [[ $RATE_MBIT != 0 ]] || { echo "smoke: shaping off (SMOKE_RATE_MBIT=0)"; break; }
    shaped=$(docker logs "$PREFIX-$c" 2>&1 | grep -c '^stripe-shape: .* tbf ' || true)
    if [[ $shaped != 2 ]]; then
        echo "smoke: FAIL: $PREFIX-$c shaped $shaped of its 2 link interfaces" \
             "(stripe-shape lines in its log)" >&2
        exit 1
    fi
    echo "smoke: $PREFIX-$c shaped 2 link interfaces"
done

step "iperf3"
docker exec "$PREFIX-client" stripe-scenario --tunnel 10.2.0.2 \
    --links "$NET0.2,$NET1.2" --time "$SECONDS_PER_RUN" --wait 10 --min-share "$MIN_SHARE"

step "done"
echo "== smoke: phases: ${TIMES[*]}"
RC=0
