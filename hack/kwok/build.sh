#!/usr/bin/env bash
# Build kwok (sigs.k8s.io/kwok: simulated kubelets that move fake Nodes and
# their Pods through their lifecycle) from source through the Go module proxy.
# No prebuilt binaries are downloaded.
#
# The pinned version lives in the wrapper module committed beside this script:
#   hack/kwok/gomod/go.mod  sigs.k8s.io/kwok vX.Y.Z (go.sum committed)
#
# Environment:
#   KMM_CACHE     cache root (default: $HOME/.cache/kmm-rs). The binary goes to
#                 $KMM_CACHE/kwok/<version>/bin/kwok
#   KMM_KWOK_BIN  build into this dir instead (the stamp goes beside it)
#   FORCE=1       rebuild even when the stamp says the binary is current
#   GOFLAGS, GOPROXY, GOMODCACHE, GOCACHE are honoured as usual by `go`.
#
# Usage: build.sh                  build if needed; prints the bin dir last
#        build.sh --print-bin-dir  print the bin dir only (no build)
# A second run with unchanged pins exits in well under a second (stamp file,
# hack/lib/gotool.sh).
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${1:-}" == --print-bin-dir ]]; then
    echo "$kwok_bin"
    exit 0
fi

gotool_build kwok "$kwok_version" "$kwok_mod" "$kwok_bin" sigs.k8s.io/kwok/cmd/kwok "${BASH_SOURCE[0]}" \
    "about 2 minutes" --version
