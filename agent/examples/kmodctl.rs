//! `kmodctl`: drives `kmm_agent::kernel` from a shell, for the VM tests (the real
//! agent binary replaces it there later).
//!
//! ```text
//! kmodctl [--simulated] lsmod
//! kmodctl is-loaded NAME
//! kmodctl load --dir MODULE_DIR [--order NAME,DEP_A,DEP_B] NAME [K=V ...]
//! kmodctl unload [--only-deps A,B] NAME...        (removed in the order given)
//! kmodctl remove-in-tree NAME
//! kmodctl srcversion NAME                          (of the loaded module)
//! kmodctl file-srcversion --dir MODULE_DIR NAME    (of the file a load would insert)
//! kmodctl firmware SRC HOST_DIR [--class-path]
//! kmodctl [--simulated] script < FILE              (one command per line, one kernel)
//! ```
//! Prints one result line (and `took=<ms>ms`); errors go to stderr, exit code 1.
//! `script` prints `> <line>` then `ok: <result>` or `error: <message>` for each
//! line and goes on after errors: the same file run with `LibKmod` in a VM and
//! with `--simulated` on the host must print the same (the parity test).

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kmm_agent::kernel::firmware;
use kmm_agent::kernel::{Kernel, LibKmod, LoadRequest, SimulatedKernel, UnloadRequest};

#[derive(Parser)]
#[command(about = "load/unload kernel modules through kmm-agent's Kernel implementations")]
struct Args {
    /// Use the in-memory SimulatedKernel instead of libkmod.
    #[arg(long)]
    simulated: bool,
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
    /// srcversion of the loaded module NAME (`none` if it has none).
    Srcversion { name: String },
    /// srcversion of the file `load --dir MODULE_DIR NAME` would insert.
    FileSrcversion {
        #[arg(long)]
        dir: PathBuf,
        name: String,
    },
    /// Copy firmware from SRC into HOST_DIR.
    Firmware {
        src: PathBuf,
        host_dir: PathBuf,
        /// Also point /sys/module/firmware_class/parameters/path at HOST_DIR.
        #[arg(long)]
        class_path: bool,
    },
    /// Run commands from stdin (whitespace-separated words, `#` comments) on one kernel.
    Script,
}

/// Runs one command; the result line without timing.
fn exec(kernel: &dyn Kernel, cmd: Cmd) -> anyhow::Result<String> {
    Ok(match cmd {
        Cmd::Lsmod => {
            let mut lines = Vec::new();
            for m in kernel.loaded_modules()? {
                lines.push(format!("{} {} {}", m.name, m.refcount, m.holders.join(",")));
            }
            lines.join("\n")
        }
        Cmd::IsLoaded { name } => format!("{name} loaded={}", kernel.is_loaded(&name)?),
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
            format!(
                "loaded inserted={} already_loaded={}",
                out.inserted.join(","),
                out.already_loaded
            )
        }
        Cmd::Unload { only_deps, names } => {
            let mut req = UnloadRequest {
                modules: names,
                ..UnloadRequest::default()
            };
            if let Some(deps) = only_deps {
                req = req.only_deps(deps);
            }
            format!(
                "unloaded removed={}",
                kernel.unload(&req)?.removed.join(",")
            )
        }
        Cmd::RemoveInTree { name } => {
            let out = kernel.remove_in_tree(&name)?;
            format!("removed-in-tree removed={}", out.removed.join(","))
        }
        Cmd::Srcversion { name } => format!(
            "{name} srcversion={}",
            kernel.srcversion(&name)?.as_deref().unwrap_or("none")
        ),
        Cmd::FileSrcversion { dir, name } => format!(
            "{name} file-srcversion={}",
            kernel
                .file_srcversion(&dir, &name)?
                .as_deref()
                .unwrap_or("none")
        ),
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
            format!(
                "firmware installed={} skipped={}",
                copy.installed.len(),
                copy.skipped.len()
            )
        }
        Cmd::Script => anyhow::bail!("script cannot be nested"),
    })
}

fn script(kernel: &dyn Kernel) -> anyhow::Result<()> {
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        println!("> {line}");
        let words = std::iter::once("kmodctl").chain(line.split_whitespace());
        match Args::try_parse_from(words) {
            Ok(Args { cmd, .. }) => match exec(kernel, cmd) {
                Ok(out) => println!("ok: {out}"),
                Err(e) => println!("error: {e:#}"),
            },
            Err(e) => println!("error: {}", e.to_string().lines().next().unwrap_or("")),
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let Args { simulated, cmd } = Args::parse();
    let kernel: Box<dyn Kernel> = if simulated {
        Box::new(SimulatedKernel::new())
    } else {
        Box::new(LibKmod::new()?)
    };
    let start = Instant::now();
    match cmd {
        Cmd::Script => script(kernel.as_ref())?,
        Cmd::IsLoaded { name } => {
            let loaded = kernel.is_loaded(&name)?;
            println!("{name} loaded={loaded}");
            if !loaded {
                std::process::exit(1);
            }
        }
        Cmd::Lsmod => println!("{}", exec(kernel.as_ref(), Cmd::Lsmod)?),
        cmd => {
            let out = exec(kernel.as_ref(), cmd)?;
            println!("{out} took={}ms", start.elapsed().as_millis());
        }
    }
    Ok(())
}
