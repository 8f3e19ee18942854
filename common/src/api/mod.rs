//! API types: `Module` and `NodeModulesConfig` (`kmm.sigs.x-k8s.io/v1beta1`), and
//! `PreflightValidation` (`v1beta2`).

pub mod cel;
pub mod dra;
pub mod module;
pub mod nmc;
pub mod preflight;
