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
# A second run with unchanged pins exits in well under a second (stamp file).
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

log() { printf '[kwok/build %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ "${1:-}" == --print-bin-dir ]]; then
    echo "$kwok_bin"
    exit 0
fi

command -v go >/dev/null || { log "go is not installed (need Go >= 1.24)"; exit 1; }

stamp="$kwok_bin/../stamp"
# The stamp covers everything that changes the produced binary.
want_stamp="$(
    {
        cat "$kwok_mod/go.mod" "$kwok_mod/go.sum" "${BASH_SOURCE[0]}"
        go env GOVERSION GOOS GOARCH
    } | sha256sum | cut -d' ' -f1
)"

if [[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" && -x "$kwok_bin/kwok" ]]; then
    log "up to date: kwok $kwok_version"
    echo "$kwok_bin"
    exit 0
fi

mkdir -p "$kwok_bin"
rm -f "$stamp"
export GOWORK=off CGO_ENABLED=0

start=$(date +%s)
log "building kwok $kwok_version into $kwok_bin (about 2 minutes cold on 2 cores)"
(
    cd "$kwok_mod"
    # -mod=readonly: the committed go.sum must already cover the build;
    # -buildvcs=false: the wrapper module lives in our repo, whose VCS state
    # is not kwok's (and git may refuse to report it on CI checkouts).
    go build -mod=readonly -buildvcs=false -trimpath -ldflags "-s -w" -o "$kwok_bin/kwok" sigs.k8s.io/kwok/cmd/kwok
)
[[ -x "$kwok_bin/kwok" ]] || { log "build finished but $kwok_bin/kwok is missing"; exit 1; }

echo "$want_stamp" >"$stamp"
log "built in $(($(date +%s) - start))s: $("$kwok_bin/kwok" --version)"
echo "$kwok_bin"
