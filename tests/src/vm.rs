//! The VM node: QEMU (TCG) booting Debian's real kernel with our binaries inside.
//!
//! * [`artifacts`]: the kernel (`tests/vm/fetch-kernel.sh`) and the initramfs
//!   (`tests/vm/make-initramfs.sh`), both cached under `$KMM_CACHE/vm`
//!   (default `~/.cache/kmm-rs/vm`);
//! * [`stage`]: module trees laid out like a kmod image (`<dirName>/lib/modules/<kver>`);
//! * [`modinfo`]: a module's `.modinfo` read and rewritten (a `.ko` with another `srcversion`);
//! * [`node`]: [`VmNode`] boots the VM and runs commands in it.
//!
//! Guest facts: user-mode networking (the guest is 10.0.2.15; the host's
//! 127.0.0.1 is 10.0.2.2), an optional 9p share mounted on `/host`, busybox +
//! the real kmod in the initramfs, serial console logged to a file.

pub mod artifacts;
pub mod modinfo;
pub mod node;
pub mod stage;

pub use artifacts::{InitramfsSpec, KernelArtifacts};
pub use node::{CmdOutput, VmNode, VmOptions};
