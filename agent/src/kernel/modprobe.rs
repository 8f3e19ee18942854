//! `modprobe -d` / `modprobe -r` as upstream KMM's worker uses them, written
//! once over [`KernelOps`]: every [`KernelOps`] is a [`Kernel`].
//!
//! Load: resolve the whole request first (load order, each module after its
//! `modules.dep` dependencies, depth-first; modules already in the kernel are
//! skipped), prove every file is inside the module directory (or the image,
//! [`LoadRequest::within_image`]), then insert; a
//! failure removes what this call inserted. Unload: explicit modules in order
//! (in use is an error), then their dependencies as [`DepPolicy`] allows, once
//! unused (failures there are logged, as `modprobe -r` does).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::confine::{Confined, confine_canonical};
use super::ops::{Inserted, KernelOps, ModuleFile, ModuleState, Removed};
use super::{
    DepPolicy, Error, Kernel, LoadOutcome, LoadRequest, LoadedModule, Result, UnloadOutcome,
    UnloadRequest, normalize, validate_name,
};

impl<K: KernelOps> Kernel for K {
    fn loaded_modules(&self) -> Result<Vec<LoadedModule>> {
        self.list_modules()
    }

    fn is_loaded(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        Ok(self.state(&normalize(name))? != ModuleState::NotLoaded)
    }

    fn load(&self, req: &LoadRequest) -> Result<LoadOutcome> {
        load(self, req)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(modules = ?req.modules))]
    fn unload(&self, req: &UnloadRequest) -> Result<UnloadOutcome> {
        for name in &req.modules {
            validate_name(name)?;
        }
        if req.fail_if_not_loaded {
            for name in &req.modules {
                let name = normalize(name);
                if self.state(&name)? == ModuleState::NotLoaded {
                    return Err(Error::NotLoaded { module: name });
                }
            }
        }
        let mut removed = Vec::new();
        for name in &req.modules {
            remove_tree(self, &normalize(name), &req.deps, true, &mut removed)?;
        }
        Ok(UnloadOutcome { removed })
    }

    fn srcversion(&self, name: &str) -> Result<Option<String>> {
        validate_name(name)?;
        self.loaded_srcversion(&normalize(name))
    }

    fn file_srcversion(&self, module_dir: &Path, name: &str) -> Result<Option<String>> {
        validate_name(name)?;
        let dir = self.open_dir(module_dir)?;
        let root = canonical_root(module_dir)?;
        let name = normalize(name);
        let file = self.resolve(&dir, &name)?.ok_or_else(|| Error::NotFound {
            module: name,
            dir: module_dir.to_path_buf(),
        })?;
        let path = checked_path(&root, &file)?;
        self.srcversion_of_file(&path)
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(module = %req.name, dir = %req.module_dir.display()))]
fn load<K: KernelOps>(ops: &K, req: &LoadRequest) -> Result<LoadOutcome> {
    for name in req.load_order() {
        validate_name(name)?;
    }
    let dir = ops.open_dir(&req.module_dir)?;
    let root = canonical_root(req.confinement_root())?;
    let main = normalize(&req.name);
    let already_loaded = ops.state(&main)? != ModuleState::NotLoaded;
    if req.fail_if_loaded {
        for name in req.load_order().map(normalize) {
            if ops.state(&name)? != ModuleState::NotLoaded {
                return Err(Error::AlreadyLoaded { module: name });
            }
        }
    }

    // Everything is resolved and checked before the first insert.
    let mut plan = Plan::default();
    for name in req.load_order() {
        let params: &[String] = if normalize(name) == main {
            &req.parameters
        } else {
            &[]
        };
        plan.add(ops, &dir, &req.module_dir, &normalize(name), params)?;
    }
    for step in &plan.steps {
        checked_path(&root, &step.file)?;
    }

    let mut outcome = LoadOutcome {
        already_loaded,
        ..LoadOutcome::default()
    };
    for step in &plan.steps {
        match ops.insert(&dir, &step.file, &step.params) {
            Ok(Inserted::Inserted) => {
                debug!(module = %step.file.name, params = ?step.params, "inserted");
                outcome.inserted.push(step.file.name.clone());
                // cheap (one sysfs read); absent for modules built without one
                match ops.loaded_srcversion(&step.file.name) {
                    Ok(Some(v)) => {
                        outcome.srcversions.insert(step.file.name.clone(), v);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(module = %step.file.name, error = %e, "could not read srcversion")
                    }
                }
            }
            // loaded by someone else since we looked: what we wanted
            Ok(Inserted::AlreadyLoaded) => {}
            Err(e) => {
                roll_back(ops, &outcome.inserted);
                return Err(e);
            }
        }
    }
    Ok(outcome)
}

/// Leaves the kernel as the failed load found it.
fn roll_back<K: KernelOps>(ops: &K, inserted: &[String]) {
    for name in inserted.iter().rev() {
        match ops.remove(name) {
            Ok(Removed::Removed | Removed::NotLoaded) => {}
            Ok(Removed::Busy) => {
                warn!(module = %name, "could not roll back after a failed load: in use")
            }
            Err(e) => {
                warn!(module = %name, error = %e, "could not roll back after a failed load")
            }
        }
    }
}

#[derive(Debug)]
struct Step {
    file: ModuleFile,
    params: Vec<String>,
}

/// The inserts of a load, in order, each module once.
#[derive(Debug, Default)]
struct Plan {
    visited: BTreeSet<String>,
    steps: Vec<Step>,
}

impl Plan {
    /// Adds `name` after its dependencies, depth-first; modules in the kernel are skipped.
    fn add<K: KernelOps>(
        &mut self,
        ops: &K,
        dir: &K::Dir,
        module_dir: &Path,
        name: &str,
        params: &[String],
    ) -> Result<()> {
        if !self.visited.insert(name.to_owned()) || ops.state(name)? != ModuleState::NotLoaded {
            return Ok(());
        }
        let file = ops.resolve(dir, name)?.ok_or_else(|| Error::NotFound {
            module: name.to_owned(),
            dir: module_dir.to_path_buf(),
        })?;
        for dep in &file.deps {
            self.add(ops, dir, module_dir, dep, &[])?;
        }
        self.steps.push(Step {
            file,
            params: params.to_vec(),
        });
        Ok(())
    }
}

fn canonical_root(module_dir: &Path) -> Result<PathBuf> {
    module_dir.canonicalize().map_err(|source| Error::Io {
        path: module_dir.to_path_buf(),
        source,
    })
}

/// The canonical path of `file`, proved to be under `root` (the canonical
/// module directory or image root): `modules.dep` comes from the image, and an
/// absolute or `../` entry, or a symlink, must not make the agent insert a
/// host file.
fn checked_path(root: &Path, file: &ModuleFile) -> Result<PathBuf> {
    match confine_canonical(root, &file.path) {
        Confined::Inside(path) => Ok(path),
        Confined::Outside(resolved) => Err(Error::PathEscape {
            module: file.name.clone(),
            entry: file.path.clone(),
            resolved,
            root: root.to_path_buf(),
        }),
        Confined::Unresolved(e) => Err(Error::Insert {
            module: file.name.clone(),
            source: std::io::Error::new(
                e.kind(),
                format!("{} is missing: {e}", file.path.display()),
            ),
        }),
    }
}

/// Removes `name`, then the modules it used as `policy` allows (once unused).
/// Failures on dependencies (`explicit == false`) are logged, not returned.
fn remove_tree<K: KernelOps>(
    ops: &K,
    name: &str,
    policy: &DepPolicy,
    explicit: bool,
    removed: &mut Vec<String>,
) -> Result<()> {
    let (refcount, holders) = match ops.state(name)? {
        ModuleState::Loaded { refcount, holders } => (refcount, holders),
        ModuleState::NotLoaded => return Ok(()),
        ModuleState::Builtin if explicit => {
            return Err(Error::Builtin {
                module: name.to_owned(),
            });
        }
        ModuleState::Builtin => return Ok(()),
    };
    if refcount > 0 || !holders.is_empty() {
        return if explicit {
            Err(Error::InUse {
                module: name.to_owned(),
                holders,
                refcount,
            })
        } else {
            Ok(())
        };
    }
    let uses = used_by(ops, name)?;
    match ops.remove(name) {
        Ok(Removed::Removed) => {
            debug!(module = %name, "removed");
            removed.push(name.to_owned());
        }
        Ok(Removed::NotLoaded) => {}
        Ok(Removed::Busy) if explicit => {
            let (refcount, holders) = match ops.state(name)? {
                ModuleState::Loaded { refcount, holders } => (refcount, holders),
                _ => (0, Vec::new()),
            };
            return Err(Error::InUse {
                module: name.to_owned(),
                holders,
                refcount,
            });
        }
        Ok(Removed::Busy) => return Ok(()),
        Err(e) if explicit => return Err(e),
        Err(e) => {
            warn!(module = %name, error = %e, "could not remove unused dependency");
            return Ok(());
        }
    }
    for dep in uses {
        if policy.allows(&dep) {
            remove_tree(ops, &dep, policy, false, removed)?;
        }
    }
    Ok(())
}

/// Modules that `name` uses (those listing it as a holder), in kernel order.
fn used_by<K: KernelOps>(ops: &K, name: &str) -> Result<Vec<String>> {
    Ok(ops
        .list_modules()?
        .into_iter()
        .filter(|m| m.holders.iter().any(|h| h == name))
        .map(|m| m.name)
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::kernel::{Fault, SimulatedKernel};

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
    fn first_time_fails_on_a_module_already_in_or_already_out_before_touching_the_kernel() {
        let dir = tree();
        let k = SimulatedKernel::new();
        k.preload("solo", &[]);
        let order = ["a".to_owned(), "solo".to_owned()];
        let req = LoadRequest::new(dir.path(), "a")
            .with_loading_order(&order)
            .unwrap()
            .first_time(true);
        let err = k.load(&req).unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not insert solo: Module already in kernel (--first-time)"
        );
        assert_eq!(err.metric_label(), "already_loaded");
        assert_eq!(k.insert_count(), 0, "nothing inserted, a included");
        // Without the flag, the loaded module is used as it is.
        assert_eq!(
            k.load(&req.clone().first_time(false)).unwrap().inserted,
            ["c", "b", "a"]
        );
        // A dependency already in the kernel is no failure: only named modules count.
        k.unload(&UnloadRequest::module("a")).unwrap();
        k.preload("c", &[]);
        let out = k
            .load(&LoadRequest::new(dir.path(), "a").first_time(true))
            .unwrap();
        assert_eq!(out.inserted, ["b", "a"]);

        let strict = UnloadRequest {
            fail_if_not_loaded: true,
            ..UnloadRequest {
                modules: vec!["a".into(), "solo".into(), "gone".into()],
                ..UnloadRequest::default()
            }
        };
        let err = k.unload(&strict).unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not remove gone: Module is not in kernel (--first-time)"
        );
        assert!(
            k.is_loaded("a").unwrap(),
            "nothing removed before the check"
        );
        let lenient = UnloadRequest {
            fail_if_not_loaded: false,
            ..strict
        };
        assert_eq!(k.unload(&lenient).unwrap().removed, ["a", "b", "c", "solo"]);
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

    /// `tree()` inside `<top>/img/lib/modules/k`, and a host module `<top>/host/evil.ko`.
    fn hostile(entry: &str) -> (tempfile::TempDir, PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("img/lib/modules/k");
        std::fs::create_dir_all(dir.join("kernel/x")).unwrap();
        std::fs::create_dir_all(top.path().join("host")).unwrap();
        std::fs::write(top.path().join("host/evil.ko"), b"\x7fELF host").unwrap();
        std::fs::write(dir.join("kernel/x/c.ko"), b"\x7fELF").unwrap();
        let entry = entry.replace("<top>", &top.path().display().to_string());
        std::fs::write(
            dir.join("modules.dep"),
            format!("{entry}: kernel/x/c.ko\nkernel/x/c.ko:\n"),
        )
        .unwrap();
        (top, dir)
    }

    fn assert_refused(dir: &Path, name: &str) {
        let k = SimulatedKernel::new();
        let err = k.load(&LoadRequest::new(dir, name)).unwrap_err();
        assert!(matches!(err, Error::PathEscape { .. }), "{err}");
        assert_eq!(err.metric_label(), "path_escape");
        assert!(
            err.to_string().contains("outside the image directory"),
            "{err}"
        );
        // nothing at all was inserted, not even the dependency inside the image
        assert_eq!(k.insert_count(), 0);
        assert!(k.loaded_modules().unwrap().is_empty());
        let err = k.file_srcversion(dir, name).unwrap_err();
        assert_eq!(err.metric_label(), "path_escape");
    }

    #[test]
    fn absolute_modules_dep_entry_to_a_host_file_is_refused() {
        let (_top, dir) = hostile("<top>/host/evil.ko");
        assert_refused(&dir, "evil");
    }

    #[test]
    fn dotdot_modules_dep_entry_is_refused() {
        let (_top, dir) = hostile("../../../../host/evil.ko");
        assert_refused(&dir, "evil");
    }

    #[test]
    fn symlink_in_the_image_pointing_outside_is_refused() {
        let (top, dir) = hostile("kernel/x/evil.ko");
        symlink(
            top.path().join("host/evil.ko"),
            dir.join("kernel/x/evil.ko"),
        )
        .unwrap();
        assert_refused(&dir, "evil");
        // a symlink that stays inside is fine
        let (_top, dir) = hostile("kernel/x/alias.ko");
        symlink("c.ko", dir.join("kernel/x/alias.ko")).unwrap();
        let k = SimulatedKernel::new();
        assert_eq!(
            k.load(&LoadRequest::new(&dir, "alias")).unwrap().inserted,
            ["c", "alias"]
        );
    }

    #[test]
    fn within_image_allows_files_elsewhere_in_the_image_only() {
        let (top, dir) = hostile("kernel/x/evil.ko");
        let image = top.path().join("img");
        std::fs::write(image.join("shared.ko"), b"\x7fELF shared").unwrap();
        symlink(image.join("shared.ko"), dir.join("kernel/x/evil.ko")).unwrap();
        assert_refused(&dir, "evil");
        let k = SimulatedKernel::new();
        let req = LoadRequest::new(&dir, "evil").within_image(&image);
        assert_eq!(k.load(&req).unwrap().inserted, ["c", "evil"]);
        // a host file stays refused
        let (_top, dir) = hostile("<top>/host/evil.ko");
        let req = LoadRequest::new(&dir, "evil").within_image(dir.join("../../.."));
        let err = SimulatedKernel::new().load(&req).unwrap_err();
        assert_eq!(err.metric_label(), "path_escape");
    }

    #[test]
    fn a_dependency_escaping_fails_the_load_before_any_insert() {
        let (_top, dir) = hostile("kernel/x/c.ko");
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/x/main.ko: ../../../../host/evil.ko\n../../../../host/evil.ko:\nkernel/x/c.ko:\n",
        )
        .unwrap();
        std::fs::write(dir.join("kernel/x/main.ko"), b"\x7fELF").unwrap();
        let k = SimulatedKernel::new();
        let order = ["main".to_owned(), "c".to_owned()];
        let req = LoadRequest::new(&dir, "main")
            .with_loading_order(&order)
            .unwrap();
        let err = k.load(&req).unwrap_err();
        assert!(err.to_string().contains("refusing to insert evil"), "{err}");
        assert_eq!(
            k.insert_count(),
            0,
            "c (loaded first) was not inserted either"
        );
    }

    #[test]
    fn srcversions_of_files_and_of_loaded_modules_tell_builds_apart() {
        let dir = tree();
        let p = dir.path().join("kernel/x");
        std::fs::write(
            p.join("a.ko"),
            crate::kernel::fake_elf(&[(".modinfo", b"srcversion=AAAA1\0")]),
        )
        .unwrap();
        std::fs::write(p.join("b.ko"), b"fake srcversion=BBBB2 rest").unwrap();
        let k = SimulatedKernel::new();
        assert_eq!(
            k.file_srcversion(dir.path(), "a").unwrap().as_deref(),
            Some("AAAA1")
        );
        assert_eq!(
            k.file_srcversion(dir.path(), "b").unwrap().as_deref(),
            Some("BBBB2")
        );
        // no marker: a digest of the content, so different content differs
        let c = k.file_srcversion(dir.path(), "c").unwrap().unwrap();
        assert_eq!(c.len(), 23);
        std::fs::write(p.join("solo.ko"), b"another build").unwrap();
        assert_ne!(k.file_srcversion(dir.path(), "solo").unwrap().unwrap(), c);
        assert!(matches!(
            k.file_srcversion(dir.path(), "nope").unwrap_err(),
            Error::NotFound { .. }
        ));

        // a module of the same name loaded before (another build) keeps its own
        k.preload_build("a", &[], Some("INTREE9"));
        assert_eq!(k.srcversion("a").unwrap().as_deref(), Some("INTREE9"));
        assert_eq!(k.srcversion("b").unwrap(), None, "not loaded");
        k.unload(&UnloadRequest::module("a")).unwrap();

        let out = k.load(&LoadRequest::new(dir.path(), "a")).unwrap();
        assert_eq!(out.srcversions["a"], "AAAA1");
        assert_eq!(out.srcversions["b"], "BBBB2");
        assert_eq!(out.srcversions["c"], c);
        assert_eq!(k.srcversion("a").unwrap().as_deref(), Some("AAAA1"));
    }
}
