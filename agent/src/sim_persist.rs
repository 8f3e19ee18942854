//! A [`SimulatedKernel`] whose module list outlives the agent process, as a
//! real kernel's does: restart tests need the "kernel" to still hold what the
//! killed agent loaded. Used only with `--kernel simulated`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::kernel::{
    self, Kernel, LoadOutcome, LoadRequest, LoadedModule, SimulatedKernel, UnloadOutcome,
    UnloadRequest,
};

/// The simulated kernel, snapshotted to a JSON file after every change, and
/// after each single insert of a multi-module load (a process killed mid-load
/// leaves what it inserted so far, as a real kernel would).
#[derive(Debug)]
pub struct PersistentSimulatedKernel {
    inner: SimulatedKernel,
    path: PathBuf,
    /// Serialises snapshots: the per-insert hook and whole calls may race.
    save_lock: Arc<Mutex<()>>,
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
        let save_lock = Arc::new(Mutex::new(()));
        let (hook_path, hook_lock) = (path.to_path_buf(), save_lock.clone());
        inner.set_after_insert(move |k| {
            // The whole call snapshots again and reports errors; here a warning suffices.
            if let Err(e) = save(k, &hook_path, &hook_lock) {
                tracing::warn!(error = %e, "simulated kernel: snapshot after an insert failed");
            }
        });
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            save_lock,
        })
    }

    /// Every insert takes this long (see [`SimulatedKernel::set_load_delay`]).
    pub fn set_load_delay(&self, delay: Duration) {
        self.inner.set_load_delay(delay);
    }

    /// Every remove takes this long (see [`SimulatedKernel::set_unload_delay`]).
    pub fn set_unload_delay(&self, delay: Duration) {
        self.inner.set_unload_delay(delay);
    }

    fn snapshot(&self) -> kernel::Result<()> {
        save(&self.inner, &self.path, &self.save_lock)
    }
}

fn save(k: &SimulatedKernel, path: &Path, lock: &Mutex<()>) -> kernel::Result<()> {
    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    let loaded = k.loaded_modules()?;
    let mut deps: BTreeMap<String, Vec<String>> = loaded
        .iter()
        .map(|m| (m.name.clone(), Vec::new()))
        .collect();
    for m in &loaded {
        for holder in &m.holders {
            deps.entry(holder.clone()).or_default().push(m.name.clone());
        }
    }
    let json = serde_json::to_vec(&deps).map_err(|e| kernel::Error::Simulated(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| kernel::Error::Simulated(format!("saving simulated kernel: {e}")))
}

impl Kernel for PersistentSimulatedKernel {
    fn loaded_modules(&self) -> kernel::Result<Vec<LoadedModule>> {
        self.inner.loaded_modules()
    }
    fn is_loaded(&self, name: &str) -> kernel::Result<bool> {
        self.inner.is_loaded(name)
    }
    fn load(&self, req: &LoadRequest) -> kernel::Result<LoadOutcome> {
        // Also after a failure: the per-insert snapshots saw what its rollback removed.
        let out = self.inner.load(req);
        self.snapshot()?;
        out
    }
    fn unload(&self, req: &UnloadRequest) -> kernel::Result<UnloadOutcome> {
        let out = self.inner.unload(req);
        self.snapshot()?;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Fault;

    /// `a` needs `b` needs `c`.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("x")).unwrap();
        for m in ["a", "b", "c"] {
            std::fs::write(dir.path().join(format!("x/{m}.ko")), b"\x7fELF").unwrap();
        }
        std::fs::write(
            dir.path().join("modules.dep"),
            "x/a.ko: x/b.ko x/c.ko\nx/b.ko: x/c.ko\nx/c.ko:\n",
        )
        .unwrap();
        dir
    }

    fn names(path: &Path) -> Vec<String> {
        let k = PersistentSimulatedKernel::open(path).unwrap();
        let mut n: Vec<_> = k
            .loaded_modules()
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        n.sort();
        n
    }

    #[test]
    fn each_insert_of_a_load_is_persisted_before_the_next() {
        let dir = tree();
        let snap = dir.path().join("sim.json");
        let k = Arc::new(PersistentSimulatedKernel::open(&snap).unwrap());
        k.set_load_delay(Duration::from_millis(300));
        let loader = {
            let (k, req) = (k.clone(), LoadRequest::new(dir.path(), "a"));
            std::thread::spawn(move || k.load(&req).unwrap())
        };
        // Seen between the first insert and the second, as a process killed there leaves it.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !snap.exists() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(names(&snap), ["c"]);
        assert_eq!(loader.join().unwrap().inserted, ["c", "b", "a"]);
        assert_eq!(names(&snap), ["a", "b", "c"]);
    }

    #[test]
    fn a_failed_load_persists_its_rollback() {
        let dir = tree();
        let snap = dir.path().join("sim.json");
        let k = PersistentSimulatedKernel::open(&snap).unwrap();
        k.inner
            .fail_next_load(Some("a"), Fault::Other("boom".into()));
        assert!(k.load(&LoadRequest::new(dir.path(), "a")).is_err());
        assert!(
            names(&snap).is_empty(),
            "c and b were inserted, then removed"
        );
    }
}
