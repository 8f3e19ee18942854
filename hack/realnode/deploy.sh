#!/usr/bin/env bash
# On a node started by hack/realnode/start.sh: `kubectl apply -k` of deploy/
# (through overlay/, which only sets the image), wait for the agent and the
# controller, then the brd Module: loaded in the guest's kernel by the agent
# Pod, ready label on the Node; a rolling update of the agent leaves it loaded;
# deletion unloads. Prints a timeline.
#
# Env: KMM_RN_IMAGE   source of the kmm-rs image (default: docker://127.0.0.1:5000/kmm-rs:dev,
#                     pushed there by hack/image/build.sh); copied on the host, pushed in the netns
#      KMMCTL         kmmctl binary for the brd kmod image (default: target/debug/kmmctl)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export KMM_RUN="${KMM_RUN:-/tmp/kmm-realnode}"
export KMM_RN_NETNS="${KMM_RN_NETNS:-kmm-realnode}"
export KMM_REGISTRY_PORT="${KMM_REGISTRY_PORT:-25000}"
run="$KMM_RUN"
log() { printf '[realnode/deploy %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ "${1:-}" != --in-netns ]]; then
    # Host side: local copies of the images (the host's registry is not
    # reachable from inside the namespace, by design).
    mkdir -p "$run/images"
    rm -rf "$run/images/kmm-rs" "$run/images/brd"
    skopeo copy -q --src-tls-verify=false "${KMM_RN_IMAGE:-docker://127.0.0.1:5000/kmm-rs:dev}" "oci:$run/images/kmm-rs:dev"
    kdir="$(bash "$repo/tests/vm/fetch-kernel.sh" | tail -1)"
    kver="$(cat "$kdir/kver")"
    "${KMMCTL:-$repo/target/debug/kmmctl}" package -k "$kver" --module-tree "$kdir/root" brd \
        --oci-dir "$run/images/brd" --tag "$kver" >/dev/null 2>&1
    echo "$kver" >"$run/images/kver"
    exec ip netns exec "$KMM_RN_NETNS" bash "${BASH_SOURCE[0]}" --in-netns
fi

[[ "$(ip netns identify $$)" == "$KMM_RN_NETNS" ]] || die "not inside netns $KMM_RN_NETNS"
# shellcheck disable=SC1091
source "$run/paths"
kver="$(cat "$run/images/kver")"
k() { "$CP_BIN/kubectl" --kubeconfig "$run/admin.kubeconfig" "$@"; }
reg="127.0.0.1:$KMM_REGISTRY_PORT"
now() { date +%s.%N; }
secs() { printf '%.1f' "$(echo "$2 - $1" | bc)"; }
wait_until() {  # DESCRIPTION TIMEOUT CMD...
    local what="$1" limit=$((SECONDS + $2)); shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < limit)) || { log "timeout: $what"; return 1; }
        sleep 1
    done
}
skopeo copy -q --dest-tls-verify=false "oci:$run/images/kmm-rs:dev" "docker://$reg/kmm-rs:dev"
skopeo copy -q --dest-tls-verify=false "oci:$run/images/brd:$kver" "docker://$reg/default/brd:$kver"

t0=$(now)
k apply -k "$here/overlay" >&2
# A second apply of the same manifests must change nothing (GitOps tools
# would show drift otherwise): every line "... unchanged".
changed="$(k apply -k "$here/overlay" | grep -v ' unchanged$' || true)"
[[ -z "$changed" ]] || die "a second kubectl apply -k changed: $changed"
log "second kubectl apply -k: every object unchanged"
ready() { [[ "$(k -n kmm-system get "$1" -o "jsonpath={.status.$2}")" == "$3" ]]; }
wait_until "agent DaemonSet 1/1 Ready" 600 ready ds/kmm-agent numberReady 1
t_agent=$(now)
wait_until "controller 2/2 Ready" 600 ready deploy/kmm-controller readyReplicas 2
t_ctrl=$(now)
k -n kmm-system get pods -o wide
wait_until "NodeModulesConfig kmm-guest" 120 k get nmc kmm-guest

# examples/brd.yaml, with the kmod image in this registry (the agent pulls it
# itself, from the guest: 10.0.2.2 is this namespace's loopback).
# The first apply can meet the webhook before its Service routes to it (the
# endpoints reach kube-proxy in the guest a moment after the Pods are Ready;
# CI saw "context deadline exceeded" once): retried until the webhook
# answers, and the last attempt's error is shown.
apply_brd() { sed "s#10.0.2.2:5000/#10.0.2.2:$KMM_REGISTRY_PORT/#" "$repo/examples/brd.yaml" | k apply -f -; }
t_mod=$(now)
wait_until "brd Module applied (the webhook answers)" 120 apply_brd || { apply_brd >&2; die "brd Module not applied"; }
# The label's value is empty: test for presence.
label() { k get nodes -l kmm.node.kubernetes.io/default.brd.ready -o name | grep -q node/kmm-guest; }
wait_until "brd ready label" 300 label
t_label=$(now)
k get node kmm-guest --show-labels | tr ',' '\n' | grep kmm.node || true
"$here/guest-exec.sh" 'grep "^brd " /proc/modules; for p in /sys/module/brd/parameters/*; do echo "$p=$(cat $p)"; done'
sleep 3
k get modules -A -o wide || true
# A rolling update of the agent DaemonSet (same image, new tag) must neither
# unload nor reload brd, and the label must stay (checked every second).
skopeo copy -q --dest-tls-verify=false "oci:$run/images/kmm-rs:dev" "docker://$reg/kmm-rs:dev2"
before="$("$here/guest-exec.sh" 'grep "^brd " /proc/modules') $(k get nmc kmm-guest -o 'jsonpath={.status.modules[0].loadTime}')"
old_pod="$(k -n kmm-system get pod -l app.kubernetes.io/name=kmm-agent -o name)"
t_roll=$(now)
k -n kmm-system set image ds/kmm-agent agent="$reg/kmm-rs:dev2" >&2
missing=0 limit=$((SECONDS + 300))
while ! k -n kmm-system rollout status ds/kmm-agent --timeout=1s >/dev/null 2>&1; do
    label || missing=$((missing + 1))
    ((SECONDS < limit)) || die "agent rollout not done after 300 s"
    sleep 1
done
t_rolled=$(now)
after="$("$here/guest-exec.sh" 'grep "^brd " /proc/modules') $(k get nmc kmm-guest -o 'jsonpath={.status.modules[0].loadTime}')"
new_pod="$(k -n kmm-system get pod -l app.kubernetes.io/name=kmm-agent -o name)"
log "agent $old_pod -> $new_pod; brd before: $before; after: $after; label missing in $missing polls"
[[ "$before" == "$after" && "$old_pod" != "$new_pod" && "$missing" == 0 ]] || die "rolling update disturbed brd"
label || die "ready label gone after the rolling update"

t_del=$(now)
k delete module brd --wait=true >&2
unloaded() { ! "$here/guest-exec.sh" 'grep -q "^brd " /proc/modules'; }
wait_until "brd unloaded" 120 unloaded
t_unl=$(now)
! label || log "WARNING: ready label still set after unload"
{
    echo "apply -k -> agent DaemonSet 1/1 Ready: $(secs "$t0" "$t_agent") s"
    echo "apply -k -> controller 2/2 Ready: $(secs "$t0" "$t_ctrl") s"
    echo "brd Module applied -> ready label: $(secs "$t_mod" "$t_label") s"
    echo "agent rolling update (new tag) -> rolled out, brd untouched, label kept: $(secs "$t_roll" "$t_rolled") s"
    echo "brd Module deleted -> unloaded: $(secs "$t_del" "$t_unl") s"
} | tee "$run/deploy-timeline.txt"
