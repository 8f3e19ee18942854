#!/usr/bin/env bash
# The test command (`make test`): on a fresh Debian machine it installs what is
# missing, builds (or reuses) the control plane and the real node's kubelet
# from source, fetches Debian's kernel for the VM nodes, builds the tests and
# the kmm-rs image; then, inside a network namespace of its own with loopback
# only and no route, starts etcd + kube-apiserver + the registry and runs every
# test: unit, integration against the real API server and registry, the VM
# end-to-end tests and the real-kubelet test. Nothing a test starts can reach
# another machine: a stray dial fails with "Network is unreachable"
# (tests/tests/hermetic.rs checks it). Everything it started is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# The tests' own run dir: never the one a developer's control plane uses.
export KMM_RUN="${KMM_TEST_RUN:-/tmp/kmm-rs-test}"
netns="kmm-test-$$"
step() { printf '\n== %s [%s]\n' "$*" "$(date -u +%H:%M:%S)" >&2; }
log() { printf '[test %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=lib/netns.sh
source "$root/hack/lib/netns.sh"

if [[ "${1:-}" == --in-netns ]]; then
    netns_inside "$2" || die "not inside network namespace $2"
    netns_assert_isolated
    # shellcheck source=lib/cluster.sh
    source "$root/hack/lib/cluster.sh"
    trap cluster_stop EXIT
    step "control plane and registry (in $2, fresh etcd)"
    cluster_start
    step "cargo test (unit, integration, VM end-to-end, real kubelet)"
    CARGO_NET_OFFLINE=true cargo test --workspace --no-fail-fast -- --include-ignored --test-threads=2
    exit 0
fi

step "setup"
bash hack/setup.sh
step "control plane binaries"
bash hack/controlplane/build.sh >/dev/null
step "kwok binary (simulated kubelets)"
bash hack/kwok/build.sh >/dev/null
step "helm binary (chart tests)"
bash hack/helm/build.sh >/dev/null
step "real node: kubelet, kube-proxy, pause image"
bash hack/realnode/build.sh >/dev/null
step "VM node kernel"
kdir=$(bash tests/vm/fetch-kernel.sh | tail -1)
# kmmctl's real-kernel tests (ignored by default, run below) read the same tree.
export KMM_KERNEL_TREE="$kdir/root" KMM_KERNEL_VERSION="$(cat "$kdir/kver")"
# ... and kmmctl's byte-for-byte signing test, the kernel's own sign-file.
KMM_SIGN_FILE="$(bash tests/vm/fetch-sign-file.sh "$KMM_KERNEL_VERSION" | tail -1)"
export KMM_SIGN_FILE
step "Prometheus Operator CRDs (Go module proxy)"
# Fetched here, before any cluster test runs: the tests never download.
KMM_MONITORING_CRDS="$(bash hack/monitoring/fetch-crds.sh | tail -1)"
export KMM_MONITORING_CRDS

step "deploy/ renders (images-only overlay, agent nodeSelector patch)"
bash hack/deploy/check.sh

# Everything that needs the network happens before the namespace: crates,
# the image's Debian base and packages.
step "build the tests"
cargo test --workspace --no-run
step "the kmm-rs image from the test build (hack/image/build.sh, not pushed)"
# The real-kubelet test deploys it; debug binaries (stripped) spare CI a
# second, release build (`make image` builds the release image). Built with its
# packages named alone (kmm-tests needs the agent with its `simulated` feature).
cargo build -p kmm-agent -p kmm-controller -p kmmctl --bin kmm-agent --bin kmm-controller --bin kmmctl
KMM_IMAGE_TAG=test KMM_IMAGE_BINARIES="$root/target/debug" KMM_IMAGE_OCI="$KMM_RUN/image-oci" \
    bash hack/image/build.sh
export KMM_TEST_IMAGE="oci:$KMM_RUN/image-oci:test"

step "network namespace $netns (loopback only, no route)"
netns_reap kmm-test-
netns_create "$netns"
trap 'netns_delete "$netns"' EXIT
ip netns exec "$netns" bash "$root/hack/test.sh" --in-netns "$netns"

step "fuzz the layer extractor (bounded)"
bash hack/fuzz.sh "${KMM_FUZZ_SECONDS:-60}"
