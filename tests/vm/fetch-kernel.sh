#!/bin/bash
# Fetch a real Debian kernel for the VM node tests and prepare it in the cache.
#
#   apt-get download linux-image-<abi>-amd64   (Debian archive only)
#   dpkg-deb -x  ->  <cache>/root              (boot/vmlinuz-*, lib/modules/<kver>/)
#   depmod -b                                  (the .deb ships no modules.dep)
#   extract-vmlinux.sh  -> <cache>/vmlinux      (ELF, booted via PVH: ~3 s faster under TCG)
#
# Usage: fetch-kernel.sh            prints the cache dir of the kernel on its last line
# Env:   KMM_CACHE        cache root (default $HOME/.cache/kmm-rs); output in $KMM_CACHE/vm/<kver>/
#        KMM_KERNEL_ABI   pin the ABI, e.g. 6.1.0-56 (default: what linux-image-amd64 depends on)
#
# Idempotent: the prepared tree is keyed by the .deb's sha256 (stamp file `ready`);
# a second run only checks the stamp. Writes $KMM_CACHE/vm/kver (the default kernel release).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${KMM_CACHE:-$HOME/.cache/kmm-rs}/vm

if [ -n "${KMM_KERNEL_ABI:-}" ]; then
  PKG="linux-image-${KMM_KERNEL_ABI}-amd64"
else
  PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6/ {print $2; exit}')
  [ -n "$PKG" ] || { echo "fetch-kernel: cannot resolve linux-image-amd64 (run apt-get update?)" >&2; exit 1; }
fi
KVER=${PKG#linux-image-}
DIR=$CACHE/$KVER
mkdir -p "$DIR/dl"
# one preparer at a time (parallel test binaries share the cache)
exec 9>"$DIR/.lock"
flock 9

cd "$DIR/dl"
DEB=$(ls "${PKG}"_*.deb 2>/dev/null | sed -n 1p || true)
if [ -z "$DEB" ]; then
  # apt drops privileges to _apt; a root-owned dir only causes a harmless warning
  apt-get download "$PKG" >&2
  DEB=$(ls "${PKG}"_*.deb | sed -n 1p)
fi
SUM=$(sha256sum "$DEB" | cut -d' ' -f1)
STAMP="$SUM $(sha256sum "$HERE/extract-vmlinux.sh" | cut -d' ' -f1)"

if [ "$(cat "$DIR/ready" 2>/dev/null || true)" != "$STAMP" ]; then
  echo "fetch-kernel: preparing $KVER from $DEB" >&2
  rm -rf "$DIR/root" "$DIR/vmlinux" "$DIR/ready"
  dpkg-deb -x "$DEB" "$DIR/root.tmp"
  depmod -b "$DIR/root.tmp" "$KVER"
  "$HERE/extract-vmlinux.sh" "$DIR/root.tmp/boot/vmlinuz-$KVER" "$DIR/vmlinux.tmp"
  mv "$DIR/root.tmp" "$DIR/root"
  mv "$DIR/vmlinux.tmp" "$DIR/vmlinux"
  echo "$KVER" > "$DIR/kver"
  echo "$STAMP" > "$DIR/ready"
fi
echo "$KVER" > "$CACHE/kver.tmp" && mv "$CACHE/kver.tmp" "$CACHE/kver"
echo "$DIR"
