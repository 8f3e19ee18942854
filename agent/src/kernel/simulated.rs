//! An in-memory [`Kernel`] for scale and fault tests.
//!
//! It reads the same module directories as [`super::LibKmod`] (`modules.dep`,
//! and the `.ko` files must exist) and follows the same rules: dependencies
//! first, idempotent loads, holders and refcounts, `in use` errors, `modprobe -r`
//! dependency removal, rollback of a failed load. Faults and delays can be
//! injected. It is never the proof that loading works: the VM tests are.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::moddep::ModulesDep;
use super::{
    DepPolicy, Error, Kernel, LoadOutcome, LoadRequest, LoadedModule, Result, UnloadOutcome,
    UnloadRequest, normalize, require_modules_dep, validate_name,
};

/// A failure to inject into the next matching insert or remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `EKEYREJECTED` ([`Error::KeyRejected`]).
    KeyRejected,
    /// `EINVAL` ([`Error::InvalidParameters`]).
    InvalidParameters,
    /// `ENOENT` ([`Error::UnknownSymbolOrParameter`]).
    UnknownSymbolOrParameter,
    /// `EBUSY` on remove ([`Error::InUse`]).
    Busy,
    /// Any other failure ([`Error::Simulated`]).
    Other(String),
}

#[derive(Debug, Clone, Default)]
struct SimModule {
    holders: BTreeSet<String>,
    /// References that are not modules (open devices, mounts).
    users: i64,
    params: Vec<String>,
}

#[derive(Debug, Default)]
struct SimState {
    loaded: BTreeMap<String, SimModule>,
    builtin: BTreeSet<String>,
    deps: HashMap<PathBuf, (Option<SystemTime>, Arc<ModulesDep>)>,
    load_faults: VecDeque<(Option<String>, Fault)>,
    unload_faults: VecDeque<(Option<String>, Fault)>,
    load_delay: Duration,
    unload_delay: Duration,
    inserts: u64,
    removes: u64,
    after_insert: Option<InsertHook>,
}

/// Called after each single insert (lock released), so an observer sees a
/// multi-module load's progress as a real kernel's module list shows it.
#[derive(Clone)]
struct InsertHook(Arc<dyn Fn(&SimulatedKernel) + Send + Sync>);

impl std::fmt::Debug for InsertHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InsertHook")
    }
}

/// In-memory kernel; cheap to clone (clones share state).
#[derive(Debug, Clone, Default)]
pub struct SimulatedKernel {
    state: Arc<Mutex<SimState>>,
}

impl SimulatedKernel {
    /// An empty kernel: nothing loaded, nothing built in.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // a panicking test thread must not hide the state from the others
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `name` as built into the kernel (always loaded, never removed).
    pub fn add_builtin(&self, name: &str) {
        self.lock().builtin.insert(normalize(name));
    }

    /// Loads `name` as if it were there before us (e.g. an in-tree module), held by
    /// nothing, using `deps` (which must be loaded or are added the same way).
    pub fn preload(&self, name: &str, deps: &[&str]) {
        let mut st = self.lock();
        let name = normalize(name);
        for dep in deps {
            st.loaded
                .entry(normalize(dep))
                .or_default()
                .holders
                .insert(name.clone());
        }
        st.loaded.entry(name).or_default();
    }

    /// Adds a non-module reference (like a mounted fs or an open device).
    pub fn add_user(&self, name: &str) {
        if let Some(m) = self.lock().loaded.get_mut(&normalize(name)) {
            m.users += 1;
        }
    }

    /// Drops a reference added with [`Self::add_user`].
    pub fn remove_user(&self, name: &str) {
        if let Some(m) = self.lock().loaded.get_mut(&normalize(name)) {
            m.users = (m.users - 1).max(0);
        }
    }

    /// The next insert of `module` (any module if `None`) fails with `fault`.
    pub fn fail_next_load(&self, module: Option<&str>, fault: Fault) {
        self.lock()
            .load_faults
            .push_back((module.map(normalize), fault));
    }

    /// The next remove of `module` (any module if `None`) fails with `fault`.
    pub fn fail_next_unload(&self, module: Option<&str>, fault: Fault) {
        self.lock()
            .unload_faults
            .push_back((module.map(normalize), fault));
    }

    /// Every insert takes this long (the lock is not held meanwhile).
    pub fn set_load_delay(&self, delay: Duration) {
        self.lock().load_delay = delay;
    }

    /// Calls `hook` after every single insert (not once per [`Kernel::load`]),
    /// without the kernel's lock held.
    pub fn set_after_insert(&self, hook: impl Fn(&SimulatedKernel) + Send + Sync + 'static) {
        self.lock().after_insert = Some(InsertHook(Arc::new(hook)));
    }

    /// Every remove takes this long.
    pub fn set_unload_delay(&self, delay: Duration) {
        self.lock().unload_delay = delay;
    }

    /// Parameters `name` was inserted with, if loaded.
    pub fn parameters(&self, name: &str) -> Option<Vec<String>> {
        self.lock()
            .loaded
            .get(&normalize(name))
            .map(|m| m.params.clone())
    }

    /// Number of successful inserts so far.
    pub fn insert_count(&self) -> u64 {
        self.lock().inserts
    }

    /// Number of successful removes so far.
    pub fn remove_count(&self) -> u64 {
        self.lock().removes
    }

    fn modules_dep(&self, dir: &Path) -> Result<Arc<ModulesDep>> {
        require_modules_dep(dir)?;
        let file = dir.join("modules.dep");
        let mtime = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
        if let Some((cached_mtime, dep)) = self.lock().deps.get(dir)
            && *cached_mtime == mtime
        {
            return Ok(dep.clone());
        }
        let dep =
            Arc::new(ModulesDep::read(dir).map_err(|source| Error::Io { path: file, source })?);
        self.lock()
            .deps
            .insert(dir.to_path_buf(), (mtime, dep.clone()));
        Ok(dep)
    }

    fn present(&self, name: &str) -> bool {
        let st = self.lock();
        st.loaded.contains_key(name) || st.builtin.contains(name)
    }

    fn insert_tree(
        &self,
        dep: &ModulesDep,
        dir: &Path,
        name: &str,
        params: &[String],
        visited: &mut BTreeSet<String>,
        inserted: &mut Vec<String>,
    ) -> Result<()> {
        let name = normalize(name);
        if !visited.insert(name.clone()) || self.present(&name) {
            return Ok(());
        }
        let Some(entry) = dep.get(&name) else {
            return Err(Error::NotFound {
                module: name,
                dir: dir.to_path_buf(),
            });
        };
        for d in &entry.deps {
            self.insert_tree(dep, dir, d, &[], visited, inserted)?;
        }
        let path = dir.join(&entry.path);
        if !path.is_file() {
            return Err(Error::Insert {
                module: name,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} is missing", path.display()),
                ),
            });
        }
        let delay = self.lock().load_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = self.lock();
        if let Some(fault) = take_fault(&mut st.load_faults, &name) {
            return Err(match fault {
                Fault::KeyRejected => Error::KeyRejected { module: name },
                Fault::InvalidParameters => Error::InvalidParameters {
                    module: name,
                    parameters: params.to_vec(),
                },
                Fault::UnknownSymbolOrParameter => Error::UnknownSymbolOrParameter { module: name },
                Fault::Busy => Error::Insert {
                    module: name,
                    source: std::io::Error::from_raw_os_error(nix::errno::Errno::EBUSY as i32),
                },
                Fault::Other(msg) => Error::Simulated(msg),
            });
        }
        if st.loaded.contains_key(&name) {
            // another caller won the race: File exists, which is success
            return Ok(());
        }
        for d in &entry.deps {
            if let Some(m) = st.loaded.get_mut(d) {
                m.holders.insert(name.clone());
            }
        }
        st.loaded.insert(
            name.clone(),
            SimModule {
                params: params.to_vec(),
                ..SimModule::default()
            },
        );
        st.inserts += 1;
        inserted.push(name);
        let hook = st.after_insert.clone();
        drop(st);
        if let Some(InsertHook(hook)) = hook {
            hook(self);
        }
        Ok(())
    }

    /// Removes `name` if nothing uses it; returns what it used.
    fn remove_one(&self, name: &str, explicit: bool) -> Result<Option<Vec<String>>> {
        let delay = self.lock().unload_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = self.lock();
        let Some(m) = st.loaded.get(name) else {
            return Ok(None);
        };
        let refcount = m.users + m.holders.len() as i64;
        let in_use = Error::InUse {
            module: name.to_owned(),
            holders: m.holders.iter().cloned().collect(),
            refcount,
        };
        if refcount > 0 {
            return if explicit { Err(in_use) } else { Ok(None) };
        }
        if let Some(fault) = take_fault(&mut st.unload_faults, name) {
            if !explicit {
                return Ok(None);
            }
            return Err(match fault {
                Fault::Busy => in_use,
                Fault::Other(msg) => Error::Simulated(msg),
                other => Error::Simulated(format!("{other:?}")),
            });
        }
        st.loaded.remove(name);
        st.removes += 1;
        let mut used = Vec::new();
        for (dep, m) in &mut st.loaded {
            if m.holders.remove(name) {
                used.push(dep.clone());
            }
        }
        Ok(Some(used))
    }

    fn remove_tree(
        &self,
        name: &str,
        policy: &DepPolicy,
        explicit: bool,
        removed: &mut Vec<String>,
    ) -> Result<()> {
        let Some(used) = self.remove_one(name, explicit)? else {
            return Ok(());
        };
        removed.push(name.to_owned());
        for dep in used {
            if policy.allows(&dep) {
                self.remove_tree(&dep, policy, false, removed)?;
            }
        }
        Ok(())
    }
}

fn take_fault(faults: &mut VecDeque<(Option<String>, Fault)>, name: &str) -> Option<Fault> {
    let pos = faults
        .iter()
        .position(|(m, _)| m.as_deref().is_none_or(|m| m == name))?;
    faults.remove(pos).map(|(_, f)| f)
}

impl Kernel for SimulatedKernel {
    fn loaded_modules(&self) -> Result<Vec<LoadedModule>> {
        Ok(self
            .lock()
            .loaded
            .iter()
            .map(|(name, m)| LoadedModule {
                name: name.clone(),
                refcount: m.users + m.holders.len() as i64,
                holders: m.holders.iter().cloned().collect(),
            })
            .collect())
    }

    fn is_loaded(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        Ok(self.present(&normalize(name)))
    }

    fn load(&self, req: &LoadRequest) -> Result<LoadOutcome> {
        for name in req.load_order() {
            validate_name(name)?;
        }
        let dep = self.modules_dep(&req.module_dir)?;
        let main = normalize(&req.name);
        let already_loaded = self.present(&main);
        let mut visited = BTreeSet::new();
        let mut inserted = Vec::new();
        for name in req.load_order() {
            let params: &[String] = if normalize(name) == main {
                &req.parameters
            } else {
                &[]
            };
            if let Err(e) = self.insert_tree(
                &dep,
                &req.module_dir,
                name,
                params,
                &mut visited,
                &mut inserted,
            ) {
                for name in inserted.iter().rev() {
                    let _ = self.remove_one(name, false);
                }
                return Err(e);
            }
        }
        Ok(LoadOutcome {
            inserted,
            already_loaded,
        })
    }

    fn unload(&self, req: &UnloadRequest) -> Result<UnloadOutcome> {
        for name in &req.modules {
            validate_name(name)?;
        }
        let mut removed = Vec::new();
        for name in &req.modules {
            let name = normalize(name);
            if self.lock().builtin.contains(&name) {
                return Err(Error::Builtin { module: name });
            }
            self.remove_tree(&name, &req.deps, true, &mut removed)?;
        }
        Ok(UnloadOutcome { removed })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    /// A module tree as depmod would leave it: `a` needs `b` needs `c`.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for m in ["a", "b", "c", "solo"] {
            std::fs::create_dir_all(dir.path().join("kernel/x")).unwrap();
            std::fs::write(dir.path().join(format!("kernel/x/{m}.ko")), b"\x7fELF").unwrap();
        }
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/x/a.ko: kernel/x/b.ko kernel/x/c.ko\nkernel/x/b.ko: kernel/x/c.ko\n\
             kernel/x/c.ko:\nkernel/x/solo.ko:\nkernel/x/gone.ko:\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn load_inserts_dependencies_first_and_is_idempotent() {
        let dir = tree();
        let k = SimulatedKernel::new();
        let req = LoadRequest::new(dir.path(), "a").with_parameters(["p=1".to_owned()]);
        let out = k.load(&req).unwrap();
        assert_eq!(out.inserted, ["c", "b", "a"]);
        assert!(!out.already_loaded);
        assert_eq!(k.parameters("a").unwrap(), ["p=1"]);
        assert_eq!(k.parameters("c").unwrap(), Vec::<String>::new());

        let again = k.load(&req).unwrap();
        assert!(again.inserted.is_empty() && again.already_loaded);
        assert_eq!(k.insert_count(), 3);
    }

    #[test]
    fn unload_removes_unused_dependencies_only() {
        let dir = tree();
        let k = SimulatedKernel::new();
        k.load(&LoadRequest::new(dir.path(), "a")).unwrap();
        k.load(&LoadRequest::new(dir.path(), "solo")).unwrap();
        k.preload("other", &["c"]); // c is also used by something else

        let err = k.unload(&UnloadRequest::module("b")).unwrap_err();
        assert_eq!(err.to_string(), "could not remove b: in use by a");

        let out = k.unload(&UnloadRequest::module("a")).unwrap();
        assert_eq!(out.removed, ["a", "b"]);
        assert!(k.is_loaded("c").unwrap() && k.is_loaded("solo").unwrap());
    }

    #[test]
    fn unload_keeps_dependencies_that_were_there_before() {
        let dir = tree();
        let k = SimulatedKernel::new();
        k.preload("c", &[]);
        let load = k.load(&LoadRequest::new(dir.path(), "a")).unwrap();
        assert_eq!(load.inserted, ["b", "a"]);
        let out = k
            .unload(&UnloadRequest::module("a").only_deps(load.inserted))
            .unwrap();
        assert_eq!(out.removed, ["a", "b"]);
        assert!(k.is_loaded("c").unwrap());
    }

    #[test]
    fn failed_load_rolls_back_what_it_inserted() {
        let dir = tree();
        let k = SimulatedKernel::new();
        k.fail_next_load(Some("a"), Fault::KeyRejected);
        let err = k.load(&LoadRequest::new(dir.path(), "a")).unwrap_err();
        assert!(
            err.to_string().contains("Key was rejected by service"),
            "{err}"
        );
        assert!(k.loaded_modules().unwrap().is_empty());
        // the fault was consumed
        assert_eq!(
            k.load(&LoadRequest::new(dir.path(), "a"))
                .unwrap()
                .inserted
                .len(),
            3
        );
    }

    #[test]
    fn missing_module_file_and_missing_entry_are_errors() {
        let dir = tree();
        let k = SimulatedKernel::new();
        let err = k.load(&LoadRequest::new(dir.path(), "nope")).unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        let err = k.load(&LoadRequest::new(dir.path(), "gone")).unwrap_err();
        assert!(err.to_string().contains("is missing"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = k.load(&LoadRequest::new(empty.path(), "a")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("image has no modules.dep under"),
            "{err}"
        );
    }

    #[test]
    fn remove_in_tree_of_a_used_module_names_the_user() {
        let k = SimulatedKernel::new();
        k.preload("loop", &[]);
        k.add_user("loop");
        let err = k.remove_in_tree("loop").unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not remove loop: in use (refcount 1)"
        );
        k.remove_user("loop");
        assert_eq!(k.remove_in_tree("loop").unwrap().removed, ["loop"]);
        assert!(k.remove_in_tree("loop").unwrap().removed.is_empty());
    }
}
