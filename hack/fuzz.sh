#!/usr/bin/env bash
# Fuzz what the agent reads from images for a bounded time; exit non-zero on a
# finding. Targets: extract (the kmod layer extractor), moddep (modules.dep
# parsing with the module-file path check, and .modinfo reading).
#   hack/fuzz.sh [SECONDS [TARGET...]]      (default 60 s each, every target)
# Installs cargo-fuzz from crates.io if missing. No nightly toolchain needed:
# RUSTC_BOOTSTRAP=1 lets stable rustc accept the -Z flags cargo-fuzz passes.
# New corpus entries go to a scratch dir; the committed seeds in
# agent/fuzz/corpus/<target> are only read. Crashes land in agent/fuzz/artifacts/.
set -euo pipefail

SECONDS_TO_RUN="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(extract moddep)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz (crates.io)" >&2
    cargo install --locked cargo-fuzz
fi

cd "$HERE/agent"
export RUSTC_BOOTSTRAP=1
for target in "${TARGETS[@]}"; do
    work="${KMM_RUN:-/tmp/kmm-rs-cp}/fuzz-corpus/$target"
    mkdir -p "$work"
    # -rss_limit_mb: each run works in small temp trees with small limits.
    cargo fuzz run "$target" "$work" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1
done
