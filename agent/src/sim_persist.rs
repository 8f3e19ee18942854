//! A [`SimulatedKernel`] whose module list outlives the agent process, as a
//! real kernel's does: restart tests need the "kernel" to still hold what the
//! killed agent loaded. Used only with `--kernel simulated` (cargo feature
//! `simulated`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::kernel::{
    self, Inserted, KernelOps, LoadedModule, ModuleFile, ModuleState, Removed, SimulatedKernel,
};

/// The simulated kernel, snapshotted to a JSON file after each single insert
/// and remove (a process killed mid-load leaves what it inserted so far, as a
/// real kernel would).
#[derive(Debug)]
pub struct PersistentSimulatedKernel {
    inner: SimulatedKernel,
    path: PathBuf,
    /// Serialises snapshots of concurrent calls.
    save_lock: Mutex<()>,
}

/// One module of a snapshot.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    /// Modules it uses.
    deps: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    srcversion: Option<String>,
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
                let modules: BTreeMap<String, Snapshot> =
                    serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
                for (name, m) in &modules {
                    let deps: Vec<&str> = m.deps.iter().map(String::as_str).collect();
                    inner.preload_build(name, &deps, m.srcversion.as_deref());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            save_lock: Mutex::new(()),
        })
    }

    /// Every insert takes this long (see [`SimulatedKernel::set_load_delay`]).
    pub fn set_load_delay(&self, delay: Duration) {
        self.inner.set_load_delay(delay);
    }

    /// The in-memory kernel (fault injection, counters); changes made through
    /// it directly are saved with the next insert or remove.
    pub fn simulated(&self) -> &SimulatedKernel {
        &self.inner
    }

    fn save(&self) -> kernel::Result<()> {
        let _guard = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        let modules: BTreeMap<String, Snapshot> = self
            .inner
            .snapshot()
            .into_iter()
            .map(|(name, (deps, srcversion))| (name, Snapshot { deps, srcversion }))
            .collect();
        let json =
            serde_json::to_vec(&modules).map_err(|e| kernel::Error::Simulated(e.to_string()))?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| kernel::Error::Simulated(format!("saving simulated kernel: {e}")))
    }
}

impl KernelOps for PersistentSimulatedKernel {
    type Dir = <SimulatedKernel as KernelOps>::Dir;

    fn list_modules(&self) -> kernel::Result<Vec<LoadedModule>> {
        self.inner.list_modules()
    }

    fn state(&self, name: &str) -> kernel::Result<ModuleState> {
        self.inner.state(name)
    }

    fn open_dir(&self, module_dir: &Path) -> kernel::Result<Self::Dir> {
        self.inner.open_dir(module_dir)
    }

    fn resolve(&self, dir: &Self::Dir, name: &str) -> kernel::Result<Option<ModuleFile>> {
        self.inner.resolve(dir, name)
    }

    fn insert(
        &self,
        dir: &Self::Dir,
        module: &ModuleFile,
        params: &[String],
    ) -> kernel::Result<Inserted> {
        let inserted = self.inner.insert(dir, module, params)?;
        if inserted == Inserted::Inserted
            && let Err(e) = self.save()
        {
            // not reported as inserted: take it out again so that nothing leaks
            let _ = self.inner.remove(&module.name);
            return Err(e);
        }
        Ok(inserted)
    }

    fn remove(&self, name: &str) -> kernel::Result<Removed> {
        let removed = self.inner.remove(name)?;
        if removed == Removed::Removed {
            self.save()?;
        }
        Ok(removed)
    }

    fn loaded_srcversion(&self, name: &str) -> kernel::Result<Option<String>> {
        self.inner.loaded_srcversion(name)
    }

    fn srcversion_of_file(&self, path: &Path) -> kernel::Result<Option<String>> {
        self.inner.srcversion_of_file(path)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kernel::{Fault, Kernel, LoadRequest};

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
        k.simulated()
            .fail_next_load(Some("a"), Fault::Other("boom".into()));
        assert!(k.load(&LoadRequest::new(dir.path(), "a")).is_err());
        assert!(
            names(&snap).is_empty(),
            "c and b were inserted, then removed"
        );
    }

    #[test]
    fn srcversions_survive_a_restart() {
        let dir = tree();
        std::fs::write(dir.path().join("x/a.ko"), b"fake srcversion=BUILD1").unwrap();
        let snap = dir.path().join("sim.json");
        let k = PersistentSimulatedKernel::open(&snap).unwrap();
        k.simulated().preload_build("foreign", &[], Some("INTREE"));
        k.load(&LoadRequest::new(dir.path(), "a")).unwrap();
        drop(k);
        let k = PersistentSimulatedKernel::open(&snap).unwrap();
        assert_eq!(k.srcversion("a").unwrap().as_deref(), Some("BUILD1"));
        assert_eq!(k.srcversion("foreign").unwrap().as_deref(), Some("INTREE"));
        assert_eq!(
            k.srcversion("b").unwrap(),
            KernelOps::srcversion_of_file(&k, &dir.path().join("x/b.ko")).unwrap()
        );
    }
}
