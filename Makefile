# The two commands of the README: `make demo` and `make test`.
.PHONY: test demo bench crds fmt lint

test:
	bash hack/test.sh

demo:
	bash hack/demo.sh

bench:
	bash benches/scale.sh
	cargo bench -p kmm-common --bench targeting

crds:
	cargo run -q -p kmm-common --bin crdgen -- deploy/crds

fmt:
	cargo fmt --all

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
