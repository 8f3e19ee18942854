#!/usr/bin/env bash
# Fuzz the kmod layer extractor for a bounded time; exit non-zero on a finding.
#   hack/fuzz.sh [SECONDS]      (default 60)
# Installs cargo-fuzz from crates.io if missing. No nightly toolchain needed:
# RUSTC_BOOTSTRAP=1 lets stable rustc accept the -Z flags cargo-fuzz passes.
# New corpus entries go to a scratch dir; the committed seeds in
# agent/fuzz/corpus/extract are only read. Crashes land in agent/fuzz/artifacts/.
set -euo pipefail

SECONDS_TO_RUN="${1:-60}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${KMM_RUN:-/tmp/kmm-rs-cp}/fuzz-corpus/extract"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz (crates.io)" >&2
    cargo install --locked cargo-fuzz
fi

mkdir -p "$WORK"
cd "$HERE/agent"
export RUSTC_BOOTSTRAP=1
# -rss_limit_mb: each run extracts into a fresh temp dir with small limits.
exec cargo fuzz run extract "$WORK" fuzz/corpus/extract -- \
    -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -timeout=30 -print_final_stats=1
