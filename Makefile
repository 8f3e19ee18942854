# The two commands of the README: `make demo` and `make test`.
.PHONY: test demo demo-cluster bench crds fmt lint image deploy-check

test:
	bash hack/test.sh

demo:
	bash hack/demo.sh

# The whole system on a real kubelet in a QEMU guest: the release image,
# `kubectl apply -k deploy/`, brd loaded by the agent Pod, Prometheus; prints
# the timeline (KEEP=1 leaves it running).
demo-cluster:
	bash hack/demo-cluster.sh

# The kmm-rs image, without a container daemon (mmdebstrap base, buildah),
# pushed to the local registry 127.0.0.1:$${KMM_REGISTRY_PORT:-5000}.
image:
	bash hack/image/build.sh

# Render checks of deploy/ (kubectl kustomize only, no cluster).
deploy-check:
	bash hack/deploy/check.sh

bench:
	bash benches/cluster.sh
	bash benches/scale.sh
	cargo bench -p kmm-common --bench targeting
	cargo bench -p kmm-agent --bench extract

crds:
	cargo run -q -p kmm-common --bin crdgen -- deploy/crds

fmt:
	cargo fmt --all

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
