//! The one blocking sequence that puts a Module's modules into the kernel, shared
//! by the in-cluster executor and the boot path: remove the in-tree modules it
//! replaces, install its firmware, then load (dependencies first, rolled back by
//! the kernel layer if any insert fails).

use std::path::{Path, PathBuf};

use crate::kernel::{self, Kernel, LoadOutcome, LoadRequest, firmware};

/// Where firmware goes on the host.
#[derive(Debug, Clone)]
pub struct FirmwareTarget {
    /// Host directory firmware files are copied into.
    pub dir: PathBuf,
    /// Also point the kernel's firmware search path at `dir`.
    pub set_class_path: bool,
    /// The `firmware_class.path` parameter file (normally [`firmware::FIRMWARE_CLASS_PATH`]).
    pub class_path: PathBuf,
}

/// One Module's load, fully resolved.
#[derive(Debug, Clone)]
pub struct LoadSteps<'a> {
    /// The modules, parameters and order.
    pub request: &'a LoadRequest,
    /// `inTreeModulesToRemove`, removed first.
    pub in_tree_to_remove: &'a [String],
    /// The image's firmware directory, if the Module has `firmwarePath`.
    pub firmware_source: Option<&'a Path>,
}

/// What the sequence did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadDone {
    /// In-tree modules removed.
    pub in_tree_removed: Vec<String>,
    /// Firmware files installed, relative to the firmware dir.
    pub firmware_files: Vec<PathBuf>,
    /// What the load inserted.
    pub outcome: LoadOutcome,
}

/// Which step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// An `inTreeModulesToRemove` module could not be removed.
    #[error("removing in-tree module {name}: {source}")]
    InTree {
        /// The module.
        name: String,
        /// Cause.
        #[source]
        source: kernel::Error,
    },
    /// Installing firmware failed.
    #[error("installing firmware: {0}")]
    Firmware(#[from] firmware::FirmwareError),
    /// The load itself failed.
    #[error("{0}")]
    Kernel(#[from] kernel::Error),
}

/// Runs the sequence. Blocking: call it from `spawn_blocking`.
///
/// # Errors
/// The first failing step; nothing after it runs. A failed load leaves no module
/// of this attempt inserted (the kernel layer rolls back); in-tree modules already
/// removed stay removed (they are never loaded back).
pub fn run(
    kernel: &dyn Kernel,
    steps: &LoadSteps<'_>,
    firmware_target: &FirmwareTarget,
) -> Result<LoadDone, StepError> {
    let mut done = LoadDone::default();
    for name in steps.in_tree_to_remove {
        let out = kernel
            .remove_in_tree(name)
            .map_err(|source| StepError::InTree {
                name: name.clone(),
                source,
            })?;
        done.in_tree_removed.extend(out.removed);
    }
    if let Some(src) = steps.firmware_source {
        done.firmware_files = firmware::install_firmware(src, &firmware_target.dir)?.installed;
        if firmware_target.set_class_path {
            firmware::set_firmware_class_path(&firmware_target.class_path, &firmware_target.dir)?;
        }
    }
    done.outcome = kernel.load(steps.request)?;
    Ok(done)
}
