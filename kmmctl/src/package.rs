//! `kmmctl package`: resolve modules, stage them, build the layer and image.
//! Writing the OCI layout and pushing are separate steps (see [`crate::layout`]
//! and [`crate::registry`]) so callers can do either or both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::depmod::{self, Depmod};
use crate::image::{self, Image, ImageMeta};
use crate::layer;
use crate::modtree::{self, ModuleTree, canonical_name};
use crate::stage::{self, FirmwareFile, ModuleFile, StagePlan, is_safe_relative};

/// Errors of the packaging step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// An explicit `--ko` or `--firmware` file does not exist.
    #[error("input file {0} does not exist or is not a regular file")]
    MissingInput(PathBuf),
    /// depmod is not available.
    #[error(transparent)]
    Depmod(#[from] depmod::Error),
    /// Reading or resolving the module tree failed.
    #[error(transparent)]
    Tree(#[from] modtree::Error),
    /// Staging files failed.
    #[error(transparent)]
    Stage(#[from] stage::Error),
    /// Building the layer failed.
    #[error(transparent)]
    Layer(#[from] layer::Error),
    /// The temporary staging directory could not be created.
    #[error("cannot create a temporary staging directory")]
    TempDir(#[source] std::io::Error),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A firmware input: a file and where it goes below the firmware directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareInput {
    /// Source file.
    pub source: PathBuf,
    /// Destination relative to the firmware dir; None means the file's base name.
    pub dest: Option<String>,
}

impl std::str::FromStr for FirmwareInput {
    type Err = String;

    /// `FILE` or `FILE=sub/dir/name.bin`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((src, dest)) if !src.is_empty() && !dest.is_empty() => Ok(Self {
                source: src.into(),
                dest: Some(dest.to_string()),
            }),
            Some(_) => Err(format!("'{s}': expected FILE or FILE=DEST")),
            None => Ok(Self {
                source: s.into(),
                dest: None,
            }),
        }
    }
}

/// Everything `kmmctl package` needs to build an image.
#[derive(Debug, Clone)]
pub struct PackageRequest {
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub kver: String,
    /// Explicit module files.
    pub ko_files: Vec<PathBuf>,
    /// Where explicit module files go, relative to `lib/modules/<kver>/`.
    pub ko_subdir: String,
    /// Root of a module tree (contains `lib/modules/<kver>`).
    pub module_tree: Option<PathBuf>,
    /// Module names to take (with dependencies) from the tree.
    pub module_names: Vec<String>,
    /// Firmware files.
    pub firmware: Vec<FirmwareInput>,
    /// Absolute firmware directory in the image (upstream's firmwarePath example: `/firmware`).
    pub firmware_dir: String,
    /// Absolute module root in the image (upstream's dirName, default `/opt`).
    pub dir_name: String,
    /// Extra config labels.
    pub labels: BTreeMap<String, String>,
    /// Fixed timestamp (SOURCE_DATE_EPOCH): tar mtimes and `created`. None: mtime 0, no `created`.
    pub source_date_epoch: Option<u64>,
    /// Image architecture.
    pub architecture: String,
}

impl PackageRequest {
    /// A request with the defaults of the CLI.
    pub fn new(kver: impl Into<String>) -> Self {
        Self {
            kver: kver.into(),
            ko_files: Vec::new(),
            ko_subdir: "extra".into(),
            module_tree: None,
            module_names: Vec::new(),
            firmware: Vec::new(),
            firmware_dir: "/firmware".into(),
            dir_name: "/opt".into(),
            labels: BTreeMap::new(),
            source_date_epoch: None,
            architecture: "amd64".into(),
        }
    }
}

/// The result of packaging.
#[derive(Debug, Clone)]
pub struct Packaged {
    /// The image.
    pub image: Image,
    /// Names of all shipped modules, dependencies first.
    pub modules: Vec<String>,
}

/// Builds the image for `req`.
///
/// # Errors
/// Invalid requests, unknown modules, missing depmod, I/O.
pub fn package(req: &PackageRequest, depmod: &Depmod) -> Result<Packaged> {
    validate(req)?;
    let dir_name = req.dir_name.trim_matches('/').to_string();
    let firmware_dir = req.firmware_dir.trim_matches('/').to_string();

    let mut modules = Vec::new();
    let mut names = Vec::new();
    let mut requested = Vec::new();
    let mut tree_moddir = None;
    if let Some(root) = &req.module_tree {
        let tree = ModuleTree::open(root, &req.kver, Some(depmod))?;
        for entry in tree.resolve(&req.module_names)? {
            modules.push(ModuleFile::from_tree(tree.moddir(), &entry.rel_path));
            names.push(entry.name.clone());
        }
        requested.extend(req.module_names.iter().map(|n| canonical_name(n)));
        tree_moddir = Some(tree.moddir().to_path_buf());
    }
    for ko in &req.ko_files {
        if !ko.is_file() {
            return Err(Error::MissingInput(ko.clone()));
        }
        let file = file_name(ko)?;
        if canonical_name(&file) == file.replace('-', "_") {
            return Err(Error::Invalid(format!(
                "--ko {}: not a module file name (.ko, .ko.xz, .ko.zst or .ko.gz)",
                ko.display()
            )));
        }
        let plain = crate::decompress::split_suffix(&file).0.to_string();
        modules.push(ModuleFile {
            source: ko.clone(),
            dest: format!("{}/{plain}", req.ko_subdir.trim_matches('/')),
        });
        names.push(canonical_name(&file));
        requested.push(canonical_name(&file));
    }
    dedup_keep_order(&mut requested);

    let mut firmware = Vec::new();
    for fw in &req.firmware {
        if !fw.source.is_file() {
            return Err(Error::MissingInput(fw.source.clone()));
        }
        let dest = match &fw.dest {
            Some(d) => d.clone(),
            None => file_name(&fw.source)?,
        };
        if !is_safe_relative(&dest) {
            return Err(Error::Invalid(format!(
                "firmware destination '{dest}' must be a relative path without '..'"
            )));
        }
        firmware.push(FirmwareFile {
            source: fw.source.clone(),
            dest,
        });
    }

    let plan = StagePlan {
        kver: req.kver.clone(),
        dir_name: dir_name.clone(),
        firmware_dir,
        modules,
        firmware,
        tree_moddir,
    };
    let tmp = tempfile::Builder::new()
        .prefix("kmmctl-stage-")
        .tempdir()
        .map_err(Error::TempDir)?;
    tracing::info!(
        "staging {} module(s) for {}: {}",
        names.len(),
        req.kver,
        names.join(" ")
    );
    stage::stage(&plan, depmod, tmp.path())?;
    let layer = layer::build(tmp.path(), req.source_date_epoch.unwrap_or(0))?;
    tracing::info!(
        "layer {} ({} B gzip, {} B tar, {} entries)",
        layer.digest,
        layer.blob.len(),
        layer.tar_size,
        layer.entries.len()
    );
    let meta = ImageMeta {
        kver: req.kver.clone(),
        modules: requested,
        dir_name: format!("/{dir_name}"),
        architecture: req.architecture.clone(),
        created: req.source_date_epoch.map(crate::digest::rfc3339),
        labels: req.labels.clone(),
    };
    let image = image::build(&meta, layer);
    Ok(Packaged {
        image,
        modules: names,
    })
}

fn validate(req: &PackageRequest) -> Result<()> {
    let invalid = |m: String| Err(Error::Invalid(m));
    if req.kver.is_empty() || req.kver.contains('/') || req.kver.starts_with('.') {
        return invalid(format!(
            "kernel version '{}' is not a valid release name",
            req.kver
        ));
    }
    if req.ko_files.is_empty() && req.module_names.is_empty() {
        return invalid(
            "nothing to package: give --ko FILE... or --module-tree DIR with module names".into(),
        );
    }
    if req.module_tree.is_none() && !req.module_names.is_empty() {
        return invalid(format!(
            "module names ({}) need --module-tree DIR to resolve them",
            req.module_names.join(", ")
        ));
    }
    if req.module_tree.is_some() && req.module_names.is_empty() {
        return invalid("--module-tree given but no module names".into());
    }
    for (flag, value) in [
        ("--dir-name", &req.dir_name),
        ("--firmware-dir", &req.firmware_dir),
    ] {
        if !value.starts_with('/') || !is_safe_relative(value.trim_matches('/')) {
            return invalid(format!(
                "{flag} '{value}' must be an absolute path like /opt, without '..'"
            ));
        }
    }
    if !is_safe_relative(&req.ko_subdir) {
        return invalid(format!(
            "--subdir '{}' must be a relative path without '..'",
            req.ko_subdir
        ));
    }
    Ok(())
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| Error::Invalid(format!("{} has no UTF-8 file name", path.display())))
}

fn dedup_keep_order(v: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_input_parses_optional_destination() {
        let a: FirmwareInput = "/x/fw.bin".parse().unwrap();
        assert_eq!(a.dest, None);
        let b: FirmwareInput = "/x/fw.bin=vendor/fw.bin".parse().unwrap();
        assert_eq!(b.dest.as_deref(), Some("vendor/fw.bin"));
        assert!("=x".parse::<FirmwareInput>().is_err());
    }

    #[test]
    fn names_without_tree_are_rejected() {
        let mut req = PackageRequest::new("6.1.0-56-amd64");
        req.module_names = vec!["brd".into()];
        let err = package(&req, &Depmod::with_program("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("need --module-tree"), "{err}");
    }

    #[test]
    fn relative_dir_name_is_rejected() {
        let mut req = PackageRequest::new("6.1.0-56-amd64");
        req.ko_files = vec!["/x.ko".into()];
        req.dir_name = "opt/../etc".into();
        let err = package(&req, &Depmod::with_program("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("--dir-name"), "{err}");
    }
}
