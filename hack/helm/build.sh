#!/usr/bin/env bash
# Build helm (helm.sh/helm/v4, the client the chart tests run: lint, template,
# install, upgrade, uninstall) from source through the Go module proxy, like
# kubectl and kwok. No prebuilt binaries are downloaded.
#
# The pinned version lives in the wrapper module committed beside this script:
#   hack/helm/gomod/go.mod  helm.sh/helm/v4 vX.Y.Z (go.sum committed)
#
# Environment:
#   KMM_CACHE     cache root (default: $HOME/.cache/kmm-rs). The binary goes to
#                 $KMM_CACHE/helm/<version>/bin/helm
#   KMM_HELM_BIN  build into this dir instead (the stamp goes beside it)
#   FORCE=1       rebuild even when the stamp says the binary is current
#   GOFLAGS, GOPROXY, GOMODCACHE, GOCACHE are honoured as usual by `go`.
#
# Usage: build.sh                  build if needed; prints the bin dir last
#        build.sh --print-bin-dir  print the bin dir only (no build)
# A second run with unchanged pins exits in well under a second (stamp file,
# hack/lib/gotool.sh). To bump helm: edit the version in gomod/go.mod, then
# `cd hack/helm/gomod && GOWORK=off go mod tidy`.
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${1:-}" == --print-bin-dir ]]; then
    echo "$helm_bin"
    exit 0
fi

# helm reports (and checks charts' kubeVersion against) the version its
# Makefile injects; without it `helm version` says only the minor.
GOTOOL_LDFLAGS="-X helm.sh/helm/v4/internal/version.version=$helm_version" \
    gotool_build helm "$helm_version" "$helm_mod" "$helm_bin" helm.sh/helm/v4/cmd/helm "${BASH_SOURCE[0]}" \
    "about 3-5 minutes" version --short
