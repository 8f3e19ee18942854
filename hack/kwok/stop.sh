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

kubeconfig="${KMM_KWOK_KUBECONFIG:-$run/admin.kubeconfig}"
# shellcheck source=../lib/stop-pid.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/stop-pid.sh"
# Ours only: a kwok started with this run dir's (or the given) kubeconfig.
stop_pid kwok "$pidfile" "$kubeconfig"
