//! Writes the CRDs of kmm-rs: `crdgen <dir>` writes every file of `deploy/crds/` into `<dir>`;
//! without an argument it prints the Module and NodeModulesConfig CRDs to stdout.

use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let files = kmm_common::crd::render_crd_files()?;
    match std::env::args_os().nth(1).map(PathBuf::from) {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, content) in files {
                let path = dir.join(name);
                std::fs::write(&path, content)
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
        None => {
            for (name, content) in files {
                if name.ends_with("kustomization.yaml") {
                    continue;
                }
                print!("{content}");
            }
        }
    }
    Ok(())
}
