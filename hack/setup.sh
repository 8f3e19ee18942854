#!/usr/bin/env bash
# Installs what kmm-rs needs on a fresh Debian (bookworm) machine. Idempotent:
# when everything is present it only checks and exits in a second.
set -euo pipefail

# Debian packages:
#  libkmod-dev, libclang-dev, pkg-config  - the kmod crate (kmod-sys runs bindgen against libkmod)
#  kmod                                   - depmod, used by `kmmctl package` and the VM harness
#  docker-registry                        - the real OCI registry used by tests and the demo
#  qemu-system-x86, busybox-static, cpio  - the VM node booting Debian's real kernel (TCG)
#  openssl                                - control-plane certificates
#  apache2-utils                          - htpasswd, for the registry-auth tests
#  xz-utils, zstd                         - kernel/initramfs (de)compression
#  libssl-dev                             - the openssl crate (kmmctl sign: PKCS#7 module signatures)
#  buildah                                - executes the in-cluster build recipe for real in tests, and
#                                           builds the kmm-rs image without a daemon (hack/image/build.sh)
#  mmdebstrap, uidmap                     - the image's Debian base, made from the Debian archive
#  skopeo                                 - inspects/copies the pushed image (hack/image/build.sh)
#  binutils                               - strip: the test image's debug binaries
#  containerd, runc, iptables,            - the real node's runtime and Pod network, copied into
#  containernetworking-plugins, gcc,        the QEMU guest (hack/realnode); gcc + libc6-dev build
#  libc6-dev                                its pause image. Never started on the host.
#  prometheus                             - scrapes the real node's Pods (hack/realnode/prometheus.sh)
#  bc                                     - the real-node scripts' timelines
#  fonts-dejavu-core                      - the text of the fleet benchmark's plot (benches/)
#  lua5.4                                 - runs the Argo CD health check of docs/gitops.md in a test
PKGS=(libkmod-dev libclang-dev pkg-config kmod docker-registry qemu-system-x86 busybox-static cpio
      openssl apache2-utils xz-utils zstd ca-certificates curl libssl-dev buildah
      mmdebstrap uidmap skopeo binutils containerd runc iptables containernetworking-plugins
      gcc libc6-dev prometheus bc fonts-dejavu-core lua5.4)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  # No package may start its daemon on this machine (containerd, prometheus,
  # docker-registry run only where the scripts start them): policy-rc.d says
  # "action forbidden" to invoke-rc.d for the length of the install.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for t in cargo go; do
  command -v "$t" >/dev/null || { echo "setup: '$t' not found: install Rust (rustup) and Go first" >&2; exit 1; }
done
echo "setup: Debian packages present" >&2
