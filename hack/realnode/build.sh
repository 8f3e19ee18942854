#!/usr/bin/env bash
# Build what a real node in the QEMU guest needs, without downloading prebuilt
# binaries:
#   - kubelet and kube-proxy, from source through the Go module proxy (wrapper
#     module hack/realnode/gomod, same approach as hack/controlplane/build.sh;
#     a separate module so node-only dependencies such as cadvisor do not touch
#     the control plane's go.sum and build stamp)
#   - the pod sandbox ("pause") image from pause.c, static, as an OCI layout
#     (no registry.k8s.io here)
#   - the guest's container runtime from Debian packages: containerd, runc,
#     containerd-shim-runc-v2, ctr, iptables-nft and its libraries, the CNI
#     plugins (installed with apt-get if missing)
#
# Output: $KMM_CACHE/realnode/<k8s-version>/{bin/kubelet,bin/kube-proxy,pause-oci/}
#         (KMM_CACHE defaults to $HOME/.cache/kmm-rs). Prints KEY=path lines last.
# Env:    FORCE=1 rebuild even when the stamp is current.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/gomod"
log() { printf '[realnode/build %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

k8s_version="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3; exit }' "$mod/go.mod")"
[[ -n "$k8s_version" ]] || { log "cannot read the k8s.io/kubernetes pin from $mod/go.mod"; exit 1; }
out="${KMM_CACHE:-$HOME/.cache/kmm-rs}/realnode/$k8s_version"
bin="$out/bin"

# --- Debian packages for the guest runtime (containerd 1.6 speaks CRI v1; runc 1.1).
pkgs=(containerd runc iptables containernetworking-plugins gcc libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian containerd package ships a systemd unit only; nothing starts it
# here (PID 1 is not systemd), which is what we want on the host.

# --- kubelet + kube-proxy
command -v go >/dev/null || { log "go is not installed (need Go >= 1.25)"; exit 1; }
stamp="$out/stamp"
want_stamp="$(
    { cat "$mod/go.mod" "$mod/go.sum" "${BASH_SOURCE[0]}"; go env GOVERSION GOOS GOARCH; } | sha256sum | cut -d' ' -f1
)"
if [[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" && -x "$bin/kubelet" && -x "$bin/kube-proxy" ]]; then
    log "kubelet/kube-proxy up to date: $k8s_version"
else
    mkdir -p "$bin"
    rm -f "$stamp"
    minor="${k8s_version#v*.}"; minor="${minor%%.*}"
    major="${k8s_version#v}"; major="${major%%.*}"
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    start=$(date +%s)
    log "building kubelet + kube-proxy $k8s_version (about 3 min with a warm Go cache on 2 cores)"
    # Static (CGO off): the binaries run unchanged in the initramfs guest.
    (cd "$mod" && GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin/" \
        k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
    echo "$want_stamp" >"$stamp"
    log "built in $(($(date +%s) - start))s"
fi

# --- pause image: a static binary in a one-layer OCI image, written by hand
# (deterministic, no buildah storage needed). Push it with
#   skopeo copy --dest-tls-verify=false oci:$out/pause-oci:3.10 docker://HOST:PORT/pause:3.10
pause_key="$(sha256sum "$here/pause.c" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
oci="$out/pause-oci"
if [[ ! -f "$oci/key" || "$(cat "$oci/key")" != "$pause_key" ]]; then
    rm -rf "$oci" && mkdir -p "$oci/blobs/sha256"
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    gcc -static -Os -s -o "$tmp/pause" "$here/pause.c"
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$tmp" -cf "$tmp/layer.tar" pause
    gzip -n -9 <"$tmp/layer.tar" >"$tmp/layer.tar.gz"
    diff_id="sha256:$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)"
    blob() { local d; d="$(sha256sum "$1" | cut -d' ' -f1)"; cp "$1" "$oci/blobs/sha256/$d"; echo "$d"; }
    layer="$(blob "$tmp/layer.tar.gz")"
    printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created_by":"hack/realnode/build.sh: pause.c"}]}' \
        "$diff_id" >"$tmp/config.json"
    config="$(blob "$tmp/config.json")"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
        "$config" "$(stat -c%s "$tmp/config.json")" "$layer" "$(stat -c%s "$tmp/layer.tar.gz")" >"$tmp/manifest.json"
    manifest="$(blob "$tmp/manifest.json")"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"3.10"}}]}' \
        "$manifest" "$(stat -c%s "$tmp/manifest.json")" >"$oci/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
    echo "$pause_key" >"$oci/key"
    log "pause image: manifest sha256:$manifest, $(stat -c%s "$tmp/layer.tar.gz") bytes compressed"
fi

for b in containerd containerd-shim-runc-v2 runc ctr iptables-nft; do
    command -v "$b" >/dev/null || { log "$b missing after the package install"; exit 1; }
done
echo "KUBELET=$bin/kubelet"
echo "KUBE_PROXY=$bin/kube-proxy"
echo "PAUSE_OCI=$oci"
echo "CNI_BIN=/usr/lib/cni"
