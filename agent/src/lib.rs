//! kmm-agent library: everything the per-node agent does, split by concern.
#![warn(missing_docs)]

pub mod extract;
pub mod image;
pub mod kernel;
