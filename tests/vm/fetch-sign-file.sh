#!/bin/bash
# Fetch the kernel's own scripts/sign-file (Debian's linux-kbuild-<series>
# package) for kmmctl's byte-for-byte signing test, like fetch-kernel.sh
# fetches the kernel: apt-get download + dpkg-deb -x into the cache.
#
# Usage: fetch-sign-file.sh KVER     (e.g. 6.1.0-57-amd64: the package is linux-kbuild-6.1)
#        prints the path of sign-file on its last line
# Env:   KMM_CACHE   cache root (default $HOME/.cache/kmm-rs); output in $KMM_CACHE/sign-file/
# Idempotent: a second run only finds the unpacked tool.
set -euo pipefail
KVER=${1:?usage: fetch-sign-file.sh KVER}
CACHE=${KMM_CACHE:-$HOME/.cache/kmm-rs}/sign-file
SERIES=$(echo "$KVER" | awk -F'[.-]' '{print $1 "." $2}')
PKG="linux-kbuild-$SERIES"
find_tool() { ls "$CACHE"/usr/lib/linux-kbuild-*/scripts/sign-file 2>/dev/null | sed -n 1p; }
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
TOOL=$(find_tool || true)
if [ -z "$TOOL" ]; then
  cd "$CACHE"
  apt-get download "$PKG" >&2
  for deb in "$CACHE"/*.deb; do dpkg-deb -x "$deb" "$CACHE"; done
  TOOL=$(find_tool)
fi
[ -x "$TOOL" ] || { echo "fetch-sign-file: no sign-file in $PKG" >&2; exit 1; }
echo "$TOOL"
