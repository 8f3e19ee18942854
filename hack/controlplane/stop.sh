#!/usr/bin/env bash
# Stop the control plane started by start.sh: kills only the PIDs recorded in
# $KMM_RUN/*.pid (and only if they still run the expected binary).
#
# Environment:
#   KMM_RUN   run dir used by start.sh (default: /tmp/kmm-rs-cp)
#   CLEAN=1   also delete the run dir (etcd data, certs, kubeconfigs, logs)
set -euo pipefail

run="${KMM_RUN:-/tmp/kmm-rs-cp}"
log() { printf '[controlplane/stop %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

stop_one() {
    local name="$1" pidfile="$run/$1.pid" pid exe cmdline
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    exe="${exe% (deleted)}"
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    # Ours only: the expected binary, started with this run dir in its flags.
    if [[ "$pid" =~ ^[0-9]+$ && "$(basename "${exe:-none}")" == "$name" && "$cmdline" == *"$run/"* ]]; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not exit on SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    else
        log "$name (pid $pid) is not running"
    fi
    rm -f "$pidfile"
}

# Reverse start order: clients of the API server first, etcd last. kwok
# (hack/kwok, started by the tests) is one of those clients.
bash "$(dirname "${BASH_SOURCE[0]}")/../kwok/stop.sh" || true
for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop_one "$name"
done

if [[ "${CLEAN:-0}" == 1 && -d "$run" ]]; then
    log "removing $run"
    rm -rf "$run"
fi
