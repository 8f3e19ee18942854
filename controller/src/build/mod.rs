//! In-cluster build and sign: for every kernel running on nodes the Module
//! selects whose mapping has `build` or `sign` and whose image is not in the
//! registry yet, a Job produces it. Nodes meanwhile wait for the image (the
//! agent reports `WaitingForImage`, not a pull failure).
//!
//! - [`job`]: the Jobs (kaniko for builds as upstream KMM, `kmmctl sign` for
//!   signing), named by the hash of their inputs;
//! - [`plan`]: per kernel, what to do given the registry and existing Jobs;
//! - [`sync`]: the reconcile step that asks the registry and applies the plan.

pub mod job;
pub mod plan;
pub mod sync;

pub use sync::{BuildContext, BuildReport, ImageLookups, sync};

#[cfg(test)]
pub(crate) mod tests;
