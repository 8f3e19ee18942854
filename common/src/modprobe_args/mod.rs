//! `modprobe.args` and `modprobe.rawArgs` read as the modprobe command lines upstream's worker
//! runs (`modprobe -vd <dirName> ${args.load} moduleName ${parameters}`, `modprobe
//! ${rawArgs.load}`, and the unload forms with `-r`), mapped onto what kmm-agent does with
//! libkmod: which modules, in which order, with which parameters, from which directory of the
//! image, and whether `--first-time` holds. Pure, so the webhook refuses what the agent would
//! refuse, naming the argument (`...rawArgs.load[1]`), and the agent reports the same text as
//! `InvalidModuleSpec` for a Module that got past admission.
//!
//! Semantics follow kmod's `tools/modprobe.c`: without `-a` the first name is the module and
//! the rest its parameters; with `-a` (or `-r`) every argument is a module name. Where the
//! agent differs from a modprobe binary it is said in `docs/modprobe-args.md`.

use crate::ModprobeSpec;
use crate::validation::{ValidationError, check_kernel_module_name, check_module_parameter};

mod getopt;

pub use getopt::ArgError;
use getopt::{CommandLine, parse};

/// Where upstream's worker copies the image's `dirName`: its Modules write `-d /tmp/opt` to
/// mean the image's `/opt`.
const UPSTREAM_WORKER_DIR: &str = "/tmp";

/// What to load, in the agent's terms (the shape of `moduleName` + `modulesLoadingOrder`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadCommand {
    /// The module loaded last; `parameters` are its own.
    pub module_name: String,
    /// Its parameters (`key=value`).
    pub parameters: Vec<String>,
    /// `modulesLoadingOrder` form, `[module_name, loaded before it, …]`; empty for one module.
    pub modules_loading_order: Vec<String>,
    /// The directory of the image holding `lib/modules/<kernel>` (`dirName` or `-d`).
    pub dir_name: String,
    /// `--first-time`: fail if a named module is already in the kernel.
    pub first_time: bool,
}

/// What the unload command line asks beyond "remove what the load inserted".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnloadCommand {
    /// `--first-time`: fail if a module to remove is not in the kernel.
    pub first_time: bool,
}

/// A Module's load and unload, from `moduleName` & co. and `args`, or from `rawArgs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModprobeCommands {
    /// The load.
    pub load: LoadCommand,
    /// The unload.
    pub unload: UnloadCommand,
}

const FIELD: &str = "spec.moduleLoader.container.modprobe";

/// The load and unload `spec` asks for. `rawArgs`, when it has a load or an unload, replaces
/// every other field but `dirName` (the default of `-d`) and `firmwarePath`, as upstream's
/// worker ignores them; else `moduleName`, `parameters`, `modulesLoadingOrder` and `dirName`
/// with the flags of `args`.
///
/// # Errors
/// Every argument that cannot be honoured, each with its field
/// (`spec.moduleLoader.container.modprobe.rawArgs.load[1]`).
pub fn resolve(spec: &ModprobeSpec) -> Result<ModprobeCommands, Vec<ValidationError>> {
    let raw = spec
        .raw_args
        .as_ref()
        .filter(|r| !r.load.is_empty() || !r.unload.is_empty());
    let (load, unload) = match raw {
        Some(raw) => (
            raw_load(&raw.load, &spec.dir_name).map_err(|e| field_error("rawArgs.load", e)),
            raw_unload(&raw.unload).map_err(|e| field_error("rawArgs.unload", e)),
        ),
        None => {
            let args = spec.args.as_ref();
            let none = Vec::new();
            (
                args_load(args.map_or(&none, |a| &a.load), spec)
                    .map_err(|e| field_error("args.load", e)),
                args_unload(args.map_or(&none, |a| &a.unload))
                    .map_err(|e| field_error("args.unload", e)),
            )
        }
    };
    match (load, unload) {
        (Ok(load), Ok(unload)) => Ok(ModprobeCommands { load, unload }),
        (load, unload) => Err(load.err().into_iter().chain(unload.err()).collect()),
    }
}

fn field_error(list: &str, e: ArgError) -> ValidationError {
    let field = match e.index {
        Some(i) => format!("{FIELD}.{list}[{i}]"),
        None => format!("{FIELD}.{list}"),
    };
    ValidationError::new(field, e.message)
}

/// `modprobe ${rawArgs.load}`.
fn raw_load(args: &[String], default_dir: &str) -> Result<LoadCommand, ArgError> {
    let line = parse(args)?;
    refuse_remove(&line)?;
    let dir_name = image_dir(&line, default_dir)?;
    let Some(((at, first), rest)) = line.words.split_first() else {
        return Err(ArgError::whole("names no module to load"));
    };
    if line.all.is_some() {
        let names = module_names(&line.words, "with -a every argument is a module name")?;
        let mut order: Vec<String> = names.into_iter().rev().collect();
        let module_name = order.first().cloned().unwrap_or_default();
        if order.len() == 1 {
            order.clear();
        }
        return Ok(LoadCommand {
            module_name,
            parameters: Vec::new(),
            modules_loading_order: order,
            dir_name,
            first_time: line.first_time,
        });
    }
    check_name(*at, first, "the first argument is the module")?;
    let mut parameters = Vec::new();
    for (i, p) in rest {
        check_module_parameter(p).map_err(|m| ArgError::at(*i, m))?;
        parameters.push(p.clone());
    }
    Ok(LoadCommand {
        module_name: first.clone(),
        parameters,
        modules_loading_order: Vec::new(),
        dir_name,
        first_time: line.first_time,
    })
}

/// `modprobe ${rawArgs.unload}`: must remove (`-r`), names modules only.
fn raw_unload(args: &[String]) -> Result<UnloadCommand, ArgError> {
    if args.is_empty() {
        return Ok(UnloadCommand::default());
    }
    let line = parse(args)?;
    if line.remove.is_none() {
        return Err(ArgError::whole(
            "has no -r/--remove: without it modprobe loads; write e.g. [-r, <module>]",
        ));
    }
    image_dir(&line, "")?;
    if line.words.is_empty() {
        return Err(ArgError::whole("names no module to remove"));
    }
    module_names(&line.words, "modprobe -r takes module names only")?;
    Ok(UnloadCommand {
        first_time: line.first_time,
    })
}

/// `modprobe -vd <dirName> ${args.load} moduleName ${parameters}`: flags only.
fn args_load(args: &[String], spec: &ModprobeSpec) -> Result<LoadCommand, ArgError> {
    let line = parse(args)?;
    refuse_remove(&line)?;
    refuse_words(&line)?;
    if let Some(at) = line.all.filter(|_| !spec.parameters.is_empty()) {
        return Err(ArgError::at(
            at,
            "-a (--all) makes every argument a module name, so modprobe.parameters would be loaded as modules",
        ));
    }
    Ok(LoadCommand {
        module_name: spec.module_name.clone(),
        parameters: spec.parameters.clone(),
        modules_loading_order: spec.modules_loading_order.clone().unwrap_or_default(),
        dir_name: image_dir(&line, &spec.dir_name)?,
        first_time: line.first_time,
    })
}

/// `modprobe -rvd <dirName> ${args.unload} moduleName`: flags only.
fn args_unload(args: &[String]) -> Result<UnloadCommand, ArgError> {
    let line = parse(args)?;
    refuse_words(&line)?;
    image_dir(&line, "")?;
    Ok(UnloadCommand {
        first_time: line.first_time,
    })
}

fn refuse_remove(line: &CommandLine) -> Result<(), ArgError> {
    match line.remove {
        Some(at) => Err(ArgError::at(
            at,
            "-r (--remove) removes instead of loading; it belongs to the unload command line",
        )),
        None => Ok(()),
    }
}

fn refuse_words(line: &CommandLine) -> Result<(), ArgError> {
    match line.words.first() {
        Some((at, word)) => Err(ArgError::at(
            *at,
            format!(
                "{word:?} is not a flag: args holds flags placed before moduleName; name modules in moduleName and modulesLoadingOrder, parameters in parameters, or write the whole command line in rawArgs"
            ),
        )),
        None => Ok(()),
    }
}

/// Each word a module name, none twice.
fn module_names(words: &[(usize, String)], why: &str) -> Result<Vec<String>, ArgError> {
    let mut names: Vec<String> = Vec::new();
    for (i, w) in words {
        check_name(*i, w, why)?;
        let same = |n: &String| n.replace('-', "_") == w.replace('-', "_");
        if names.iter().any(same) {
            return Err(ArgError::at(*i, format!("names module {w:?} twice")));
        }
        names.push(w.clone());
    }
    Ok(names)
}

fn check_name(at: usize, word: &str, why: &str) -> Result<(), ArgError> {
    if word.contains('=') {
        return Err(ArgError::at(
            at,
            format!("{word:?} is a parameter where a module name is expected ({why})"),
        ));
    }
    check_kernel_module_name(word).map_err(|m| ArgError::at(at, m))
}

/// The `-d` directory as a directory of the image (else `default`): upstream's worker prefix
/// `/tmp` dropped, `..` refused as for `dirName`.
fn image_dir(line: &CommandLine, default: &str) -> Result<String, ArgError> {
    let Some((at, dir)) = &line.dir_name else {
        return Ok(default.to_string());
    };
    let inside = match dir.strip_prefix(UPSTREAM_WORKER_DIR) {
        Some("") => "/",
        Some(rest) if rest.starts_with('/') => rest,
        _ => dir.as_str(),
    };
    crate::validation::check_path_stays_inside(inside)
        .map_err(|m| ArgError::at(*at, format!("-d (--dirname) {m}")))?;
    Ok(inside.to_string())
}

#[cfg(test)]
mod tests;
