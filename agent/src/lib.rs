//! kmm-agent library: everything the per-node agent does, split by concern.
#![warn(missing_docs)]

pub mod boot;
pub mod credentials;
pub mod extract;
pub mod image;
pub mod kernel;
pub mod load_sequence;
pub mod metrics;
pub mod node_labels;
pub mod plan;
pub mod reconciler;
pub mod server;
#[cfg(feature = "simulated")]
pub mod sim_persist;
pub mod state;
