//! The VM node: QEMU (TCG) booting Debian's real kernel with the agent inside.
