#!/usr/bin/env bash
# Stop a registry started by hack/registry/start.sh [--auth|--tls] (by its PID file only).
set -euo pipefail
RUN="${KMM_RUN:-/tmp/kmm-rs-cp}"
DIR="$RUN/registry"
if [ "${1:-}" = "--auth" ]; then DIR="$RUN/registry-auth"; fi
if [ "${1:-}" = "--tls" ]; then DIR="$RUN/registry-tls"; fi
PIDFILE="$DIR/registry.pid"
if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill "$(cat "$PIDFILE")"
    echo "stopped registry pid $(cat "$PIDFILE")"
fi
rm -f "$PIDFILE"
