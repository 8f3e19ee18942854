//! `kmodctl`: drives `kmm_agent::kernel::LibKmod` from a shell, for the VM tests
//! (the real agent binary replaces it there later).
//!
//! ```text
//! kmodctl lsmod
//! kmodctl is-loaded NAME
//! kmodctl load --dir MODULE_DIR [--order NAME,DEP_A,DEP_B] NAME [K=V ...]
//! kmodctl unload [--only-deps A,B] NAME...        (removed in the order given)
//! kmodctl remove-in-tree NAME
//! kmodctl firmware SRC HOST_DIR [--class-path]
//! ```
//! Prints one result line (and `took=<ms>ms`); errors go to stderr, exit code 1.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kmm_agent::kernel::firmware;
use kmm_agent::kernel::{Kernel, LibKmod, LoadRequest, UnloadRequest};

#[derive(Parser)]
#[command(about = "load/unload kernel modules through kmm-agent's LibKmod")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List loaded modules: name refcount holders.
    Lsmod,
    /// Exit 0 if loaded (or built in), 1 if not.
    IsLoaded { name: String },
    /// Load NAME (after its dependencies) from MODULE_DIR.
    Load {
        /// Directory holding modules.dep (`<root>/<dirName>/lib/modules/<kver>`).
        #[arg(long)]
        dir: PathBuf,
        /// modulesLoadingOrder, comma separated, starting with NAME.
        #[arg(long, value_delimiter = ',')]
        order: Vec<String>,
        name: String,
        parameters: Vec<String>,
    },
    /// Unload modules in the given order (modprobe -r semantics for dependencies).
    Unload {
        /// Remove only these dependencies once unused.
        #[arg(long, value_delimiter = ',')]
        only_deps: Option<Vec<String>>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// inTreeModulesToRemove: unload NAME if loaded.
    RemoveInTree { name: String },
    /// Copy firmware from SRC into HOST_DIR.
    Firmware {
        src: PathBuf,
        host_dir: PathBuf,
        /// Also point /sys/module/firmware_class/parameters/path at HOST_DIR.
        #[arg(long)]
        class_path: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let Args { cmd } = Args::parse();
    let kernel = LibKmod::new()?;
    let start = Instant::now();
    let took = || format!("took={}ms", start.elapsed().as_millis());
    match cmd {
        Cmd::Lsmod => {
            for m in kernel.loaded_modules()? {
                println!("{} {} {}", m.name, m.refcount, m.holders.join(","));
            }
        }
        Cmd::IsLoaded { name } => {
            let loaded = kernel.is_loaded(&name)?;
            println!("{name} loaded={loaded}");
            if !loaded {
                std::process::exit(1);
            }
        }
        Cmd::Load {
            dir,
            order,
            name,
            parameters,
        } => {
            let req = LoadRequest::new(dir, name)
                .with_parameters(parameters)
                .with_loading_order(&order)?;
            let out = kernel.load(&req)?;
            println!(
                "loaded inserted={} already_loaded={} {}",
                out.inserted.join(","),
                out.already_loaded,
                took()
            );
        }
        Cmd::Unload { only_deps, names } => {
            let mut req = UnloadRequest {
                modules: names,
                ..UnloadRequest::default()
            };
            if let Some(deps) = only_deps {
                req = req.only_deps(deps);
            }
            let out = kernel.unload(&req)?;
            println!("unloaded removed={} {}", out.removed.join(","), took());
        }
        Cmd::RemoveInTree { name } => {
            let out = kernel.remove_in_tree(&name)?;
            println!(
                "removed-in-tree removed={} {}",
                out.removed.join(","),
                took()
            );
        }
        Cmd::Firmware {
            src,
            host_dir,
            class_path,
        } => {
            let copy = firmware::install_firmware(&src, &host_dir)?;
            if class_path {
                firmware::set_firmware_class_path(
                    firmware::FIRMWARE_CLASS_PATH.as_ref(),
                    &host_dir,
                )
                .context("setting the firmware class path")?;
            }
            println!(
                "firmware installed={} skipped={} {}",
                copy.installed.len(),
                copy.skipped.len(),
                took()
            );
        }
    }
    Ok(())
}
