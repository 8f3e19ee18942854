# shellcheck shell=bash
# Shared helpers for build.sh and start.sh. Source it; do not run it.
#
# Environment:
#   KMM_CACHE   cache root (default: $HOME/.cache/kmm-rs)
#   KMM_CP_BIN  use this bin dir instead of the versioned cache path

cp_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cp_k8s_mod="$cp_here/gomod"
cp_etcd_mod="$cp_here/gomod/etcd"

# Matches both `require mod vX` and a `mod vX` line inside a require block.
cp_pinned() {
    awk -v m="$1" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m { print $2; exit }' "$2"
}

cp_k8s_version="$(cp_pinned k8s.io/kubernetes "$cp_k8s_mod/go.mod")"
cp_etcd_version="$(cp_pinned go.etcd.io/etcd/server/v3 "$cp_etcd_mod/go.mod")"
if [[ -z "$cp_k8s_version" || -z "$cp_etcd_version" ]]; then
    echo "hack/controlplane: cannot read pinned versions from $cp_k8s_mod" >&2
    exit 1
fi

cp_out="${KMM_CACHE:-$HOME/.cache/kmm-rs}/controlplane/${cp_k8s_version}-${cp_etcd_version}"
cp_bin="${KMM_CP_BIN:-$cp_out/bin}"
cp_binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd etcdctl)

cp_all_present() {
    local b
    for b in "${cp_binaries[@]}"; do [[ -x "$cp_bin/$b" ]] || return 1; done
}
