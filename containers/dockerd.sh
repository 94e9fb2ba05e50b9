#!/usr/bin/env bash
# A private Docker engine for stripe's container tests, for machines where no
# engine runs (CI here).  It never touches a system dockerd: its own data root,
# exec root, socket, pidfile and daemon.json, and it leaves the host's firewall
# and sysctls alone (--iptables=false --ip-masq=false --ip-forward=false,
# no default docker0 bridge).  The only host-visible things it makes are the
# bridges of the networks that the tests create (internal, fixed subnets).
# It starts its own containerd under the exec root, unless a system containerd
# answers at /run/containerd/containerd.sock: then it shares that one, in
# containerd namespaces of its own (stripe-ci), apart from a system dockerd's.
#
#   containers/dockerd.sh start    # install docker.io if missing, start, wait
#   containers/dockerd.sh stop     # stop the daemon this script started
#   containers/dockerd.sh status
#   containers/dockerd.sh env      # prints: export DOCKER_HOST=...
#
# Use it with:  eval "$(containers/dockerd.sh env)"; docker ps
# Overridable: STRIPE_DOCKER_ROOT (data root), STRIPE_DOCKER_RUN (exec root).
set -euo pipefail

ROOT=${STRIPE_DOCKER_ROOT:-/var/lib/stripe-ci-docker}
RUN=${STRIPE_DOCKER_RUN:-/run/stripe-ci-docker}
SOCK=$RUN.sock
PIDFILE=$RUN.pid
CONF=$RUN.json
LOG=$ROOT.log
export DOCKER_HOST=unix://$SOCK

log() { echo "[dockerd] $*" >&2; }

# Our dockerd, if one runs: the pidfile's PID, and only if that process is a
# dockerd serving our socket (a stale pidfile with a reused PID is ignored).
our_pid() {
    local pid
    [[ -r $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "dockerd .*-H unix://$SOCK" || return 1
    echo "$pid"
}

install_engine() {
    command -v dockerd >/dev/null && [[ -x /usr/bin/docker ]] && return 0
    log "installing docker.io (Debian's engine, client, containerd, runc)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends docker.io >/dev/null; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    fi
}

start() {
    if pid=$(our_pid); then
        log "already running (pid $pid, $SOCK)"
        return 0
    fi
    install_engine
    mkdir -p "$ROOT" "$RUN"
    rm -f "$SOCK" "$PIDFILE"
    # Our own daemon.json so that /etc/docker/daemon.json (if any) does not apply.
    echo '{}' >"$CONF"
    log "starting dockerd: data root $ROOT, socket $SOCK (log $LOG)"
    # setsid: the daemon survives the shell that started it; stop() ends it by PID.
    setsid dockerd \
        -H "unix://$SOCK" \
        --config-file "$CONF" \
        --data-root "$ROOT" \
        --exec-root "$RUN" \
        --pidfile "$PIDFILE" \
        --containerd-namespace stripe-ci \
        --containerd-plugins-namespace stripe-ci-plugins \
        --bridge=none \
        --iptables=false \
        --ip-masq=false \
        --ip-forward=false \
        --userland-proxy=false \
        --storage-driver=overlay2 \
        --log-level=warn \
        </dev/null >"$LOG" 2>&1 &
    local started=$! i
    for i in $(seq 1 120); do
        if docker version >/dev/null 2>&1; then
            log "ready after $((i / 4)).$((i % 4 * 25))s (pid $(our_pid || echo "$started"))"
            return 0
        fi
        if ! kill -0 "$started" 2>/dev/null; then
            log "dockerd exited; last lines of $LOG:"
            tail -n 20 "$LOG" >&2
            return 1
        fi
        sleep 0.25
    done
    log "dockerd not ready after 30 s; last lines of $LOG:"
    tail -n 20 "$LOG" >&2
    kill "$started" 2>/dev/null || true
    return 1
}

stop() {
    local pid i
    if ! pid=$(our_pid); then
        log "not running"
        rm -f "$SOCK" "$PIDFILE"
        return 0
    fi
    log "stopping dockerd pid $pid"
    kill -TERM "$pid"
    # dockerd stops its containers (10 s grace) and its own containerd first.
    for i in $(seq 1 120); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "dockerd pid $pid still running after 30 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    # dockerd leaves its bind mount of the host's netns behind; drop it so
    # that mounts do not pile up over runs.
    if mountpoint -q "$RUN/netns/default" 2>/dev/null; then
        umount "$RUN/netns/default" || true
    fi
    rm -f "$SOCK"
    log "stopped"
}

status() {
    if pid=$(our_pid); then
        echo "running: pid $pid, DOCKER_HOST=unix://$SOCK, data root $ROOT"
    else
        echo "not running"
        return 1
    fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export DOCKER_HOST=unix://$SOCK DOCKER_BUILDKIT=0" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
