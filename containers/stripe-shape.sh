#!/bin/sh
# stripe-shape RATE_MBIT [QUEUE_MS]
#
# Shape the egress of every Ethernet interface of this container (each one a
# link; lo and TUN devices are left alone) with tbf, as bench/lab/shaping.py
# does: a bucket of 10 ms of traffic (at least two full frames) and a queue
# of QUEUE_MS (default 50 ms).  Needs CAP_NET_ADMIN.  RATE_MBIT "0" or "" = off.
# STRIPE_SHAPE_DRY_RUN=1 prints the tc commands instead of running them;
# STRIPE_SHAPE_NET_DIR (default /sys/class/net) is where the interfaces are
# listed (the tests point it at a made-up one).  Fails when a rate is given
# but there is no interface to shape: unshaped links would go unnoticed.
set -eu
tc=tc
[ "${STRIPE_SHAPE_DRY_RUN:-0}" = 1 ] && tc="echo tc"
rate=${1:-}
queue=${2:-50}
[ -n "$rate" ] && [ "$rate" != 0 ] || exit 0
kbit=$(awk -v r="$rate" 'BEGIN { printf "%d", r * 1000 }')
burst=$(awk -v r="$rate" 'BEGIN { b = int(r * 1e6 / 8 * 0.010); if (b < 3028) b = 3028; print b }')
shaped=0
for dev in "${STRIPE_SHAPE_NET_DIR:-/sys/class/net}"/*; do
    name=${dev##*/}
    [ "$(cat "$dev/type" 2>/dev/null)" = 1 ] || continue    # ARPHRD_ETHER only
    $tc qdisc replace dev "$name" root tbf rate "${kbit}kbit" burst "$burst" latency "${queue}ms"
    echo "stripe-shape: $name tbf ${kbit}kbit burst ${burst}B queue ${queue}ms"
    shaped=$((shaped + 1))
done
if [ "$shaped" = 0 ]; then
    echo "stripe-shape: no Ethernet interface to shape" >&2
    exit 1
fi
