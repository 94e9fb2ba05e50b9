#!/usr/bin/env bash
# The newcomer's first command: set up, then run the two-device demo (one TCP
# flow over one plain link, an ECMP route, and stripe; 2 x 5 Mbit/s links).
# Extra arguments go to `python -m bench demo` (e.g. --seconds 10 --cc cubic).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "demo: needs root (network namespaces, TUN devices); try: sudo $0" >&2
    exit 1
fi
scripts/setup.sh
exec .venv/bin/python -m bench demo "$@"
