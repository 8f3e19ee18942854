#!/usr/bin/env bash
# The test command (`make test`): on a fresh Debian machine it installs what is
# missing, builds (or reuses) the control plane from source, fetches Debian's
# kernel for the VM node, starts etcd + kube-apiserver + the registry, and runs
# every test: unit, integration against the real API server and registry, and
# the VM end-to-end tests. Services it started are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export KMM_RUN="${KMM_RUN:-/tmp/kmm-rs-cp}"
step() { printf '\n== %s [%s]\n' "$*" "$(date -u +%H:%M:%S)" >&2; }

step "setup"
bash hack/setup.sh
step "control plane binaries"
bash hack/controlplane/build.sh >/dev/null
step "kwok binary (simulated kubelets)"
bash hack/kwok/build.sh >/dev/null
step "VM node kernel"
kdir=$(bash tests/vm/fetch-kernel.sh | tail -1)
# kmmctl's real-kernel tests (ignored by default, run below) read the same tree.
export KMM_KERNEL_TREE="$kdir/root" KMM_KERNEL_VERSION="$(cat "$kdir/kver")"

started_cp=0
if ! curl -fsk --max-time 2 "https://127.0.0.1:${KMM_APISERVER_PORT:-6443}/readyz" >/dev/null 2>&1; then started_cp=1; fi
started_reg=0
if ! curl -fs --max-time 2 "http://127.0.0.1:${KMM_REGISTRY_PORT:-5000}/v2/" >/dev/null 2>&1; then started_reg=1; fi
# The tests start the auth (--auth) and TLS (--tls) registries on demand: stop
# those this run started, like everything else it started.
running_before() { local f="$KMM_RUN/registry-$1/registry.pid"; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
started_auth=1; if running_before auth; then started_auth=0; fi
started_tls=1; if running_before tls; then started_tls=0; fi
cleanup() {
  if ((started_cp)); then bash "$root/hack/controlplane/stop.sh" || true; fi
  if ((started_reg)); then bash "$root/hack/registry/stop.sh" || true; fi
  if ((started_auth)); then bash "$root/hack/registry/stop.sh" --auth || true; fi
  if ((started_tls)); then bash "$root/hack/registry/stop.sh" --tls || true; fi
}
trap cleanup EXIT

step "deploy/ renders (images-only overlay, agent nodeSelector patch)"
bash hack/deploy/check.sh

step "control plane and registry"
START_CONTROLLERS=1 bash hack/controlplane/start.sh
bash hack/registry/start.sh

step "cargo test (unit, integration, VM end-to-end)"
cargo test --workspace --no-fail-fast -- --include-ignored --test-threads=2

step "fuzz the layer extractor (bounded)"
bash hack/fuzz.sh "${KMM_FUZZ_SECONDS:-60}"
