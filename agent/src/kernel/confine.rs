//! Proof that a file the agent is about to hand to the kernel (or copy to the
//! host) lies inside the extracted image.
//!
//! Paths come from the image (`modules.dep` entries, firmware trees), so they
//! may be absolute, climb with `..`, or pass through symlinks. The only answer
//! that counts is where the path resolves now: both sides are canonicalized and
//! the file must be under the canonical root. Self-contained (std only) so the
//! fuzz target can compile it.

use std::io;
use std::path::{Path, PathBuf};

/// Where a path resolves, relative to a root.
#[derive(Debug)]
pub enum Confined {
    /// Resolves to this canonical path, under the canonical root.
    Inside(PathBuf),
    /// Resolves to this canonical path, outside the root.
    Outside(PathBuf),
    /// Does not resolve (missing file, dangling symlink, unreadable directory).
    Unresolved(io::Error),
}

/// Resolves `path` (relative paths against the process's working directory, as
/// `open` would) and tells whether it is under `root`.
///
/// # Errors
/// If `root` itself cannot be canonicalized.
pub fn confine(root: &Path, path: &Path) -> io::Result<Confined> {
    let root = root.canonicalize()?;
    Ok(confine_canonical(&root, path))
}

/// [`confine`] with a root that is already canonical.
pub fn confine_canonical(canonical_root: &Path, path: &Path) -> Confined {
    match path.canonicalize() {
        Ok(real) if real.starts_with(canonical_root) => Confined::Inside(real),
        Ok(real) => Confined::Outside(real),
        Err(e) => Confined::Unresolved(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn absolute_dotdot_and_symlinked_paths_are_judged_by_where_they_resolve() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("img");
        std::fs::create_dir_all(root.join("kernel")).unwrap();
        std::fs::write(root.join("kernel/a.ko"), b"a").unwrap();
        std::fs::write(top.path().join("host.ko"), b"host").unwrap();
        symlink(top.path().join("host.ko"), root.join("kernel/out.ko")).unwrap();
        symlink("a.ko", root.join("kernel/alias.ko")).unwrap();

        let inside = |p: &Path| matches!(confine(&root, p).unwrap(), Confined::Inside(_));
        assert!(inside(&root.join("kernel/a.ko")));
        assert!(inside(&root.join("kernel/alias.ko")));
        assert!(inside(&root.join("kernel/../kernel/a.ko")));
        assert!(!inside(&top.path().join("host.ko")));
        assert!(!inside(&root.join("../host.ko")));
        assert!(!inside(&root.join("kernel/out.ko")));
        assert!(matches!(
            confine(&root, &root.join("kernel/missing.ko")).unwrap(),
            Confined::Unresolved(_)
        ));
        // a sibling whose name extends the root's is not inside it
        std::fs::create_dir_all(top.path().join("img2")).unwrap();
        std::fs::write(top.path().join("img2/b.ko"), b"b").unwrap();
        assert!(!inside(&top.path().join("img2/b.ko")));
    }
}
