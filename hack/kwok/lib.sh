# shellcheck shell=bash
# Shared helpers for build.sh, start.sh and stop.sh. Source it; do not run it.
#
# Environment:
#   KMM_CACHE     cache root (default: $HOME/.cache/kmm-rs)
#   KMM_KWOK_BIN  use this bin dir instead of the versioned cache path

kwok_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kwok_mod="$kwok_here/gomod"

# shellcheck source=../lib/gotool.sh
source "$kwok_here/../lib/gotool.sh"
kwok_version="$(gotool_version "$kwok_mod" sigs.k8s.io/kwok)" || {
    echo "hack/kwok: no pinned version" >&2
    exit 1
}

# shellcheck disable=SC2034 # used by the scripts that source this file
kwok_bin="${KMM_KWOK_BIN:-${KMM_CACHE:-$HOME/.cache/kmm-rs}/kwok/$kwok_version/bin}"
