#!/usr/bin/env bash
# Stop the kwok started by start.sh: kills only the pid recorded in
# $KMM_RUN/kwok.pid, and only if it is still our kwok. Fake Nodes stay (and
# turn NotReady). hack/controlplane/stop.sh runs this first.
#
# Environment:
#   KMM_RUN   control-plane run dir (default: /tmp/kmm-rs-cp)
#   KMM_KWOK_KUBECONFIG  the kubeconfig kwok was started with (see start.sh)
set -euo pipefail

run="${KMM_RUN:-/tmp/kmm-rs-cp}"
pidfile="$run/kwok.pid"
log() { printf '[kwok/stop %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

[[ -f "$pidfile" ]] || exit 0
pid="$(cat "$pidfile")"
exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
kubeconfig="${KMM_KWOK_KUBECONFIG:-$run/admin.kubeconfig}"
# Ours only: a kwok started with this run dir's (or the given) kubeconfig.
if [[ "$pid" =~ ^[0-9]+$ && "$(basename "${exe% (deleted)}")" == kwok && "$cmdline" == *"$kubeconfig"* ]]; then
    log "stopping kwok (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "kwok did not exit on SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
else
    log "kwok (pid $pid) is not running (or not ours)"
fi
rm -f "$pidfile"
