//! The project's shell scripts: habits that once broke a CI run.

use std::path::{Path, PathBuf};

use kmm_tests::controlplane::repo_root;

/// Every `*.sh` under `dir`, recursively (symlinks not followed).
fn scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => scripts(&path, out),
            Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "sh") => out.push(path),
            _ => {}
        }
    }
}

/// Under `set -o pipefail`, `cmd | head -1` fails the pipeline (141) when
/// `cmd` writes after `head` has exited: a cold CI run stopped on
/// `etcd --version | head -1`. `sed -n 1p` or `grep -m N` read to the end.
#[test]
fn no_pipefail_script_pipes_into_head() {
    let root = repo_root();
    let mut files = Vec::new();
    for dir in ["hack", "tests/vm", "systemd", ".ci", "deploy", "benches"] {
        scripts(&root.join(dir), &mut files);
    }
    assert!(files.len() > 10, "found only {files:?}");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text.contains("pipefail") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with('#') {
                continue;
            }
            let piped_into_head = code
                .split('|')
                .skip(1)
                .any(|stage| stage.split_whitespace().next() == Some("head"));
            if piped_into_head {
                let rel = file.strip_prefix(root).unwrap_or(file);
                found.push(format!("{}:{}: {code}", rel.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "pipes into head:\n{}", found.join("\n"));
}
