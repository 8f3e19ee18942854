#!/usr/bin/env bash
# Fetch the Prometheus Operator CRDs that deploy/overlays/monitoring needs
# (ServiceMonitor, PrometheusRule) from the prometheus-operator Go module, through the Go
# module proxy and nothing else, and cache them outside the tree.
#
# The module is pinned below by version and by its h1: hash (the go.sum form,
# computed by `go mod download` from the zip itself), so the checksum database
# is not contacted and a changed zip is refused. `direct` is dropped from
# GOPROXY: no VCS host is ever dialled.
#
# Environment:
#   KMM_CACHE   cache root (default: $HOME/.cache/kmm-rs). The CRDs go to
#               $KMM_CACHE/monitoring/<version>/
#   FORCE=1     fetch again even when the cache is complete
#   GOPROXY, GOMODCACHE, GOFLAGS are honoured as usual by `go`.
#
# Usage: fetch-crds.sh   prints the CRD directory as its last line. A second
# run (warm cache) does not start `go` and takes milliseconds.
set -euo pipefail

module=github.com/prometheus-operator/prometheus-operator
version=v0.85.0
sum="h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s="
# Where the generated CRDs live inside the module at this version.
crd_subdir=example/prometheus-operator-crd
# The kinds deploy/overlays/monitoring uses (`kubectl kustomize` shows them).
crds=(monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml)

log() { printf '[monitoring/fetch-crds %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

dir="${KMM_CACHE:-$HOME/.cache/kmm-rs}/monitoring/$version"
stamp="$dir/.stamp"
want_stamp="$module@$version $sum ${crds[*]}"

if [[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]]; then
    echo "$dir"
    exit 0
fi

command -v go >/dev/null || { log "go is not installed"; exit 1; }

# Only the module proxy: drop `direct` and `off` from the configured list.
proxy="$(go env GOPROXY | tr ',|' '\n\n' | grep -v -x -e direct -e off -e '' | paste -sd, || true)"
[[ -n "$proxy" ]] || { log "GOPROXY ($(go env GOPROXY)) names no module proxy"; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "downloading $module@$version from the Go module proxy"
# Outside any module (no go.mod/go.work around the temp dir); GOSUMDB=off
# because the hash is checked against the pin below instead.
json="$(cd "$work" && GOWORK=off GOSUMDB=off GOPROXY="$proxy" GOTOOLCHAIN=local \
    go mod download -json "$module@$version")" || { log "go mod download failed:"; printf '%s\n' "$json" >&2; exit 1; }

field() { printf '%s\n' "$json" | sed -n "s/^[[:space:]]*\"$1\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p" | sed -n 1p; }
got_sum="$(field Sum)"
mod_dir="$(field Dir)"
if [[ "$got_sum" != "$sum" ]]; then
    log "$module@$version: hash $got_sum, pinned $sum: refusing it"
    exit 1
fi

mkdir -p "$work/out"
for f in "${crds[@]}"; do
    src="$mod_dir/$crd_subdir/$f"
    [[ -f "$src" ]] || { log "$src is missing from the module"; exit 1; }
    cp "$src" "$work/out/$f"
done
printf '%s\n' "$want_stamp" >"$work/out/.stamp"
chmod -R u+w,go+rX "$work/out"

# Replace the cache directory as a whole, so a reader never sees half of it.
mkdir -p "$(dirname "$dir")"
rm -rf "$dir.old"
if [[ -e "$dir" ]]; then mv "$dir" "$dir.old"; fi
mv "$work/out" "$dir"
rm -rf "$dir.old"
log "cached ${#crds[@]} CRD(s) from $module@$version"
echo "$dir"
