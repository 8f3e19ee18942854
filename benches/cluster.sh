#!/usr/bin/env bash
# The benchmarks that need a cluster (`make bench`):
# - fleet: for each N in NODES (default "50 200 1000"), N simulated-kernel
#   agents (in one kmm-agent-fleet process, or one kmm-agent process each with
#   FLEET=processes) and kmm-controller against the real API server, through
#   load, a status-only change, an ordered upgrade and an unload; writes
#   benches/results/fleet-<N>.json, fleet-<N>.png and fleet.md;
# - VM latency (VM_LATENCY=0 skips it): apply -> ready of `brd` on a QEMU node
#   running Debian's kernel, by the agent's phases; writes
#   benches/results/vm-latency.json and vm-latency.md.
#
# Its cluster is its own (run dir /tmp/kmm-rs-bench, etcd wiped), in a network
# namespace with loopback only. Release builds: CPU and memory as shipped.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export KMM_RUN="${KMM_BENCH_RUN:-/tmp/kmm-rs-bench}"
nodes="${NODES:-50 200 1000}"
fleet="${FLEET:-in-process}"
log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=../hack/lib/netns.sh
source "$root/hack/lib/netns.sh"
netns="kmm-bench-$$"
if [[ "${1:-}" != --in-netns ]]; then
  bash hack/setup.sh
  bash hack/controlplane/build.sh >/dev/null
  # The simulated kernel is a cargo feature of the agent (absent from the shipped one).
  # Built as the benchmarks build them (tests/src/vm/artifacts.rs): one
  # package at a time, so their features resolve as they will at run time.
  cargo build -q --release -p kmm-tests --bins
  cargo build -q --release -p kmm-controller --bin kmm-controller
  cargo build -q --release -p kmm-agent --bin kmm-agent --features simulated
  [[ "${VM_LATENCY:-1}" == 0 ]] || bash tests/vm/fetch-kernel.sh >/dev/null
  netns_reap kmm-bench-
  netns_create "$netns"
  trap 'netns_delete "$netns"' EXIT
  ip netns exec "$netns" bash "$root/benches/cluster.sh" --in-netns "$netns"
  exit 0
fi
netns_inside "$2" || die "not inside network namespace $2"
netns_assert_isolated
# shellcheck source=../hack/lib/cluster.sh
source "$root/hack/lib/cluster.sh"
trap cluster_stop EXIT
cluster_start
for n in $nodes; do
  log "$n nodes ($fleet)"
  CARGO_NET_OFFLINE=true target/release/kmm-fleet-bench run --nodes "$n" --fleet "$fleet" \
    --out-dir benches/results
done
if [[ "${VM_LATENCY:-1}" != 0 ]]; then
  log "VM latency (QEMU node, Debian kernel, brd)"
  CARGO_NET_OFFLINE=true target/release/kmm-vm-latency-bench --out-dir benches/results
fi
