#!/usr/bin/env bash
# Build a real Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) and etcd (+ etcdctl) from source through the Go
# module proxy. No prebuilt binaries are downloaded.
#
# The pinned versions live in the wrapper modules committed beside this script:
#   hack/controlplane/gomod/go.mod       k8s.io/kubernetes vX.Y.Z (+ staging replaces)
#   hack/controlplane/gomod/etcd/go.mod  go.etcd.io/etcd/{server,etcdctl}/v3
#
# Environment:
#   KMM_CACHE   cache root (default: $HOME/.cache/kmm-rs). Binaries go to
#               $KMM_CACHE/controlplane/<k8s-version>-<etcd-version>/bin/
#   KMM_CP_BIN  build into this dir instead (the stamp goes beside it)
#   FORCE=1     rebuild even when the stamp says the binaries are current
#   GOFLAGS, GOPROXY, GOMODCACHE, GOCACHE are honoured as usual by `go`.
#
# Usage: build.sh                  build if needed; prints the bin dir last
#        build.sh --print-bin-dir  print the bin dir only (no build)
# A second run with unchanged pins exits in well under a second (stamp file).
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

log() { printf '[controlplane/build %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ "${1:-}" == --print-bin-dir ]]; then
    echo "$cp_bin"
    exit 0
fi

command -v go >/dev/null || { log "go is not installed (need Go >= 1.25)"; exit 1; }

k8s_mod="$cp_k8s_mod"
etcd_mod="$cp_etcd_mod"
k8s_version="$cp_k8s_version"
etcd_version="$cp_etcd_version"
bin="$cp_bin"
stamp="$cp_bin/../stamp"

# The stamp covers everything that changes the produced binaries.
want_stamp="$(
    {
        cat "$k8s_mod/go.mod" "$k8s_mod/go.sum" "$etcd_mod/go.mod" "$etcd_mod/go.sum" "${BASH_SOURCE[0]}"
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -d' ' -f1
)"

if [[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]] && cp_all_present; then
    log "up to date: kubernetes $k8s_version, etcd $etcd_version"
    echo "$bin"
    exit 0
fi

mkdir -p "$bin"
rm -f "$stamp"
export GOWORK=off CGO_ENABLED=0

# Version metadata the upstream Makefile would inject; the API server reports
# it from /version, and tests compare it to the pin.
minor="${k8s_version#v*.}"
minor="${minor%%.*}"
major="${k8s_version#v}"
major="${major%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
version_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    version_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    version_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

start=$(date +%s)
log "building etcd $etcd_version + etcdctl into $bin"
(
    cd "$etcd_mod"
    go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
    go build -trimpath -ldflags "-s -w" -o "$bin/etcdctl" go.etcd.io/etcd/etcdctl/v3
)
log "etcd done after $(($(date +%s) - start))s"

log "building kubernetes $k8s_version (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl); a cold build takes 8-11 minutes on 2 cores"
(
    cd "$k8s_mod"
    # One `go build` for all four commands so shared packages compile once.
    go build -trimpath -ldflags "-s -w$version_ldflags" -o "$bin/" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kubectl
)
cp_all_present || { log "build finished but some binaries are missing in $bin"; exit 1; }

echo "$want_stamp" >"$stamp"
log "built in $(($(date +%s) - start))s"
"$bin/kube-apiserver" --version >&2
"$bin/etcd" --version | sed -n 1p >&2
echo "$bin"
