//! Lexical checks on entry names and link targets: nothing here touches the
//! filesystem, so every rule can be tested on plain bytes.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::ExtractError;

/// Longest single path component Linux accepts (NAME_MAX).
const MAX_COMPONENT: usize = 255;

/// Entry names are shown in errors; very long ones are cut so a status stays readable.
pub(crate) fn display(raw: &[u8]) -> String {
    const SHOW: usize = 200;
    let text = String::from_utf8_lossy(raw);
    if text.chars().count() > SHOW {
        let cut: String = text.chars().take(SHOW).collect();
        format!("{cut}...")
    } else {
        text.into_owned()
    }
}

/// A checked entry name: relative, no `.`/`..`/empty components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryPath {
    components: Vec<Vec<u8>>,
}

impl EntryPath {
    /// Normalises an entry name from a tar header.
    ///
    /// A leading `/` is dropped (image layers are rooted at the image root,
    /// and some tools write absolute names); `.` and empty components are
    /// dropped; any `..` component is refused outright rather than resolved,
    /// because no legitimate image needs it. `Ok(None)` means the entry names
    /// the root itself (`./`).
    pub(crate) fn parse(raw: &[u8], max_len: usize) -> Result<Option<Self>, ExtractError> {
        check_name(raw, max_len)?;
        let mut components = Vec::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => {
                    return Err(ExtractError::PathEscape { path: display(raw) });
                }
                name => components.push(name.to_vec()),
            }
        }
        if components.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self { components }))
    }

    pub(crate) fn from_components(components: Vec<Vec<u8>>) -> Self {
        Self { components }
    }

    pub(crate) fn components(&self) -> &[Vec<u8>] {
        &self.components
    }

    /// The last component (the entry's own name).
    pub(crate) fn file_name(&self) -> &[u8] {
        self.components
            .last()
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// All components but the last.
    pub(crate) fn parent_components(&self) -> &[Vec<u8>] {
        let n = self.components.len().saturating_sub(1);
        &self.components[..n]
    }

    /// The path relative to the image root.
    pub(crate) fn rel(&self) -> PathBuf {
        let mut path = PathBuf::new();
        for c in &self.components {
            path.push(OsStr::from_bytes(c));
        }
        path
    }

    /// The path under `root`.
    pub(crate) fn under(&self, root: &Path) -> PathBuf {
        root.join(self.rel())
    }
}

fn check_name(raw: &[u8], max_len: usize) -> Result<(), ExtractError> {
    let reason = if raw.is_empty() {
        Some("empty name".to_owned())
    } else if raw.contains(&0) {
        Some("NUL byte in name".to_owned())
    } else if raw.len() > max_len {
        Some(format!(
            "{} bytes long, more than the {max_len}-byte limit",
            raw.len()
        ))
    } else if raw.split(|b| *b == b'/').any(|c| c.len() > MAX_COMPONENT) {
        Some(format!("a component is longer than {MAX_COMPONENT} bytes"))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ExtractError::InvalidName {
            path: display(raw),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks a symlink target and returns the target to actually create.
///
/// The target is resolved lexically from the link's directory, the way it
/// would be inside the image: an absolute target counts from the image root.
/// If the result would climb above the root the link is refused. Otherwise the
/// link is written as the *normalised relative* path to that result, i.e.
/// `(../)*` followed by plain names, never more `..` than the link's depth.
///
/// Why rewrite: the unpacked tree is used from the host (modprobe -d), not in
/// a chroot, so `/usr/lib/x` must become `../usr/lib/x` or it would name the
/// host's file. And with only leading `..` that never exceed the link's own
/// depth, a chain of such links can never resolve above the root, whatever
/// other links exist now or later (a `a/b/..` form could, once `a/b` becomes
/// a symlink).
pub(crate) fn symlink_target(
    link: &EntryPath,
    raw_target: &[u8],
    max_len: usize,
) -> Result<Vec<u8>, ExtractError> {
    let escape = || ExtractError::SymlinkEscape {
        path: display(&join(link.components())),
        target: display(raw_target),
    };
    check_name(raw_target, max_len).map_err(|e| match e {
        ExtractError::InvalidName { reason, .. } => ExtractError::InvalidName {
            path: format!(
                "{} -> {}",
                display(&join(link.components())),
                display(raw_target)
            ),
            reason,
        },
        other => other,
    })?;
    let dir = link.parent_components();
    let mut resolved: Vec<&[u8]> = if raw_target.starts_with(b"/") {
        Vec::new()
    } else {
        dir.iter().map(Vec::as_slice).collect()
    };
    for part in raw_target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                if resolved.pop().is_none() {
                    return Err(escape());
                }
            }
            name => resolved.push(name),
        }
    }
    // Relative path from the link's directory to `resolved`.
    let common = dir
        .iter()
        .zip(resolved.iter())
        .take_while(|(a, b)| a.as_slice() == **b)
        .count();
    let mut parts: Vec<&[u8]> = Vec::new();
    parts.extend(std::iter::repeat_n(&b".."[..], dir.len() - common));
    parts.extend(resolved[common..].iter().copied());
    if parts.is_empty() {
        return Ok(b".".to_vec());
    }
    Ok(parts.join(&b'/'))
}

/// Checks a hard link's target name; it must name something inside the root.
pub(crate) fn hardlink_target(
    link: &EntryPath,
    raw_target: &[u8],
    max_len: usize,
) -> Result<EntryPath, ExtractError> {
    let escape = || ExtractError::HardLinkEscape {
        path: display(&join(link.components())),
        target: display(raw_target),
    };
    match EntryPath::parse(raw_target, max_len) {
        Ok(Some(target)) => Ok(target),
        Ok(None) | Err(ExtractError::PathEscape { .. }) => Err(escape()),
        Err(other) => Err(other),
    }
}

pub(crate) fn join(components: &[Vec<u8>]) -> Vec<u8> {
    components.join(&b'/')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn entry(s: &str) -> EntryPath {
        EntryPath::parse(s.as_bytes(), 4096).unwrap().unwrap()
    }

    fn target(link: &str, t: &str) -> Result<String, ExtractError> {
        symlink_target(&entry(link), t.as_bytes(), 4096).map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn absolute_and_dotted_names_are_made_relative() {
        assert_eq!(entry("/opt/lib/x.ko").rel(), PathBuf::from("opt/lib/x.ko"));
        assert_eq!(
            entry("./opt//lib/./x.ko").rel(),
            PathBuf::from("opt/lib/x.ko")
        );
        assert!(EntryPath::parse(b"./", 4096).unwrap().is_none());
    }

    #[test]
    fn dotdot_anywhere_is_refused() {
        for bad in ["../x", "a/../b", "a/b/..", "/../etc/passwd"] {
            let err = EntryPath::parse(bad.as_bytes(), 4096).unwrap_err();
            assert!(
                matches!(err, ExtractError::PathEscape { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn long_names_and_nul_are_refused() {
        let long = "a/".repeat(3000);
        assert!(matches!(
            EntryPath::parse(long.as_bytes(), 4096),
            Err(ExtractError::InvalidName { .. })
        ));
        assert!(EntryPath::parse(b"a\0b", 4096).is_err());
        assert!(EntryPath::parse(&[b'x'; 256], 4096).is_err());
    }

    #[test]
    fn symlink_targets_are_normalised_inside_the_root() {
        assert_eq!(target("usr/bin/awk", "mawk").unwrap(), "mawk");
        assert_eq!(target("usr/bin/awk", "../lib/x").unwrap(), "../lib/x");
        assert_eq!(
            target("etc/alternatives/awk", "/usr/bin/mawk").unwrap(),
            "../../usr/bin/mawk"
        );
        assert_eq!(target("lib", "usr/lib").unwrap(), "usr/lib");
        assert_eq!(target("a/b", "c/../d").unwrap(), "d");
        assert_eq!(target("a/b", "..").unwrap(), "..");
        assert_eq!(target("a/b", ".").unwrap(), ".");
        assert_eq!(target("a/b", "/").unwrap(), "..");
        assert_eq!(target("a/b/c", "/a/b/x").unwrap(), "x");
    }

    #[test]
    fn symlink_targets_climbing_above_the_root_are_refused() {
        for (link, t) in [
            ("x", ".."),
            ("a/b", "../../etc"),
            ("a/b", "../../../etc/passwd"),
            ("x", "/../etc"),
        ] {
            let err = target(link, t).unwrap_err();
            assert!(
                matches!(err, ExtractError::SymlinkEscape { .. }),
                "{link} -> {t}: {err}"
            );
        }
    }

    #[test]
    fn hardlink_targets_must_stay_inside() {
        let link = entry("a/b");
        assert_eq!(
            hardlink_target(&link, b"/a/c", 4096).unwrap().rel(),
            PathBuf::from("a/c")
        );
        assert!(matches!(
            hardlink_target(&link, b"../../etc/shadow", 4096),
            Err(ExtractError::HardLinkEscape { .. })
        ));
        assert!(matches!(
            hardlink_target(&link, b"/", 4096),
            Err(ExtractError::HardLinkEscape { .. })
        ));
    }
}
