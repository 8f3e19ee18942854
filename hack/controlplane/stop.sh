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

# shellcheck source=../lib/stop-pid.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/stop-pid.sh"

# Reverse start order: clients of the API server first, etcd last. kwok
# (hack/kwok, started by the tests) is one of those clients.
bash "$(dirname "${BASH_SOURCE[0]}")/../kwok/stop.sh" || true
for name in kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop_pid "$name" "$run/$name.pid" "$run/"
done

if [[ "${CLEAN:-0}" == 1 && -d "$run" ]]; then
    log "removing $run"
    rm -rf "$run"
fi
