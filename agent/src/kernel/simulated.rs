//! An in-memory kernel for scale and fault tests, as [`KernelOps`] (so it runs
//! the same `modprobe` algorithm as [`super::LibKmod`]).
//!
//! It reads the same module directories (`modules.dep`; the `.ko` files must
//! exist) and keeps what a kernel keeps: holders and refcounts, parameters,
//! each module's `srcversion` (from the file's `.modinfo`, else a
//! `srcversion=` string anywhere in a fake `.ko`, else a digest of the file,
//! so two builds of one module name differ). Faults and delays can be
//! injected. It is never the proof that loading works: the VM tests are.
//! Built only for tests and with the `simulated` cargo feature.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::moddep::ModulesDep;
use super::ops::{Inserted, KernelOps, ModuleFile, ModuleState, Removed};
use super::{Error, LoadedModule, Result, normalize, require_modules_dep};

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
    srcversion: Option<String>,
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
        self.preload_build(name, deps, None);
    }

    /// [`Self::preload`] of a particular build: `srcversion` is what
    /// `/sys/module/<name>/srcversion` shows (e.g. an in-tree module that is a
    /// different build from the image's).
    pub fn preload_build(&self, name: &str, deps: &[&str], srcversion: Option<&str>) {
        let mut st = self.lock();
        let name = normalize(name);
        for dep in deps {
            st.loaded
                .entry(normalize(dep))
                .or_default()
                .holders
                .insert(name.clone());
        }
        st.loaded.entry(name).or_default().srcversion = srcversion.map(str::to_owned);
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

    fn insert_fault(&self, st: &mut SimState, name: &str, params: &[String]) -> Option<Error> {
        let module = name.to_owned();
        Some(match take_fault(&mut st.load_faults, name)? {
            Fault::KeyRejected => Error::KeyRejected { module },
            Fault::InvalidParameters => Error::InvalidParameters {
                module,
                parameters: params.to_vec(),
            },
            Fault::UnknownSymbolOrParameter => Error::UnknownSymbolOrParameter { module },
            Fault::Busy => Error::Insert {
                module,
                source: std::io::Error::from_raw_os_error(nix::errno::Errno::EBUSY as i32),
            },
            Fault::Other(msg) => Error::Simulated(msg),
        })
    }
}

/// A simulated module file's `srcversion`: as the kernel would show it for a
/// real ELF module (its `.modinfo`'s, maybe none); for a fake file the first
/// `srcversion=` in it, else one derived from its content.
fn sim_srcversion(bytes: &[u8]) -> Option<String> {
    if let Some(modinfo) = super::modinfo::modinfo_section(bytes) {
        return super::modinfo::field(modinfo, "srcversion").map(str::to_owned);
    }
    const KEY: &[u8] = b"srcversion=";
    if let Some(at) = bytes.windows(KEY.len()).position(|w| w == KEY) {
        let value = &bytes[at + KEY.len()..];
        let end = value
            .iter()
            .position(|b| *b == 0 || b.is_ascii_whitespace())
            .unwrap_or(value.len());
        return Some(String::from_utf8_lossy(&value[..end]).into_owned());
    }
    // the kernel's is 23 upper-case hex digits of an MD4 over the sources
    Some(hex::encode_upper(Sha256::digest(bytes))[..23].to_owned())
}

fn take_fault(faults: &mut VecDeque<(Option<String>, Fault)>, name: &str) -> Option<Fault> {
    let pos = faults
        .iter()
        .position(|(m, _)| m.as_deref().is_none_or(|m| m == name))?;
    faults.remove(pos).map(|(_, f)| f)
}

impl KernelOps for SimulatedKernel {
    type Dir = (PathBuf, Arc<ModulesDep>);

    fn list_modules(&self) -> Result<Vec<LoadedModule>> {
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

    fn state(&self, name: &str) -> Result<ModuleState> {
        let st = self.lock();
        Ok(if st.builtin.contains(name) {
            ModuleState::Builtin
        } else if let Some(m) = st.loaded.get(name) {
            ModuleState::Loaded {
                refcount: m.users + m.holders.len() as i64,
                holders: m.holders.iter().cloned().collect(),
            }
        } else {
            ModuleState::NotLoaded
        })
    }

    fn open_dir(&self, module_dir: &Path) -> Result<Self::Dir> {
        Ok((module_dir.to_path_buf(), self.modules_dep(module_dir)?))
    }

    fn resolve(&self, (dir, dep): &Self::Dir, name: &str) -> Result<Option<ModuleFile>> {
        Ok(dep.get(name).map(|entry| ModuleFile {
            name: name.to_owned(),
            // as libkmod: relative to the directory, an absolute entry as written
            path: dir.join(&entry.path),
            deps: entry.deps.clone(),
        }))
    }

    fn insert(&self, _dir: &Self::Dir, file: &ModuleFile, params: &[String]) -> Result<Inserted> {
        let bytes = std::fs::read(&file.path).map_err(|source| Error::Insert {
            module: file.name.clone(),
            source,
        })?;
        let delay = self.lock().load_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = self.lock();
        if let Some(fault) = self.insert_fault(&mut st, &file.name, params) {
            return Err(fault);
        }
        if st.loaded.contains_key(&file.name) {
            return Ok(Inserted::AlreadyLoaded);
        }
        for d in &file.deps {
            if let Some(m) = st.loaded.get_mut(d) {
                m.holders.insert(file.name.clone());
            }
        }
        st.loaded.insert(
            file.name.clone(),
            SimModule {
                params: params.to_vec(),
                srcversion: sim_srcversion(&bytes),
                ..SimModule::default()
            },
        );
        st.inserts += 1;
        Ok(Inserted::Inserted)
    }

    fn remove(&self, name: &str) -> Result<Removed> {
        let delay = self.lock().unload_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = self.lock();
        let Some(m) = st.loaded.get(name) else {
            return Ok(Removed::NotLoaded);
        };
        if m.users + m.holders.len() as i64 > 0 {
            return Ok(Removed::Busy);
        }
        match take_fault(&mut st.unload_faults, name) {
            None => {}
            Some(Fault::Busy) => return Ok(Removed::Busy),
            Some(Fault::Other(msg)) => return Err(Error::Simulated(msg)),
            Some(other) => return Err(Error::Simulated(format!("{other:?}"))),
        }
        st.loaded.remove(name);
        st.removes += 1;
        for m in st.loaded.values_mut() {
            m.holders.remove(name);
        }
        Ok(Removed::Removed)
    }

    fn loaded_srcversion(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .lock()
            .loaded
            .get(name)
            .and_then(|m| m.srcversion.clone()))
    }

    fn srcversion_of_file(&self, path: &Path) -> Result<Option<String>> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(sim_srcversion(&bytes))
    }
}

/// For [`SimulatedKernel`] snapshots: each loaded module with what it uses.
impl SimulatedKernel {
    /// Loaded modules as `name -> (modules it uses, srcversion)`: enough to
    /// rebuild the kernel with [`Self::preload_build`].
    pub fn snapshot(&self) -> BTreeMap<String, (Vec<String>, Option<String>)> {
        let st = self.lock();
        let mut out: BTreeMap<String, (Vec<String>, Option<String>)> = st
            .loaded
            .iter()
            .map(|(name, m)| (name.clone(), (Vec::new(), m.srcversion.clone())))
            .collect();
        for (name, m) in &st.loaded {
            for holder in &m.holders {
                if let Some(entry) = out.get_mut(holder) {
                    entry.0.push(name.clone());
                }
            }
        }
        out
    }
}

/// A minimal ELF64 little-endian module file with the given sections (name,
/// data), e.g. a `.modinfo` with `srcversion=`: for tests of two builds of one
/// module.
pub fn fake_elf(sections: &[(&str, &[u8])]) -> Vec<u8> {
    // layout: header, section data, names, section headers
    let mut names = vec![0u8];
    let mut data = Vec::new();
    let mut headers = vec![[0u8; 64]]; // the null section
    let data_start = 64usize;
    let mut entries = Vec::new();
    for (name, bytes) in sections {
        entries.push((names.len(), data_start + data.len(), bytes.len()));
        names.extend_from_slice(name.as_bytes());
        names.push(0);
        data.extend_from_slice(bytes);
    }
    let strtab_name = names.len();
    names.extend_from_slice(b".shstrtab\0");
    let strtab_off = data_start + data.len();
    let shoff = strtab_off + names.len();
    entries.push((strtab_name, strtab_off, names.len()));
    for (name, off, len) in entries {
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&(name as u32).to_le_bytes());
        h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
        h[0x20..0x28].copy_from_slice(&(len as u64).to_le_bytes());
        headers.push(h);
    }
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little endian
    elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    elf[0x3c..0x3e].copy_from_slice(&(headers.len() as u16).to_le_bytes());
    elf[0x3e..0x40].copy_from_slice(&((headers.len() - 1) as u16).to_le_bytes());
    elf.extend_from_slice(&data);
    elf.extend_from_slice(&names);
    for h in headers {
        elf.extend_from_slice(&h);
    }
    elf
}
