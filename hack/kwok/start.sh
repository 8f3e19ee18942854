#!/usr/bin/env bash
# Start kwok against the test control plane of hack/controlplane/start.sh, so
# fake Nodes (annotation kwok.x-k8s.io/node=fake) get simulated kubelets:
# they turn Ready, and Pods the real kube-scheduler binds to them run (Ready),
# Job Pods succeed, deleted Pods go. Other Nodes are left alone. See kwok.yaml.
#
# Idempotent: a healthy kwok already started for $KMM_RUN is reused.
# Concurrent invocations serialize on $KMM_RUN/kwok.lock.
# The binary comes from hack/kwok/build.sh (not built here: run it first); the
# control plane must be running (it is not started here either).
#
# Environment:
#   KMM_RUN           control-plane run dir (default: /tmp/kmm-rs-cp): the admin
#                     kubeconfig is read from it; kwok.pid and logs/kwok.log go there
#   KMM_CACHE, KMM_KWOK_BIN  where the binary is (see build.sh / lib.sh)
#   KMM_KWOK_KUBECONFIG  kubeconfig kwok uses (default: $KMM_RUN/admin.kubeconfig)
#   KMM_KWOK_PORT     port of kwok's /healthz on 127.0.0.1 (default: 10261)
#   KMM_KWOK_TIMEOUT  seconds to wait for kwok to be healthy (default: 60)
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run="${KMM_RUN:-/tmp/kmm-rs-cp}"
port="${KMM_KWOK_PORT:-10261}"
timeout="${KMM_KWOK_TIMEOUT:-60}"
logs="$run/logs"
pidfile="$run/kwok.pid"
kubeconfig="${KMM_KWOK_KUBECONFIG:-$run/admin.kubeconfig}"

log() { printf '[kwok/start %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -x "$kwok_bin/kwok" ]] || die "kwok not found in $kwok_bin; run: bash hack/kwok/build.sh"
[[ -f "$kubeconfig" ]] || die "$kubeconfig not found; start the control plane first (hack/controlplane/start.sh)"
for tool in curl flock setsid; do
    command -v "$tool" >/dev/null || die "$tool is required (apt-get install curl util-linux)"
done

mkdir -p "$logs"
exec 9>"$run/kwok.lock"
flock 9

# The pid file names a live kwok started with this run dir's kubeconfig
# (guards against pid reuse and against another run dir's kwok).
alive() {
    local pid exe cmdline
    pid="$(cat "$pidfile" 2>/dev/null)" && [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
    [[ "$(basename "${exe% (deleted)}")" == kwok ]] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"$kubeconfig"* ]]
}
healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; }

if alive; then
    if healthy; then
        log "kwok already running (pid $(cat "$pidfile"))"
        exit 0
    fi
else
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "cannot start kwok: 127.0.0.1:$port is already in use (set KMM_KWOK_PORT, or stop the other kwok)"
    fi
    log "starting kwok $kwok_version (log: $logs/kwok.log)"
    # Own session, no inherited stdio or lock fd: it outlives this script.
    setsid "$kwok_bin/kwok" \
        --config="$kwok_here/kwok.yaml" \
        --kubeconfig="$kubeconfig" \
        --server-address="127.0.0.1:$port" \
        </dev/null >>"$logs/kwok.log" 2>&1 9>&- &
    echo $! >"$pidfile"
fi

deadline=$((SECONDS + timeout))
until healthy; do
    pid="$(cat "$pidfile")"
    if ! kill -0 "$pid" 2>/dev/null; then
        tail -n 30 "$logs/kwok.log" >&2 || true
        die "kwok exited; see $logs/kwok.log"
    fi
    if ((SECONDS >= deadline)); then
        tail -n 30 "$logs/kwok.log" >&2 || true
        die "kwok not healthy after ${timeout}s; see $logs/kwok.log"
    fi
    sleep 0.5
done
log "kwok is ready (pid $(cat "$pidfile"), manages Nodes annotated kwok.x-k8s.io/node=fake)"
