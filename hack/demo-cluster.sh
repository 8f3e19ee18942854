#!/usr/bin/env bash
# `make demo-cluster`: the whole system the way a user runs it, on a real
# kubelet. Builds the kmm-rs release image (hack/image/build.sh, no container
# daemon), kubelet + kube-proxy from source (hack/realnode/build.sh), boots a
# QEMU guest (Debian's kernel, containerd, kubelet v1.35.4) that joins a
# control plane of its own, all inside a network namespace with no route out;
# then `kubectl apply -k` of deploy/ (an images-only overlay, as
# docs/install.md says), examples/brd.yaml loaded by the agent Pod, a rolling
# update of the agent that leaves brd alone, the unload, and Prometheus
# scraping the Pods. Prints the timeline. Stops everything unless KEEP=1
# (then: hack/realnode/stop.sh when done).
# First run: the release build and the kubelet build take a while (tens of
# minutes on 2 cores); later runs reuse both.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export KMM_RUN="${KMM_DEMO_CLUSTER_RUN:-/tmp/kmm-realnode}"
export KMM_RN_NETNS="${KMM_RN_NETNS:-kmm-realnode}"
step() { printf '\n\033[1m== %s\033[0m [%s]\n' "$*" "$(date -u +%H:%M:%S)" >&2; }
t0=$SECONDS
mark() { timeline+=("$(printf '%-58s %4d s' "$1" "$((SECONDS - t0))")"); }
timeline=()

step "Installing Debian packages (if missing)"
bash hack/setup.sh
step "Control plane and kubelet from source (cached after the first run)"
bash hack/controlplane/build.sh >/dev/null
bash hack/realnode/build.sh >/dev/null
step "The kmm-rs image (release build, mmdebstrap base, buildah)"
KMM_IMAGE_OCI="$KMM_RUN-image/oci" bash hack/image/build.sh
mark "image built"
cargo build -q --bin kmmctl

if [[ "${KEEP:-0}" != 1 ]]; then trap 'bash "$root/hack/realnode/stop.sh" >/dev/null 2>&1 || true' EXIT; fi
step "A real node: QEMU guest with containerd + kubelet, in network namespace $KMM_RN_NETNS"
bash hack/realnode/start.sh
mark "node Ready (control plane, registry, guest booted, kubelet joined)"
step "kubectl apply -k deploy/, then examples/brd.yaml"
KMM_RN_IMAGE="oci:$KMM_RUN-image/oci:${KMM_IMAGE_TAG:-dev}" KMMCTL="$root/target/debug/kmmctl" \
    bash hack/realnode/deploy.sh
mark "deploy/ applied, brd loaded, agent rolled, brd unloaded"
step "Prometheus scraping the agent and the controllers"
bash hack/realnode/prometheus.sh
mark "Prometheus: every target up"

step "Timeline"
sed 's/^/  /' "$KMM_RUN/timeline.txt" "$KMM_RUN/deploy-timeline.txt"
printf '  %s\n' "${timeline[@]}"
if [[ "${KEEP:-0}" == 1 ]]; then
    echo "Left running. kubectl: ip netns exec $KMM_RN_NETNS kubectl --kubeconfig $KMM_RUN/admin.kubeconfig get pods -A"
    echo "Stop: KMM_RUN=$KMM_RUN bash hack/realnode/stop.sh"
fi
