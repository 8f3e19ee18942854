//! API types: `Module` and `NodeModulesConfig` (`kmm.sigs.x-k8s.io/v1beta1`), and
//! `PreflightValidation` (`v1beta2`); kmm-rs's own `ModuleRollout` (`rollout.kmm-rs.io/v1alpha1`).

pub mod cel;
pub mod dra;
pub mod module;
pub mod nmc;
pub mod preflight;
pub mod rollout;
