//! kmmctl: tools around kmod images for kmm-rs.
//!
//! `kmmctl package` builds a kmod OCI image without docker or buildah: the
//! requested modules and their dependencies from a module tree (or explicit
//! `.ko` files), the `modules.*` indexes from `depmod`, optional firmware, all
//! in one reproducible gzip layer, written to an OCI layout and/or pushed with
//! oci-client.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kmmctl::{depmod::Depmod, package::{package, PackageRequest}};
//! let mut req = PackageRequest::new("6.1.0-56-amd64");
//! req.module_tree = Some("/tmp/lab/kernel".into());
//! req.module_names = vec!["null_blk".into()];
//! let packaged = package(&req, &Depmod::find()?)?;
//! println!("{} ships {:?}", packaged.image.manifest_digest, packaged.modules);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, reason = "unit tests fail loudly on setup errors")
)]

pub mod cli;
pub mod cluster;
pub mod decompress;
pub mod depmod;
pub mod digest;
pub mod explain;
pub mod image;
pub mod layer;
pub mod layout;
pub mod modtree;
pub mod package;
pub mod progress;
pub mod registry;
pub mod rollout;
pub mod sign;
pub mod stage;
pub mod status;
pub mod table;

/// Any kmmctl failure, by step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the image.
    #[error(transparent)]
    Package(#[from] package::Error),
    /// Writing the OCI layout.
    #[error(transparent)]
    Layout(#[from] layout::Error),
    /// Talking to the registry.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// Explaining a Module (`kmmctl explain`).
    #[error(transparent)]
    Explain(#[from] explain::Error),
    /// Steering a ModuleRollout (`kmmctl rollout`).
    #[error(transparent)]
    Rollout(#[from] rollout::Error),
    /// The Module × node matrix (`kmmctl status`).
    #[error(transparent)]
    Status(#[from] status::Error),
    /// Signing a module file (`kmmctl sign-file`).
    #[error(transparent)]
    Sign(#[from] sign::Error),
    /// Signing the modules of an image (`kmmctl sign`).
    #[error(transparent)]
    SignImage(#[from] sign::image::Error),
}

impl Error {
    /// A short stable label of the failure kind (for metrics and scripts).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Package(_) => "package",
            Error::Layout(_) => "layout",
            Error::Registry(_) => "registry",
            Error::Explain(_) => "explain",
            Error::Rollout(_) => "rollout",
            Error::Status(_) => "status",
            Error::Sign(_) => "sign",
            Error::SignImage(_) => "sign_image",
        }
    }
}
