# shellcheck shell=bash
# Shared helpers for build.sh, start.sh and stop.sh. Source it; do not run it.
#
# Environment:
#   KMM_CACHE     cache root (default: $HOME/.cache/kmm-rs)
#   KMM_KWOK_BIN  use this bin dir instead of the versioned cache path

kwok_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kwok_mod="$kwok_here/gomod"

# Matches both `require mod vX` and a `mod vX` line inside a require block.
kwok_version="$(awk '$1 == "require" { $1 = ""; $0 = $0 } $1 == "sigs.k8s.io/kwok" { print $2; exit }' "$kwok_mod/go.mod")"
if [[ -z "$kwok_version" ]]; then
    echo "hack/kwok: cannot read the pinned sigs.k8s.io/kwok version from $kwok_mod/go.mod" >&2
    exit 1
fi

# shellcheck disable=SC2034 # used by the scripts that source this file
kwok_bin="${KMM_KWOK_BIN:-${KMM_CACHE:-$HOME/.cache/kmm-rs}/kwok/$kwok_version/bin}"
