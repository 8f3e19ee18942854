#!/usr/bin/env bash
# Render checks of deploy/ that need only `kubectl kustomize` (no API server):
#   1. an overlay that only sets `images:` renders every image reference,
#      KMM_SIGNER_IMAGE included, with the new name;
#   2. the agent DaemonSet's nodeSelector knob (docs/install.md) can be set by
#      an overlay patch and leaves the rest of the pod spec alone.
#
#   bash hack/deploy/check.sh [deploy-dir]     (default: the repo's deploy/)
#
# kubectl: $KUBECTL, else the control plane's (hack/controlplane/build.sh), else PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEPLOY="$(cd "${1:-$ROOT/deploy}" && pwd)"
KUBECTL="${KUBECTL:-$(ls "${KMM_CACHE:-$HOME/.cache/kmm-rs}"/controlplane/*/bin/kubectl 2>/dev/null | tail -1)}"
KUBECTL="${KUBECTL:-kubectl}"
command -v "$KUBECTL" >/dev/null || { echo "check: no kubectl (bash hack/controlplane/build.sh)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# kustomize loads bases relative to the overlay: copy deploy/ next to it.
cp -r "$DEPLOY" "$tmp/deploy"
fail=0
bad() { echo "check: FAIL: $*" >&2; fail=1; }

# ---- 1. images: ------------------------------------------------------------
NEW=registry.example/team/kmm-rs:v9.9.9
mkdir "$tmp/images"
cat > "$tmp/images/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../deploy
images:
- name: kmm-rs
  newName: ${NEW%:*}
  newTag: ${NEW##*:}
YAML
out="$("$KUBECTL" kustomize "$tmp/images")"
# Container images (`image: <value>`; the CRDs' schema keys have no value)
# and the signer image env value.
refs="$(printf '%s\n' "$out" | sed -nE 's/^[[:space:]]+(- )?image: ([^[:space:]]+)$/\2/p')"
signer="$(printf '%s\n' "$out" | grep -A1 -E 'name: KMM_SIGNER_IMAGE$' | sed -nE 's/^[[:space:]]+value: ([^[:space:]]+)$/\1/p')"
[ "$(printf '%s\n' "$refs" | grep -c .)" -ge 2 ] || bad "expected the agent's and the controller's images, got: $refs"
[ -n "$signer" ] || bad "KMM_SIGNER_IMAGE not rendered"
for r in $refs $signer; do
    [ "$r" = "$NEW" ] || bad "an overlay setting only images: left an image reference at '$r' (want $NEW)"
done

# ---- 2. the agent's nodeSelector knob ---------------------------------------
mkdir "$tmp/nodes"
cat > "$tmp/nodes/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- ../deploy
patches:
- target: {kind: DaemonSet, name: kmm-agent}
  patch: |-
    - op: add
      path: /spec/template/spec/nodeSelector
      value:
        kubernetes.io/os: linux
        example.com/kernel-modules: "true"
YAML
if out="$("$KUBECTL" kustomize "$tmp/nodes" 2>&1)"; then
    ds="$(printf '%s\n' "$out" | awk '/^kind: DaemonSet$/ {p=1} p && /^---$/ {exit} p')"
    printf '%s\n' "$ds" | grep -qE '^ +example.com/kernel-modules: "true"$' \
        || bad "the nodeSelector patch did not reach the agent DaemonSet"
    printf '%s\n' "$ds" | grep -qE '^ +- operator: Exists$' \
        || bad "the nodeSelector patch lost the agent's tolerations"
else
    bad "the documented nodeSelector patch does not apply: $out"
fi

[ "$fail" = 0 ] || exit 1
echo "check: deploy/ renders: images: reaches every image reference; agent nodeSelector patch applies" >&2
