//! The boot path (`kmm-agent boot`): at node boot, before the kubelet, with no API
//! server and no network, load again what the state file records for the running
//! kernel, from the local image cache. The in-cluster agent then finds the modules
//! loaded, keeps the records (`recover_state`) and does not load them a second time.
//!
//! Split in two: [`plan`] decides (pure: which records, in which order, why others
//! are skipped) and [`execute`] acts through a [`Kernel`].

use std::path::{Path, PathBuf};

use crate::kernel::{Kernel, LoadOutcome, LoadRequest};
use crate::load_sequence::{self, FirmwareTarget, LoadSteps};
use crate::state::{LoadedModule, ModuleKey, NodeState, StateError, StateFile};

/// Why a record is not loaded at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// Recorded for another kernel (e.g. before a kernel upgrade); the in-cluster
    /// agent drops the record and loads the right image. Not a failure.
    OtherKernel {
        /// The kernel the record was loaded into.
        recorded: String,
    },
    /// The unpacked image is gone from the local cache.
    MissingModuleDir(PathBuf),
    /// The record had firmware but its source directory is gone from the cache.
    MissingFirmware(PathBuf),
}

impl SkipReason {
    /// Whether the skip means a module that should be loaded is not.
    pub fn is_failure(&self) -> bool {
        !matches!(self, SkipReason::OtherKernel { .. })
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::OtherKernel { recorded } => {
                write!(f, "recorded for kernel {recorded}, not the running one")
            }
            SkipReason::MissingModuleDir(p) => {
                write!(f, "module directory {} is not in the cache", p.display())
            }
            SkipReason::MissingFirmware(p) => {
                write!(f, "firmware directory {} is not in the cache", p.display())
            }
        }
    }
}

/// What boot mode will do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootPlan {
    /// Records to load, in load order.
    pub load: Vec<(ModuleKey, LoadedModule)>,
    /// Records not loaded, with the reason.
    pub skip: Vec<(ModuleKey, SkipReason)>,
}

/// Decides which records to load: those for `running` whose cached module
/// directory (and firmware directory, if any) `exists`. They load in the order they
/// were first loaded (`loadedAt`, then key), so a Module relying on another that was
/// loaded before it still finds it. A version staged for this boot (`strategy:
/// Reboot`) for the running kernel is loaded instead of the record of the last boot.
pub fn plan(state: &NodeState, running: &str, exists: impl Fn(&Path) -> bool) -> BootPlan {
    let mut out = BootPlan::default();
    let mut records = state.modules.clone();
    for (key, staged) in &state.staged {
        if staged.kernel == running {
            records.insert(key.clone(), staged.clone());
        }
    }
    for (key, rec) in &records {
        let skip = if rec.kernel != running {
            Some(SkipReason::OtherKernel {
                recorded: rec.kernel.clone(),
            })
        } else if !exists(&rec.module_dir) {
            Some(SkipReason::MissingModuleDir(rec.module_dir.clone()))
        } else {
            rec.firmware_source
                .as_ref()
                .filter(|src| !exists(src))
                .map(|src| SkipReason::MissingFirmware(src.clone()))
        };
        match skip {
            Some(reason) => out.skip.push((key.clone(), reason)),
            None => out.load.push((key.clone(), rec.clone())),
        }
    }
    out.load
        .sort_by(|(ka, a), (kb, b)| a.loaded_at.cmp(&b.loaded_at).then_with(|| ka.cmp(kb)));
    out
}

/// Why loading one record failed: the step of the shared load sequence.
pub type RecordError = crate::load_sequence::StepError;

/// Host settings for [`execute`].
#[derive(Debug, Clone)]
pub struct BootSettings {
    /// Host directory firmware is copied into.
    pub firmware_dir: PathBuf,
    /// Also point the kernel's firmware search path at `firmware_dir`, written to
    /// `firmware_class_path` (normally [`firmware::FIRMWARE_CLASS_PATH`]).
    pub set_firmware_class_path: bool,
    /// The `firmware_class.path` parameter file.
    pub firmware_class_path: PathBuf,
}

/// What boot mode did.
#[derive(Debug, Default)]
pub struct BootReport {
    /// Records loaded, with what the kernel did.
    pub loaded: Vec<(ModuleKey, LoadOutcome)>,
    /// Records whose load failed.
    pub failed: Vec<(ModuleKey, RecordError)>,
    /// Records not attempted.
    pub skipped: Vec<(ModuleKey, SkipReason)>,
}

impl BootReport {
    /// Everything that should be loaded is.
    pub fn success(&self) -> bool {
        self.failed.is_empty() && !self.skipped.iter().any(|(_, r)| r.is_failure())
    }

    /// One line per record that is not loaded, for the exit message.
    pub fn summary(&self) -> String {
        let mut lines = vec![format!(
            "{} loaded, {} failed, {} skipped",
            self.loaded.len(),
            self.failed.len(),
            self.skipped.len()
        )];
        for (key, err) in &self.failed {
            lines.push(format!("  {key}: failed: {err}"));
        }
        for (key, reason) in &self.skipped {
            lines.push(format!("  {key}: skipped: {reason}"));
        }
        lines.join("\n")
    }
}

/// Loads one record as the in-cluster agent did, through the same sequence:
/// in-tree removals, firmware, then the modules with the same parameters and order.
fn load_record(
    kernel: &dyn Kernel,
    rec: &LoadedModule,
    settings: &BootSettings,
) -> Result<LoadOutcome, RecordError> {
    let req = LoadRequest::new(&rec.module_dir, &rec.module_name)
        .with_parameters(rec.parameters.iter().cloned())
        .first_time(rec.first_time.load)
        .with_loading_order(&rec.modules_loading_order)?;
    let steps = LoadSteps {
        request: &req,
        in_tree_to_remove: &rec.in_tree_removed,
        firmware_source: rec.firmware_source.as_deref(),
    };
    let target = FirmwareTarget {
        dir: settings.firmware_dir.clone(),
        set_class_path: settings.set_firmware_class_path,
        class_path: settings.firmware_class_path.clone(),
    };
    Ok(load_sequence::run(kernel, &steps, &target)?.outcome)
}

/// Executes `plan`: every record is attempted, a failure does not stop the others.
pub fn execute(plan: &BootPlan, kernel: &dyn Kernel, settings: &BootSettings) -> BootReport {
    let mut report = BootReport {
        skipped: plan.skip.clone(),
        ..BootReport::default()
    };
    for (key, reason) in &plan.skip {
        tracing::info!(module = %key, %reason, "not loading at boot");
    }
    for (key, rec) in &plan.load {
        match load_record(kernel, rec, settings) {
            Ok(outcome) => {
                tracing::info!(module = %key, name = %rec.module_name, parameters = ?rec.parameters,
                    inserted = ?outcome.inserted, already_loaded = outcome.already_loaded,
                    "loaded at boot from the local cache");
                report.loaded.push((key.clone(), outcome));
            }
            Err(err) => {
                tracing::error!(module = %key, name = %rec.module_name, error = %err, "boot load failed");
                report.failed.push((key.clone(), err));
            }
        }
    }
    report
}

/// Reads the state file, loads what it records for `running`, and records what was
/// inserted this boot with its srcversions, and this boot's id (so the in-cluster
/// agent unloads exactly what is ours; a module someone else loaded first stays
/// when the Module goes).
///
/// # Errors
/// Only reading or writing the state file; per-record failures are in the report.
pub fn run(
    state_file: &StateFile,
    running: &str,
    boot_id: &str,
    kernel: &dyn Kernel,
    settings: &BootSettings,
) -> Result<BootReport, StateError> {
    let mut state = state_file.load()?;
    let plan = plan(&state, running, Path::exists);
    let report = execute(&plan, kernel, settings);
    if state.boot_id.as_deref() == Some(boot_id) {
        // Already ran this boot (or the agent did): the records describe this boot
        // and what was inserted in it; a second run inserts nothing new and must
        // not take ownership away.
        return Ok(report);
    }
    for (key, outcome) in &report.loaded {
        // The record loaded (a staged one replaces the last boot's).
        if let Some((_, rec)) = plan.load.iter().find(|(k, _)| k == key) {
            let mut rec = rec.clone();
            rec.inserted = outcome.inserted.clone();
            rec.srcversions = outcome.srcversions.clone();
            state.modules.insert(key.clone(), rec);
        }
    }
    // Records not loaded now are not in the kernel of this boot.
    let loaded: Vec<ModuleKey> = report.loaded.iter().map(|(k, _)| k.clone()).collect();
    state.modules.retain(|k, _| loaded.contains(k));
    state.staged.retain(|k, _| !loaded.contains(k));
    state.loading.clear();
    state.unloading.clear();
    state.boot_id = Some(boot_id.to_string());
    state_file.save(&state)?;
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::fs;

    use super::*;
    use crate::kernel::Fault;
    use crate::kernel::SimulatedKernel;

    const KVER: &str = "6.1.0-56-amd64";
    const BOOT: &str = "b00t-1";

    /// From JSON, as the state file holds it: fields added later (with serde defaults)
    /// do not need touching these tests.
    fn rec(module_dir: &Path, name: &str, loaded_at: &str) -> LoadedModule {
        serde_json::from_value(serde_json::json!({
            "image": format!("reg/ns/{name}:{KVER}"),
            "digest": "sha256:1",
            "kernel": KVER,
            "moduleName": name,
            "inserted": [name],
            "parameters": [],
            "moduleDir": module_dir,
            "loadedAt": loaded_at,
        }))
        .unwrap()
    }

    fn state(records: Vec<(&str, LoadedModule)>) -> NodeState {
        NodeState {
            version: 1,
            modules: records
                .into_iter()
                .map(|(n, r)| (ModuleKey::new("ns", n), r))
                .collect(),
            ..NodeState::default()
        }
    }

    /// A cached image: `<root>/opt/lib/modules/<kver>` with `modules.dep` and `.ko` files.
    fn image(root: &Path, dep: &str) -> PathBuf {
        let dir = crate::kernel::module_dir(root, "/opt", KVER).unwrap();
        fs::create_dir_all(dir.join("kernel")).unwrap();
        fs::write(dir.join("modules.dep"), dep).unwrap();
        for line in dep.lines() {
            let (ko, deps) = line.split_once(':').unwrap();
            for f in std::iter::once(ko).chain(deps.split_whitespace()) {
                fs::write(dir.join(f), b"ko").unwrap();
            }
        }
        dir
    }

    fn settings(fw: &Path) -> BootSettings {
        BootSettings {
            firmware_dir: fw.join("host"),
            set_firmware_class_path: true,
            firmware_class_path: fw.join("class_path"),
        }
    }

    fn names(plan: &BootPlan) -> Vec<String> {
        plan.load.iter().map(|(k, _)| k.name.clone()).collect()
    }

    #[test]
    fn plan_loads_running_kernel_records_in_first_load_order() {
        let m = Path::new("/m");
        let st = state(vec![
            ("a", rec(m, "a", "2026-11-25T10:00:02Z")),
            ("b", rec(m, "b", "2026-11-25T10:00:01Z")),
            ("c", rec(m, "c", "2026-11-25T10:00:01Z")),
        ]);
        let p = plan(&st, KVER, |_| true);
        assert_eq!(names(&p), ["b", "c", "a"]);
        assert!(p.skip.is_empty());
    }

    #[test]
    fn plan_skips_other_kernels_and_missing_cache_entries() {
        let mut old = rec(Path::new("/m"), "old", "t");
        old.kernel = "6.1.0-55-amd64".into();
        let gone = rec(Path::new("/gone"), "gone", "t");
        let mut nofw = rec(Path::new("/m"), "nofw", "t");
        nofw.firmware_source = Some("/fw-gone".into());
        let ok = rec(Path::new("/m"), "ok", "t");
        let st = state(vec![
            ("old", old),
            ("gone", gone),
            ("nofw", nofw),
            ("ok", ok),
        ]);
        let p = plan(&st, KVER, |p| p == Path::new("/m"));
        assert_eq!(names(&p), ["ok"]);
        let skips: Vec<_> = p.skip.iter().map(|(k, r)| (k.name.as_str(), r)).collect();
        assert_eq!(
            skips,
            [
                ("gone", &SkipReason::MissingModuleDir("/gone".into())),
                ("nofw", &SkipReason::MissingFirmware("/fw-gone".into())),
                (
                    "old",
                    &SkipReason::OtherKernel {
                        recorded: "6.1.0-55-amd64".into()
                    }
                ),
            ]
        );
        assert!(!skips[2].1.is_failure());
        assert!(skips[0].1.is_failure() && skips[1].1.is_failure());
    }

    #[test]
    fn run_loads_with_parameters_order_in_tree_removal_and_firmware() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = image(
            &tmp.path().join("img"),
            "kernel/main.ko: kernel/lib.ko\nkernel/lib.ko:\nkernel/first.ko:\n",
        );
        let fw_src = tmp.path().join("img/firmware");
        fs::create_dir_all(fw_src.join("vendor")).unwrap();
        fs::write(fw_src.join("vendor/fw.bin"), b"fw").unwrap();
        let mut r = rec(&dir, "main", "t");
        r.parameters = vec!["n=3".into()];
        r.modules_loading_order = vec!["main".into(), "first".into()];
        r.in_tree_removed = vec!["intree".into()];
        r.firmware_source = Some(fw_src);
        r.inserted = vec!["first".into(), "lib".into(), "main".into()];
        let state_dir = tmp.path().join("state");
        let file = StateFile::in_dir(&state_dir);
        file.save(&state(vec![("main", r.clone())])).unwrap();

        let k = SimulatedKernel::new();
        k.preload("intree", &[]);
        let s = settings(tmp.path());
        let report = run(&file, KVER, BOOT, &k, &s).unwrap();
        assert!(report.success(), "{}", report.summary());
        assert!(!k.is_loaded("intree").unwrap());
        assert_eq!(k.parameters("main").unwrap(), ["n=3"]);
        assert_eq!(report.loaded[0].1.inserted, ["first", "lib", "main"]);
        assert_eq!(
            fs::read(s.firmware_dir.join("vendor/fw.bin")).unwrap(),
            b"fw"
        );
        assert_eq!(
            fs::read_to_string(&s.firmware_class_path).unwrap(),
            s.firmware_dir.to_string_lossy()
        );
        // The record stays as it was, with this boot's srcversions and id.
        let back = file.load().unwrap();
        let mut expected = r.clone();
        expected.srcversions = report.loaded[0].1.srcversions.clone();
        assert_eq!(back.modules[&ModuleKey::new("ns", "main")], expected);
        assert_eq!(back.boot_id.as_deref(), Some(BOOT));
    }

    #[test]
    fn run_records_what_this_boot_inserted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = image(&tmp.path().join("img"), "kernel/brd.ko:\n");
        let file = StateFile::in_dir(&tmp.path().join("state"));
        file.save(&state(vec![("brd", rec(&dir, "brd", "t"))]))
            .unwrap();
        // Someone else loaded brd before us this time: it is no longer ours to unload.
        let k = SimulatedKernel::new();
        k.preload("brd", &[]);
        let report = run(&file, KVER, BOOT, &k, &settings(tmp.path())).unwrap();
        assert!(report.success());
        assert!(report.loaded[0].1.already_loaded);
        let back = file.load().unwrap();
        assert!(
            back.modules[&ModuleKey::new("ns", "brd")]
                .inserted
                .is_empty()
        );
    }

    #[test]
    fn a_failed_record_does_not_stop_the_others_and_fails_the_run() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = image(&tmp.path().join("img"), "kernel/a.ko:\nkernel/b.ko:\n");
        let mut old = rec(&dir, "old", "t");
        old.kernel = "5.10.0-1-amd64".into();
        let file = StateFile::in_dir(&tmp.path().join("state"));
        file.save(&state(vec![
            ("a", rec(&dir, "a", "1")),
            ("b", rec(&dir, "b", "2")),
            ("old", old),
        ]))
        .unwrap();
        let k = SimulatedKernel::new();
        k.fail_next_load(Some("a"), Fault::KeyRejected);
        let report = run(&file, KVER, BOOT, &k, &settings(tmp.path())).unwrap();
        assert!(!report.success());
        assert!(k.is_loaded("b").unwrap());
        assert!(!k.is_loaded("a").unwrap());
        assert_eq!(report.failed.len(), 1);
        let summary = report.summary();
        assert!(
            summary.starts_with("1 loaded, 1 failed, 1 skipped"),
            "{summary}"
        );
        assert!(summary.contains("ns/a: failed"), "{summary}");
        assert!(summary.contains("ns/old: skipped: recorded for kernel 5.10.0-1-amd64"));
    }

    #[test]
    fn only_other_kernel_skips_is_success() {
        let tmp = tempfile::tempdir().unwrap();
        let mut old = rec(Path::new("/m"), "old", "t");
        old.kernel = "5.10.0-1-amd64".into();
        let file = StateFile::in_dir(tmp.path());
        file.save(&state(vec![("old", old)])).unwrap();
        let k = SimulatedKernel::new();
        let report = run(&file, KVER, BOOT, &k, &settings(tmp.path())).unwrap();
        assert!(report.success());
        assert_eq!(k.insert_count(), 0);
    }

    #[test]
    fn a_second_run_in_the_same_boot_keeps_what_the_first_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = image(&tmp.path().join("img"), "kernel/brd.ko:\n");
        let file = StateFile::in_dir(&tmp.path().join("state"));
        file.save(&state(vec![("brd", rec(&dir, "brd", "t"))]))
            .unwrap();
        let k = SimulatedKernel::new();
        assert!(
            run(&file, KVER, BOOT, &k, &settings(tmp.path()))
                .unwrap()
                .success()
        );
        let again = run(&file, KVER, BOOT, &k, &settings(tmp.path())).unwrap();
        assert!(again.success());
        assert!(
            again.loaded[0].1.inserted.is_empty(),
            "nothing inserted twice"
        );
        let back = file.load().unwrap();
        assert_eq!(
            back.modules[&ModuleKey::new("ns", "brd")].inserted,
            ["brd"],
            "still ours to unload"
        );
    }

    #[test]
    fn missing_state_file_loads_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let k = SimulatedKernel::new();
        let report = run(
            &StateFile::in_dir(tmp.path()),
            KVER,
            BOOT,
            &k,
            &settings(tmp.path()),
        )
        .unwrap();
        assert!(report.success());
        assert!(report.loaded.is_empty());
    }
}
