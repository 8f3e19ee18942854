#!/bin/bash
# Build the initramfs of the VM node (cached by a content hash of every input).
#
# Contents: busybox-static (every applet), the real kmod (/bin/kmod; modprobe,
# insmod, rmmod, lsmod, modinfo, depmod in /sbin pointing to /bin/kmod
# absolutely) with the libraries ldd lists, the kernel modules the guest needs
# (virtio transport, virtio-net, virtio-serial, 9p) plus MODULES and their
# dependencies, depmod'ed; the given binaries (stripped copies) in /bin with
# their libraries; tests/vm/guest/init as /init; EXTRA_DIR on top.
#
# Usage: make-initramfs.sh [BINARY...]     prints the initramfs path on its last line
# Env:   KMM_CACHE          cache root (default $HOME/.cache/kmm-rs)
#        KMM_VM_KERNEL_DIR  prepared kernel (default: $KMM_CACHE/vm/$(cat $KMM_CACHE/vm/kver),
#                           see fetch-kernel.sh)
#        MODULES            extra in-tree modules (default: "loop dummy")
#        EXTRA_DIR          directory copied verbatim over the root (kubeconfig, certs, ...)
#        COMPRESS           none (default: fastest boot under TCG) | gzip
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${KMM_CACHE:-$HOME/.cache/kmm-rs}/vm
KDIR=${KMM_VM_KERNEL_DIR:-$CACHE/$(cat "$CACHE/kver")}
KVER=$(cat "$KDIR/kver")
KROOT=$KDIR/root
MODULES=${MODULES:-"loop dummy"}
BASE_MODULES="virtio_pci virtio_net virtio_console 9pnet_virtio 9p"
COMPRESS=${COMPRESS:-none}
BINARIES=("$@")

libs_of() {  # every shared library a binary needs (absolute paths), or nothing if static
  ldd "$1" 2>/dev/null | grep -o '/[^ ]*' || true
}

# --- cache key: everything that ends up in the image, or decides what does
KEY=$(
  {
    echo "v1 $KVER $COMPRESS $MODULES $BASE_MODULES"
    cat "$KDIR/ready"
    sha256sum "$0" "$HERE/guest/init" /usr/bin/busybox /usr/bin/kmod
    for b in "${BINARIES[@]}"; do
      echo "bin $(basename "$b")"; sha256sum "$b"
      for l in $(libs_of "$b"); do sha256sum "$l"; done
    done
    for l in $(libs_of /usr/bin/kmod); do sha256sum "$l"; done
    if [ -n "${EXTRA_DIR:-}" ]; then
      (cd "$EXTRA_DIR" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum)
    fi
  } | sha256sum | cut -c1-16
)
SUFFIX=cpio; [ "$COMPRESS" = gzip ] && SUFFIX=cpio.gz
OUT=$CACHE/initramfs/$KEY.$SUFFIX
if [ -f "$OUT" ]; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$CACHE/initramfs"
ROOT=$(mktemp -d "$CACHE/initramfs/root.XXXXXX")
trap 'rm -rf "$ROOT" "$OUT.$$.tmp"' EXIT

mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib,lib64,etc,proc,sys,dev,tmp,run,root,host,var/lib/firmware}
cp /usr/bin/busybox "$ROOT/bin/busybox"
for a in $(/usr/bin/busybox --list); do
  [ "$a" = busybox ] || ln -sf busybox "$ROOT/bin/$a"
done

copy_with_libs() {  # SRC DEST_IN_ROOT
  cp "$1" "$ROOT$2"
  for l in $(libs_of "$1"); do
    [ -e "$ROOT$l" ] && continue
    mkdir -p "$ROOT$(dirname "$l")"
    cp -L "$l" "$ROOT$l"
  done
}

# real kmod; busybox's applets of the same name would otherwise win (and a
# relative symlink in /sbin would be broken)
copy_with_libs /usr/bin/kmod /bin/kmod
for a in modprobe insmod rmmod lsmod modinfo depmod; do
  rm -f "$ROOT/bin/$a"; ln -s /bin/kmod "$ROOT/sbin/$a"
done

for b in "${BINARIES[@]}"; do
  name=$(basename "$b")
  copy_with_libs "$b" "/bin/$name"
  chmod 755 "$ROOT/bin/$name"
  # debug info is most of a dev build; the guest needs none of it
  strip --strip-debug "$ROOT/bin/$name" 2>/dev/null || true
done

M=$ROOT/lib/modules/$KVER
mkdir -p "$M"
cp "$KROOT/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$M/"
for m in $BASE_MODULES $MODULES; do
  modprobe -d "$KROOT" -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
done | sort -u | while read -r ko; do
  rel=${ko#"$KROOT/lib/modules/$KVER/"}
  mkdir -p "$M/$(dirname "$rel")"
  cp "$ko" "$M/$rel"
done
depmod -b "$ROOT" "$KVER"

cp "$HERE/guest/init" "$ROOT/init"; chmod 755 "$ROOT/init"
echo "root:x:0:0:root:/root:/bin/sh" > "$ROOT/etc/passwd"
echo "root:x:0:" > "$ROOT/etc/group"
if [ -n "${EXTRA_DIR:-}" ]; then cp -a "$EXTRA_DIR/." "$ROOT/"; fi

( cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet ) > "$OUT.$$.tmp"
if [ "$COMPRESS" = gzip ]; then gzip -6 -n < "$OUT.$$.tmp" > "$OUT.$$.tmp.gz" && mv "$OUT.$$.tmp.gz" "$OUT.$$.tmp"; fi
mv "$OUT.$$.tmp" "$OUT"
# keep the cache bounded: every new agent build makes a new image
ls -t "$CACHE"/initramfs/*.cpio* 2>/dev/null | tail -n +9 | xargs -r rm -f
echo "initramfs: $(du -h "$OUT" | cut -f1), $(find "$M" -name '*.ko' | wc -l) modules" >&2
echo "$OUT"
