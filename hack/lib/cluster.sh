# shellcheck shell=bash
# The local cluster of `make test` and `make demo`, in $KMM_RUN: sourced by
# scripts that have already entered their network namespace.
_cluster_hack="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# cluster_start: etcd (empty: no objects of an earlier run), kube-apiserver,
# kube-controller-manager, kube-scheduler and the registry.
cluster_start() {
    rm -rf "$KMM_RUN/etcd"
    START_CONTROLLERS=1 bash "$_cluster_hack/controlplane/start.sh"
    bash "$_cluster_hack/registry/start.sh"
}

# cluster_stop: all of it, and the auth/TLS registries tests start on demand.
cluster_stop() {
    local r
    for r in "" --auth --tls; do
        # shellcheck disable=SC2086 # "" means no flag
        bash "$_cluster_hack/registry/stop.sh" $r >/dev/null 2>&1 || true
    done
    bash "$_cluster_hack/controlplane/stop.sh" >/dev/null 2>&1 || true
}
