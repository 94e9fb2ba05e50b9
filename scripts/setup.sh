#!/usr/bin/env bash
# Set up everything stripe, its tests and its benchmark need on Debian/Ubuntu:
# system packages (root) and a virtual environment in .venv with stripe
# installed in editable mode.  Safe to run again; it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have ip || need_pkgs+=(iproute2)
have iperf3 || need_pkgs+=(iperf3)
have ping || need_pkgs+=(iputils-ping)
have nft || need_pkgs+=(nftables)
have ethtool || need_pkgs+=(ethtool)
have tcpdump || need_pkgs+=(tcpdump)
have mptcpize || need_pkgs+=(mptcpd)  # the benchmark's MPTCP baseline
have wireguard-go || need_pkgs+=(wireguard-go)  # the benchmark's userspace WireGuard baseline
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing ${need_pkgs[*]}; run as root or: apt-get install ${need_pkgs[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.stripe-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: pip install -e '.[dev,metrics,routing]' (log: .venv/pip.log)"
    if ! { .venv/bin/python -m pip install --upgrade pip &&
           .venv/bin/python -m pip install -e '.[dev,metrics,routing]'; } >.venv/pip.log 2>&1; then
        tail -n 30 .venv/pip.log >&2
        echo "setup: pip install failed (full log: .venv/pip.log)" >&2
        exit 1
    fi
    touch "$stamp"
fi
echo "setup: ok ($(.venv/bin/stripe --version))"
