//! A [`SimulatedKernel`] whose module list outlives the agent process, as a
//! real kernel's does: restart tests need the "kernel" to still hold what the
//! killed agent loaded. Used only with `--kernel simulated`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::kernel::{
    self, Kernel, LoadOutcome, LoadRequest, LoadedModule, SimulatedKernel, UnloadOutcome,
    UnloadRequest,
};

/// The simulated kernel, snapshotted to a JSON file after every change.
#[derive(Debug)]
pub struct PersistentSimulatedKernel {
    inner: SimulatedKernel,
    path: PathBuf,
}

impl PersistentSimulatedKernel {
    /// Opens the snapshot at `path` (missing: an empty kernel).
    ///
    /// # Errors
    /// An unreadable or corrupt snapshot.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let inner = SimulatedKernel::new();
        match std::fs::read(path) {
            Ok(bytes) => {
                // module -> modules it depends on (those holding nothing of it).
                let deps: BTreeMap<String, Vec<String>> =
                    serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
                for (name, d) in &deps {
                    let d: Vec<&str> = d.iter().map(String::as_str).collect();
                    inner.preload(name, &d);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    fn snapshot(&self) -> kernel::Result<()> {
        let loaded = self.inner.loaded_modules()?;
        let mut deps: BTreeMap<String, Vec<String>> = loaded
            .iter()
            .map(|m| (m.name.clone(), Vec::new()))
            .collect();
        for m in &loaded {
            for holder in &m.holders {
                deps.entry(holder.clone()).or_default().push(m.name.clone());
            }
        }
        let json =
            serde_json::to_vec(&deps).map_err(|e| kernel::Error::Simulated(e.to_string()))?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| kernel::Error::Simulated(format!("saving simulated kernel: {e}")))
    }
}

impl Kernel for PersistentSimulatedKernel {
    fn loaded_modules(&self) -> kernel::Result<Vec<LoadedModule>> {
        self.inner.loaded_modules()
    }
    fn is_loaded(&self, name: &str) -> kernel::Result<bool> {
        self.inner.is_loaded(name)
    }
    fn load(&self, req: &LoadRequest) -> kernel::Result<LoadOutcome> {
        let out = self.inner.load(req)?;
        self.snapshot()?;
        Ok(out)
    }
    fn unload(&self, req: &UnloadRequest) -> kernel::Result<UnloadOutcome> {
        let out = self.inner.unload(req);
        self.snapshot()?;
        out
    }
}
