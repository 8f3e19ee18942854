# shellcheck shell=bash
# Where hack/helm/build.sh puts helm. Source it; do not run it.
#
# Environment:
#   KMM_CACHE     cache root (default: $HOME/.cache/kmm-rs)
#   KMM_HELM_BIN  use this bin dir instead of the versioned cache path

helm_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
helm_mod="$helm_here/gomod"

# shellcheck source=../lib/gotool.sh
source "$helm_here/../lib/gotool.sh"
helm_version="$(gotool_version "$helm_mod" helm.sh/helm/v4)" || {
    echo "hack/helm: no pinned version" >&2
    exit 1
}

# shellcheck disable=SC2034 # used by the scripts that source this file
helm_bin="${KMM_HELM_BIN:-${KMM_CACHE:-$HOME/.cache/kmm-rs}/helm/$helm_version/bin}"
