#!/usr/bin/env bash
# Scale benchmark: AGENTS (default 50) kmm-agent processes with the simulated
# kernel against the real API server and registry; writes
# benches/results/scale.json (time to all ready labels, to all unloads, agent RSS).
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
bash hack/controlplane/build.sh >/dev/null
START_CONTROLLERS=1 bash hack/controlplane/start.sh
bash hack/registry/start.sh
# Release builds: the agent's memory and CPU are measured as deployed.
# The simulated kernel is a cargo feature (absent from the shipped agent).
cargo build -q --release -p kmm-agent -p kmm-tests --bins --features kmm-agent/simulated
target/release/kmm-scale-bench --agents "${AGENTS:-50}" --out benches/results/scale.json
