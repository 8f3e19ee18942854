#!/usr/bin/env bash
# Stop what hack/realnode/start.sh started: QEMU, the registry, the control
# plane (by their pid files under $KMM_RUN), then delete the network namespace.
# CLEAN=1 also removes $KMM_RUN.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export KMM_RUN="${KMM_RUN:-/tmp/kmm-realnode}"
netns="${KMM_RN_NETNS:-kmm-realnode}"
log() { printf '[realnode/stop %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
# shellcheck source=../lib/stop-pid.sh
source "$here/../lib/stop-pid.sh"

stop_pid prometheus "$KMM_RUN/prometheus.pid" "$KMM_RUN/"
stop_pid qemu-system-x86_64 "$KMM_RUN/qemu.pid" "$KMM_RUN/"
bash "$here/../registry/stop.sh" || true
bash "$here/../controlplane/stop.sh" || true
if ip netns list | grep -qw "$netns"; then
    left="$(ip netns pids "$netns" || true)"
    [[ -z "$left" ]] || log "processes still in $netns: $left (not killed: check them)"
    ip netns del "$netns" && log "deleted network namespace $netns"
fi
if [[ "${CLEAN:-0}" == 1 ]]; then rm -rf "$KMM_RUN"; fi
