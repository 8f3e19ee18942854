#!/bin/bash
# Boot the VM node by hand, with a shell on the serial console (Ctrl-A X quits).
# The tests use tests/src/vm (VmNode) instead; this is for poking around.
#
# Usage: boot.sh [BINARY...]     binaries go to /bin in the guest (e.g. target/debug/examples/kmodctl)
# Env:   SHARE=/dir   9p-share a host directory as /host
#        APPEND="..." extra kernel arguments (e.g. module.sig_enforce=1)
#        plus what fetch-kernel.sh and make-initramfs.sh take (KMM_CACHE, MODULES, EXTRA_DIR, ...)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KDIR=$("$HERE/fetch-kernel.sh" | tail -1)
INITRD=$(KMM_VM_KERNEL_DIR=$KDIR "$HERE/make-initramfs.sh" "$@" | tail -1)
args=(-machine q35 -accel tcg -cpu max -m 1024 -smp 1 -no-reboot -nodefaults -display none
      -kernel "$KDIR/vmlinux" -initrd "$INITRD" -serial mon:stdio
      -nic user,model=virtio-net-pci)
CMDLINE="console=ttyS0 panic=-1 quiet kmm.net=1 kmm.shell=1"
if [ -n "${SHARE:-}" ]; then
  args+=(-virtfs "local,path=$SHARE,mount_tag=host0,security_model=none,id=fs0")
  CMDLINE="$CMDLINE kmm.share=1"
fi
exec qemu-system-x86_64 "${args[@]}" -append "$CMDLINE ${APPEND:-}"
