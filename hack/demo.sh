#!/usr/bin/env bash
# The demo (`make demo`) on a fresh Debian machine: installs what is missing,
# builds the control plane from source (the first run takes ~10 minutes on 2
# cores; later runs seconds), starts etcd + kube-apiserver + a registry,
# packages Debian's `brd` module into a kmod image with `kmmctl package`,
# boots a QEMU node running kmm-agent, applies examples/brd.yaml, shows the
# module loaded, deletes it and shows the unload. Stops only what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export KMM_RUN="${KMM_RUN:-/tmp/kmm-rs-cp}"
step() { printf '\n\033[1m== %s\033[0m [%s]\n' "$*" "$(date -u +%H:%M:%S)" >&2; }

step "Installing Debian packages (if missing)"
bash hack/setup.sh
step "Building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd from source (first run: ~10 min)"
bash hack/controlplane/build.sh >/dev/null
step "Fetching Debian's kernel for the VM node"
kdir=$(bash tests/vm/fetch-kernel.sh | tail -1)
kver=$(cat "$kdir/kver")
step "Building kmm-rs (kmm-agent, kmmctl, the demo driver)"
cargo build -q -p kmm-agent -p kmmctl -p kmm-tests --bins

started_cp=0 started_reg=0
curl -fsk --max-time 2 "https://127.0.0.1:${KMM_APISERVER_PORT:-6443}/readyz" >/dev/null 2>&1 || started_cp=1
curl -fs --max-time 2 "http://127.0.0.1:${KMM_REGISTRY_PORT:-5000}/v2/" >/dev/null 2>&1 || started_reg=1
cleanup() {
  if ((started_cp)); then bash "$root/hack/controlplane/stop.sh" >/dev/null 2>&1 || true; fi
  if ((started_reg)); then bash "$root/hack/registry/stop.sh" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
step "Starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and the registry"
START_CONTROLLERS=1 bash hack/controlplane/start.sh
bash hack/registry/start.sh

step "Packaging brd from linux-image-$kver with kmmctl and pushing it"
ref="127.0.0.1:${KMM_REGISTRY_PORT:-5000}/kmm-demo/brd:$kver"
echo "\$ kmmctl package -k $kver --module-tree $kdir/root brd --push $ref --insecure"
target/debug/kmmctl package -k "$kver" --module-tree "$kdir/root" brd --push "$ref" --insecure

step "Running the demo"
target/debug/kmm-demo
