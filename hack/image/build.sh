#!/usr/bin/env bash
# Builds the kmm-rs image (deploy/image/Containerfile) without a container
# daemon and pushes it to the local registry:
#
#   1. the Debian base from the Debian archive (mmdebstrap --variant=minbase
#      bookworm), imported into buildah as docker.io/library/debian:bookworm-slim,
#      the name the Containerfile uses (there is no Docker Hub here);
#   2. the release binaries, built on the host (Debian bookworm's rustc is
#      older than Cargo.toml's rust-version, so no in-image Rust stage here);
#   3. `buildah bud --isolation chroot --pull=never --target runtime-prebuilt`,
#      the Containerfile stage that copies those binaries in;
#   4. `buildah push` to 127.0.0.1:${KMM_REGISTRY_PORT:-5000} (plain HTTP), then
#      prints the digest and the compressed / uncompressed size.
#
# Caches live outside the tree, under ${KMM_IMAGE_CACHE:-~/.cache/kmm-rs/image}:
# the base tar (keyed by a hash of the mmdebstrap options), the cargo target
# dir, and a buildah storage of its own (so the base's borrowed name never
# shadows a real debian image of the machine's own buildah/podman).
# Warm re-runs take seconds. Needs root (mmdebstrap, buildah chroot) and
# hack/setup.sh's packages (mmdebstrap, buildah, skopeo, docker-registry).
#
# Env: KMM_IMAGE_TAG (dev), KMM_REGISTRY_PORT (5000), KMM_DEBIAN_MIRROR
# (http://deb.debian.org/debian), KMM_DEBIAN_SECURITY
# (http://deb.debian.org/debian-security), KMM_IMAGE_REFRESH_BASE=1 remakes the base,
# KMM_IMAGE_BINARIES=DIR takes the binaries from DIR (e.g. target/debug, stripped
# on the way in) instead of the release build, KMM_IMAGE_OCI=DIR writes the image
# to an OCI layout DIR (tag $KMM_IMAGE_TAG) instead of pushing it (`make test`
# builds its test image this way, before its network namespace exists).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${KMM_IMAGE_CACHE:-$HOME/.cache/kmm-rs/image}"
TAG="${KMM_IMAGE_TAG:-dev}"
PORT="${KMM_REGISTRY_PORT:-5000}"
REF="127.0.0.1:$PORT/kmm-rs:$TAG"
MIRROR="${KMM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY="${KMM_DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
BASE_NAME=docker.io/library/debian:bookworm-slim
BINS=(kmm-agent kmm-controller kmmctl)

for t in mmdebstrap buildah skopeo cargo curl sha256sum python3 strip; do
    command -v "$t" >/dev/null || { echo "image: '$t' not found (bash hack/setup.sh)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "image: run as root (mmdebstrap and buildah chroot isolation)" >&2; exit 1; }

mkdir -p "$CACHE"
# Own buildah storage; runroot on tmpfs-like /run state, per cache dir.
BUILDAH=(buildah --root "$CACHE/storage" --runroot "$CACHE/runroot")
STORE="containers-storage:[overlay@$CACHE/storage+$CACHE/runroot]"
t0=$SECONDS
step() { printf 'image: [%3ds] %s\n' "$((SECONDS - t0))" "$*" >&2; }

# ---- 1. base ----------------------------------------------------------------
# Like debian:bookworm-slim: minbase, no man pages, docs (but copyrights),
# locales or info. The path-excludes stay in /etc/dpkg/dpkg.cfg.d, so the
# Containerfile's apt-get installs drop them too.
# The merged-usr hook: without it apt satisfies init-system-helpers' "usrmerge |
# usr-is-merged" with usrmerge, which pulls in perl (+45 MB).
MMDEB_ARGS=(
    --variant=minbase --components=main --aptopt='Acquire::Languages "none"'
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-include=/usr/share/locale/locale.alias'
    --dpkgopt='path-exclude=/usr/share/info/*'
    bookworm
)
SOURCES=(
    "deb $MIRROR bookworm main"
    "deb $MIRROR bookworm-updates main"
    "deb $SECURITY bookworm-security main"
)
# Bump BASE_VERSION to force a new base everywhere (e.g. for security updates).
BASE_VERSION=1
KEY="$(printf '%s\n' "$BASE_VERSION" "${MMDEB_ARGS[@]}" "${SOURCES[@]}" | sha256sum | cut -c1-16)"
BASE_TAR="$CACHE/base-bookworm-$KEY.tar"
if [ "${KMM_IMAGE_REFRESH_BASE:-0}" = 1 ]; then rm -f "$BASE_TAR"; fi
if [ ! -f "$BASE_TAR" ]; then
    step "making the Debian base with mmdebstrap ($BASE_TAR)"
    # A temporary name, so an interrupted run never leaves a half tar under the
    # cache key (--format: mmdebstrap would take a non-.tar name for a directory).
    trap 'rm -f "$BASE_TAR.tmp"' EXIT
    mmdebstrap --quiet --format=tar "${MMDEB_ARGS[@]}" "$BASE_TAR.tmp" "${SOURCES[@]}"
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    trap - EXIT
    # Bases under other keys are superseded.
    find "$CACHE" -maxdepth 1 -name 'base-bookworm-*.tar' ! -name "${BASE_TAR##*/}" -delete
fi
# The key of the base last imported, kept beside the storage (a label would be
# inherited by the kmm-rs image).
IMPORTED="$CACHE/storage-base-key"
if [ "$(cat "$IMPORTED" 2>/dev/null)" != "$KEY" ] \
    || ! "${BUILDAH[@]}" inspect --type image "$BASE_NAME" >/dev/null 2>&1; then
    step "importing the base into buildah as $BASE_NAME"
    ctr="$("${BUILDAH[@]}" from scratch)"
    "${BUILDAH[@]}" add "$ctr" "$BASE_TAR" / >/dev/null
    "${BUILDAH[@]}" config --cmd /bin/bash \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE_NAME" >/dev/null
    echo "$KEY" > "$IMPORTED"
fi

# ---- 2. binaries -------------------------------------------------------------
# A context of its own holding only the binaries: nothing else is sent.
CTX="$CACHE/context"
rm -rf "$CTX" && mkdir -p "$CTX/prebuilt"
if [ -n "${KMM_IMAGE_BINARIES:-}" ]; then
    step "taking the binaries from $KMM_IMAGE_BINARIES (stripped)"
    for b in "${BINS[@]}"; do strip -o "$CTX/prebuilt/$b" "$KMM_IMAGE_BINARIES/$b"; done
else
    step "building the release binaries (cargo build --release --locked)"
    export CARGO_TARGET_DIR="${KMM_IMAGE_TARGET_DIR:-$CACHE/target}"
    # Packages named: the workspace's kmm-tests would add the agent's test-only
    # `simulated` feature.
    (cd "$ROOT" && cargo build -q --release --locked "${BINS[@]/#/--package=}" "${BINS[@]/#/--bin=}")
    for b in "${BINS[@]}"; do cp "$CARGO_TARGET_DIR/release/$b" "$CTX/prebuilt/"; done
fi

# ---- 3. image ---------------------------------------------------------------
step "building the image (buildah bud --isolation chroot --target runtime-prebuilt)"
# --layers: the apt-get step is reused while the base is unchanged.
"${BUILDAH[@]}" bud --quiet --isolation chroot --pull=never --layers \
    --target runtime-prebuilt -f "$ROOT/deploy/image/Containerfile" \
    -t "localhost/kmm-rs:$TAG" "$CTX" >/dev/null

# ---- 4. push (or an OCI layout) ---------------------------------------------
if [ -n "${KMM_IMAGE_OCI:-}" ]; then
    REF="oci:$KMM_IMAGE_OCI:$TAG"
    step "writing $REF"
    rm -rf "$KMM_IMAGE_OCI" && mkdir -p "$(dirname "$KMM_IMAGE_OCI")"
    "${BUILDAH[@]}" push --quiet --digestfile "$CACHE/digest" "localhost/kmm-rs:$TAG" "$REF"
else
    if ! curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/v2/"; then
        step "starting the local registry"
        KMM_REGISTRY_PORT="$PORT" bash "$ROOT/hack/registry/start.sh" >&2
    fi
    step "pushing $REF"
    "${BUILDAH[@]}" push --quiet --tls-verify=false --digestfile "$CACHE/digest" \
        "localhost/kmm-rs:$TAG" "docker://$REF"
    REF="docker://$REF"
fi
digest="$(cat "$CACHE/digest")"
manifest="$(skopeo inspect --raw --tls-verify=false "$REF")"
# Compressed: what a node pulls (config + gzip layers); uncompressed: unpacked.
compressed="$(printf '%s' "$manifest" | python3 -c \
    'import json,sys; m=json.load(sys.stdin); print(m["config"]["size"]+sum(l["size"] for l in m["layers"]))')"
# Uncompressed: the image's layers as unpacked in containers-storage.
uncompressed="$(python3 - "$CACHE/storage/overlay" "$("${BUILDAH[@]}" inspect --type image \
    --format '{{.FromImageID}}' "localhost/kmm-rs:$TAG")" <<'PY'
import json, sys
root, image_id = sys.argv[1], sys.argv[2]
images = {i["id"]: i for i in json.load(open(root + "-images/images.json"))}
layers = {l["id"]: l for l in json.load(open(root + "-layers/layers.json"))}
total, layer = 0, images[image_id]["layer"]
while layer:
    total += layers[layer].get("diff-size", 0)
    layer = layers[layer].get("parent")
print(total)
PY
)"
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
step "done"
echo "image:        $REF"
echo "digest:       $digest"
echo "compressed:   $compressed bytes ($(mib "$compressed"))"
echo "uncompressed: $uncompressed bytes ($(mib "$uncompressed"))"
echo "local copy:   ${STORE}localhost/kmm-rs:$TAG"
