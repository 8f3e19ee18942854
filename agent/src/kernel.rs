//! The `Kernel` trait: loading and unloading modules, with libkmod and simulated implementations.
