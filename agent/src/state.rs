//! The agent's node state: what this agent loaded, written atomically so a
//! crash or restart never forgets a module (no orphan) and never loads one twice.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::kernel::normalize;

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state file exists but cannot be read.
    #[error("reading state file {path}: {source}")]
    Read {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not valid JSON for this version of the agent.
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// Writing the new state failed; the previous file is untouched.
    #[error("writing state file {path}: {source}")]
    Write {
        /// The state file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// `namespace/name` of a Module, the key of everything the agent records.
/// Serialized as the string `namespace/name` (a JSON map key must be a string).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleKey {
    /// The Module's namespace.
    pub namespace: String,
    /// The Module's name.
    pub name: String,
}

impl ModuleKey {
    /// A key from namespace and name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl Serialize for ModuleKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ModuleKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // Namespaces cannot contain '/', so the first one separates the two parts.
        let (ns, name) = s.split_once('/').ok_or_else(|| {
            serde::de::Error::custom(format!("module key '{s}' is not namespace/name"))
        })?;
        Ok(Self::new(ns, name))
    }
}

impl std::fmt::Display for ModuleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One Module as loaded by this agent on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadedModule {
    /// Image reference after substitution.
    pub image: String,
    /// Manifest digest of the image the modules came from.
    pub digest: String,
    /// Kernel release the modules were loaded into.
    pub kernel: String,
    /// `modprobe.moduleName`.
    pub module_name: String,
    /// `modulesLoadingOrder` as the Module gave it (`[moduleName, dep_a, …]`), empty if unset.
    #[serde(default)]
    pub modules_loading_order: Vec<String>,
    /// Modules this agent inserted, in insertion order (dependencies first). Only these
    /// are ever unloaded: a module that was in the kernel before is left alone.
    #[serde(default)]
    pub inserted: Vec<String>,
    /// Parameters given to `moduleName`.
    pub parameters: Vec<String>,
    /// `version` of the Module, if ordered upgrade is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// In-tree modules this agent removed before loading (never loaded back).
    #[serde(default)]
    pub in_tree_removed: Vec<String>,
    /// Module directory inside the image cache (`<root>/<dirName>/lib/modules/<kernel>`),
    /// so the boot path can load again without network.
    pub module_dir: PathBuf,
    /// Firmware files this agent installed on the host, relative to the firmware dir.
    #[serde(default)]
    pub firmware_files: Vec<PathBuf>,
    /// The image's firmware directory inside the cache (`<root>/<firmwarePath>`), so the
    /// boot path can install the firmware again without network. Absent in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_source: Option<PathBuf>,
    /// When the load finished (RFC 3339).
    pub loaded_at: String,
    /// The Module's uid, so events can name it after it is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_uid: Option<String>,
    /// `srcversion` of each module this agent inserted (normalized name → value), as
    /// the kernel showed it after the insert: after a reboot, a module of the same
    /// name is ours only if its srcversion matches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub srcversions: BTreeMap<String, String>,
    /// `--first-time` of the Module's load and unload command lines, so the unload (after
    /// the Module is gone) and the boot path honour it as the load did.
    #[serde(default, skip_serializing_if = "FirstTime::is_unset")]
    pub first_time: FirstTime,
}

/// `--first-time` (modprobe's "fail if already inserted or removed") of a Module's load and
/// unload command lines (`modprobe.args` or `rawArgs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstTime {
    /// The load fails if one of its modules is already in the kernel.
    #[serde(default)]
    pub load: bool,
    /// The unload fails if one of the modules it removes is not in the kernel.
    #[serde(default)]
    pub unload: bool,
}

impl FirstTime {
    fn is_unset(&self) -> bool {
        *self == Self::default()
    }
}

impl LoadedModule {
    /// Every kernel module this record relies on: its load order and what it inserted.
    pub fn kernel_modules(&self) -> BTreeSet<String> {
        self.modules_loading_order
            .iter()
            .chain(std::iter::once(&self.module_name))
            .chain(&self.inserted)
            .map(|m| normalize(m))
            .collect()
    }
}

/// Everything this agent loaded, by Module.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// Format version, bumped on incompatible changes.
    pub version: u32,
    /// Loaded Modules.
    pub modules: BTreeMap<ModuleKey, LoadedModule>,
    /// Loads in progress, written before the first insert: after a crash mid-load
    /// the agent knows which modules the interrupted attempt may have inserted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub loading: BTreeMap<ModuleKey, Loading>,
    /// Unloads in progress, written before the first removal: after a crash
    /// mid-unload the agent finishes the removals (same boot only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unloading: BTreeMap<ModuleKey, Unloading>,
    /// Versions staged for the next boot (a `ModuleRollout` with `strategy: Reboot`): pulled
    /// and unpacked, not loaded; the boot path loads them instead of `modules`' record.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub staged: BTreeMap<ModuleKey, LoadedModule>,
    /// `/proc/sys/kernel/random/boot_id` of the boot these records describe: after a
    /// reboot nothing is assumed loaded until checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Kernel modules this agent had loaded before a reboot and that someone else
    /// loaded after it (their build could not be proved ours): never adopted.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub not_ours: BTreeSet<String>,
}

/// An unload that has started and not yet been recorded as done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unloading {
    /// Modules to remove, in removal order (only ones this agent inserted).
    pub modules: Vec<String>,
    /// Dependencies that may be removed once unused (only ones this agent inserted).
    pub deps: Vec<String>,
}

impl NodeState {
    /// Journal: a load of `key` starts (written before the first insert).
    pub fn begin_load(&mut self, key: &ModuleKey, loading: Loading) {
        self.loading.insert(key.clone(), loading);
    }

    /// Journal: the load of `key` finished; `record` replaces any previous one.
    pub fn commit_load(&mut self, key: &ModuleKey, record: LoadedModule) {
        self.loading.remove(key);
        // What is loaded now supersedes a version staged for the next boot.
        self.staged.remove(key);
        for m in &record.inserted {
            self.not_ours.remove(&normalize(m));
        }
        self.modules.insert(key.clone(), record);
    }

    /// `record` (pulled, not loaded) replaces `key`'s at the next boot.
    pub fn stage(&mut self, key: &ModuleKey, record: LoadedModule) {
        self.staged.insert(key.clone(), record);
    }

    /// Journal: the load of `key` failed and its inserts were rolled back.
    pub fn abort_load(&mut self, key: &ModuleKey) {
        self.loading.remove(key);
    }

    /// Journal: an unload of `key` starts (written before the first removal).
    pub fn begin_unload(&mut self, key: &ModuleKey, unloading: Unloading) {
        self.unloading.insert(key.clone(), unloading);
    }

    /// Journal: the unload of `key` finished; its record is gone.
    pub fn commit_unload(&mut self, key: &ModuleKey) -> Option<LoadedModule> {
        self.unloading.remove(key);
        self.staged.remove(key);
        self.modules.remove(key)
    }

    /// Journal: the unload of `key` failed; the record stays (still loaded).
    pub fn abort_unload(&mut self, key: &ModuleKey) {
        self.unloading.remove(key);
    }

    /// Kernel modules that records other than `key` rely on (two Modules may load
    /// the same kernel module: it stays until no record needs it).
    pub fn needed_by_others(&self, key: &ModuleKey) -> BTreeSet<String> {
        self.modules
            .iter()
            .filter(|(k, _)| *k != key)
            .flat_map(|(_, r)| r.kernel_modules())
            .collect()
    }

    /// The other record that relies on kernel module `name`, if any.
    pub fn other_user_of(&self, key: &ModuleKey, name: &str) -> Option<&ModuleKey> {
        let name = normalize(name);
        self.modules
            .iter()
            .find(|(k, r)| *k != key && r.kernel_modules().contains(&name))
            .map(|(k, _)| k)
    }

    /// Hands the modules `key` inserted and others still need to those others, so
    /// the last record needing a module is the one that removes it.
    pub fn hand_over_shared(&mut self, key: &ModuleKey, shared: &[String]) {
        for name in shared {
            let Some(heir) = self.other_user_of(key, name).cloned() else {
                continue;
            };
            if let Some(rec) = self.modules.get_mut(&heir)
                && !rec.inserted.iter().any(|m| normalize(m) == *name)
            {
                rec.inserted.push(name.clone());
                if let Some(sv) = self
                    .modules
                    .get(key)
                    .and_then(|r| r.srcversions.get(name))
                    .cloned()
                    && let Some(rec) = self.modules.get_mut(&heir)
                {
                    rec.srcversions.insert(name.clone(), sv);
                }
            }
        }
    }
}

/// A load that has started and not yet been recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Loading {
    /// Kernel release it was for.
    pub kernel: String,
    /// The modules it was to insert, in load order.
    pub load_order: Vec<String>,
    /// Those of them already in the kernel before it started (not ours).
    pub already_loaded: Vec<String>,
}

const STATE_VERSION: u32 = 1;

/// The state file on disk.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file `state.json` in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("state.json"),
        }
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last-good copy written beside the state file (`state.json.last-good`).
    pub fn last_good_path(&self) -> PathBuf {
        self.path.with_extension("json.last-good")
    }

    /// Reads the state; a missing file is an empty state. A state file that does
    /// not parse (a torn write, a bad edit) falls back to the last-good copy, with
    /// a warning.
    ///
    /// # Errors
    /// A file that exists but cannot be read, or that is corrupt while its last-good
    /// copy is missing or corrupt too: the agent must not act as if nothing were
    /// loaded when it simply cannot tell (see docs/troubleshooting.md).
    pub fn load(&self) -> Result<NodeState, StateError> {
        match read_state(&self.path)? {
            Some(Ok(state)) => Ok(state),
            None => Ok(NodeState {
                version: STATE_VERSION,
                ..NodeState::default()
            }),
            Some(Err(source)) => {
                let corrupt = StateError::Corrupt {
                    path: self.path.clone(),
                    source,
                };
                match read_state(&self.last_good_path()) {
                    Ok(Some(Ok(state))) => {
                        tracing::warn!(error = %corrupt, last_good = %self.last_good_path().display(),
                            "state file is corrupt; using its last-good copy");
                        Ok(state)
                    }
                    _ => Err(corrupt),
                }
            }
        }
    }

    /// Writes the state atomically (a temp file in the same directory, fsynced,
    /// renamed over), then the same content as the last-good copy.
    ///
    /// # Errors
    /// On any I/O failure the previous file stays as it was.
    pub fn save(&self, state: &NodeState) -> Result<(), StateError> {
        let mut state = state.clone();
        state.version = STATE_VERSION;
        let json = serde_json::to_vec_pretty(&state).map_err(|e| StateError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomically(&self.path, &json)?;
        write_atomically(&self.last_good_path(), &json)
    }
}

/// `None` if missing; `Some(Err)` if present but not a state.
fn read_state(path: &Path) -> Result<Option<Result<NodeState, serde_json::Error>>, StateError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(err)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    // Make the rename itself durable.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LoadedModule {
        LoadedModule {
            image: "reg/ns/brd:6.1".into(),
            digest: "sha256:abc".into(),
            kernel: "6.1.0-56-amd64".into(),
            module_name: "brd".into(),
            modules_loading_order: vec![],
            inserted: vec!["brd".into()],
            parameters: vec!["rd_nr=3".into()],
            version: None,
            in_tree_removed: vec![],
            module_dir: PathBuf::from("/var/lib/kmm/images/x/opt/lib/modules/6.1.0-56-amd64"),
            firmware_files: vec![],
            firmware_source: None,
            loaded_at: "2026-11-25T00:00:00Z".into(),
            module_uid: None,
            srcversions: BTreeMap::new(),
            first_time: FirstTime::default(),
        }
    }

    #[test]
    fn a_torn_state_file_is_recovered_from_its_last_good_copy() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::in_dir(dir.path());
        let mut st = NodeState::default();
        st.modules.insert(ModuleKey::new("ns", "brd"), sample());
        f.save(&st).unwrap();
        // A torn write: half of the file.
        let full = fs::read(f.path()).unwrap();
        fs::write(f.path(), &full[..full.len() / 2]).unwrap();
        assert_eq!(f.load().unwrap().modules, st.modules);
        // Both bad: an error, never an empty state.
        fs::write(f.last_good_path(), b"{").unwrap();
        assert!(matches!(f.load(), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn shared_kernel_modules_are_handed_to_the_remaining_record() {
        let mut st = NodeState::default();
        let (a, b) = (ModuleKey::new("ns", "a"), ModuleKey::new("other", "b"));
        st.modules.insert(a.clone(), sample());
        let mut second = sample();
        second.inserted.clear(); // brd was already there when b loaded
        st.modules.insert(b.clone(), second);
        assert!(st.needed_by_others(&a).contains("brd"));
        assert_eq!(st.other_user_of(&a, "brd"), Some(&b));
        st.hand_over_shared(&a, &["brd".to_string()]);
        st.commit_unload(&a);
        assert_eq!(st.modules[&b].inserted, ["brd"]);
        assert!(st.needed_by_others(&b).is_empty());
    }

    #[test]
    fn missing_file_is_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateFile::in_dir(dir.path()).load().unwrap();
        assert!(st.modules.is_empty());
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::in_dir(dir.path());
        let mut st = NodeState::default();
        st.modules.insert(ModuleKey::new("ns", "brd"), sample());
        f.save(&st).unwrap();
        let back = f.load().unwrap();
        assert_eq!(back.modules, st.modules);
        assert_eq!(back.version, STATE_VERSION);
    }

    #[test]
    fn corrupt_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::in_dir(dir.path());
        fs::write(f.path(), b"{ not json").unwrap();
        assert!(matches!(f.load(), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn save_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::in_dir(dir.path());
        f.save(&NodeState::default()).unwrap();
        f.save(&NodeState::default()).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut names: Vec<String> = names
            .into_iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["state.json", "state.json.last-good"]);
    }
}
