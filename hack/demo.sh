#!/usr/bin/env bash
# The demo (`make demo`) on a fresh Debian machine: installs what is missing,
# builds the control plane from source (the first run takes ~10 minutes on 2
# cores; later runs seconds), starts etcd + kube-apiserver + a registry,
# packages Debian's `brd` module into a kmod image with `kmmctl package`,
# starts kmm-controller, boots a QEMU node running kmm-agent, applies examples/brd.yaml, shows the
# module loaded, deletes it and shows the unload. Stops only what it started.
#
# The demo's cluster is its own: started empty (run dir /tmp/kmm-rs-demo, etcd
# data wiped) inside a network namespace of its own with loopback only, and
# stopped at the end. Set KMM_DEMO_RUN to move its run dir.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export KMM_RUN="${KMM_DEMO_RUN:-/tmp/kmm-rs-demo}"
export KMM_APISERVER_PORT="${KMM_APISERVER_PORT:-6543}" KMM_ETCD_PORT="${KMM_ETCD_PORT:-23890}" \
  KMM_ETCD_PEER_PORT="${KMM_ETCD_PEER_PORT:-23900}" KMM_KCM_PORT="${KMM_KCM_PORT:-10357}" \
  KMM_SCHEDULER_PORT="${KMM_SCHEDULER_PORT:-10359}"
step() { printf '\n\033[1m== %s\033[0m [%s]\n' "$*" "$(date -u +%H:%M:%S)" >&2; }

step "Installing Debian packages (if missing)"
bash hack/setup.sh
step "Building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd from source (first run: ~10 min)"
bash hack/controlplane/build.sh >/dev/null
step "Fetching Debian's kernel for the VM node"
kdir=$(bash tests/vm/fetch-kernel.sh | tail -1)
kver=$(cat "$kdir/kver")
step "Building kmm-rs (kmm-agent, kmm-controller, kmmctl, the demo driver)"
cargo build -q -p kmm-agent -p kmm-controller -p kmmctl -p kmm-tests --bins

# The cluster runs in a network namespace of its own, loopback only and no
# route: nothing it starts can reach another machine.
netns="kmm-demo-$$"
log() { printf '[demo %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=lib/netns.sh
source "$root/hack/lib/netns.sh"
if [[ "${1:-}" != --in-netns ]]; then
  step "Entering network namespace $netns (loopback only, no route)"
  netns_reap kmm-demo-
  netns_create "$netns"
  trap 'netns_delete "$netns"' EXIT
  ip netns exec "$netns" bash "$root/hack/demo.sh" --in-netns "$netns"
  exit 0
fi
netns_inside "$2" || die "not inside network namespace $2"
netns_assert_isolated
# shellcheck source=lib/cluster.sh
source "$root/hack/lib/cluster.sh"
trap cluster_stop EXIT
step "Starting etcd (empty), kube-apiserver, kube-controller-manager, kube-scheduler and the registry"
cluster_start

step "Packaging brd from linux-image-$kver with kmmctl and pushing it"
ref="127.0.0.1:${KMM_REGISTRY_PORT:-5000}/kmm-demo/brd:$kver"
echo "\$ kmmctl package -k $kver --module-tree $kdir/root brd --push $ref --insecure"
target/debug/kmmctl package -k "$kver" --module-tree "$kdir/root" brd --push "$ref" --insecure

step "Running the demo"
target/debug/kmm-demo
