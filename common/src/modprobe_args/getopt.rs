//! kmod's `modprobe` option table and its `getopt_long` reading of a command line: options
//! anywhere before `--` (GNU permutation), short options clustered (`-rv`, `-vd/opt`,
//! `-vd /opt`), long options abbreviated to any unambiguous prefix (`--dir=/opt`), `=` or the
//! next argument for a value. Every option of kmod's `tools/modprobe.c` is in the table, so a
//! refusal names the option the user wrote and why it has no place on a node the agent manages.

/// What an accepted option does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    /// `-a`: every non-option argument is a module name.
    All,
    /// `-r`: remove instead of insert.
    Remove,
    /// `--first-time`: fail if a named module is already in the kernel (load) or not in it
    /// (remove).
    FirstTime,
    /// `-d DIR`: the modules' root directory.
    DirName,
    /// Changes only what modprobe prints (`-v`, `-q`, `-s`) or modprobe.d handling the agent
    /// never does anyway (`-i`: install/remove commands, `-b`: blacklist).
    Nothing,
    /// Refused, with the reason.
    Refused(&'static str),
}

/// One option of kmod's modprobe.
#[derive(Debug)]
pub(super) struct Opt {
    pub long: &'static str,
    pub short: Option<char>,
    pub takes_value: bool,
    pub effect: Effect,
}

const QUERY: &str = "it queries and prints, loading nothing";
const FORCE: &str = "kmm-agent never bypasses the kernel's version checks";
const HOLDERS: &str = "it would remove modules using this one, which this Module did not load; an unload of a module in use is retried with backoff";

const fn opt(long: &'static str, short: Option<char>, takes_value: bool, effect: Effect) -> Opt {
    Opt {
        long,
        short,
        takes_value,
        effect,
    }
}

/// kmod's `cmdopts` (tools/modprobe.c), in its order.
pub(super) const OPTIONS: &[Opt] = &[
    opt("all", Some('a'), false, Effect::All),
    opt("remove", Some('r'), false, Effect::Remove),
    opt("remove-dependencies", None, false, Effect::Refused(HOLDERS)),
    opt("remove-holders", None, false, Effect::Refused(HOLDERS)),
    opt(
        "wait",
        Some('w'),
        true,
        Effect::Refused(
            "kmm-agent does not wait for a module's users; an unload of a module in use is retried with backoff",
        ),
    ),
    opt("resolve-alias", None, false, Effect::Refused(QUERY)),
    opt("show-alias", Some('R'), false, Effect::Refused(QUERY)),
    opt("first-time", None, false, Effect::FirstTime),
    opt("ignore-install", Some('i'), false, Effect::Nothing),
    opt("ignore-remove", Some('i'), false, Effect::Nothing),
    opt("use-blacklist", Some('b'), false, Effect::Nothing),
    opt("force", Some('f'), false, Effect::Refused(FORCE)),
    opt("force-modversion", None, false, Effect::Refused(FORCE)),
    opt("force-vermagic", None, false, Effect::Refused(FORCE)),
    opt("show-depends", Some('D'), false, Effect::Refused(QUERY)),
    opt("showconfig", None, false, Effect::Refused(QUERY)),
    opt("show-config", Some('c'), false, Effect::Refused(QUERY)),
    opt("show-modversions", None, false, Effect::Refused(QUERY)),
    opt("dump-modversions", None, false, Effect::Refused(QUERY)),
    opt("show-exports", None, false, Effect::Refused(QUERY)),
    opt(
        "dry-run",
        Some('n'),
        false,
        Effect::Refused("it loads nothing"),
    ),
    opt("show", None, false, Effect::Refused("it loads nothing")),
    opt(
        "config",
        Some('C'),
        true,
        Effect::Refused("kmm-agent reads no modprobe.d configuration"),
    ),
    opt("dirname", Some('d'), true, Effect::DirName),
    opt(
        "set-version",
        Some('S'),
        true,
        Effect::Refused(
            "kmm-agent loads for the running kernel only (kernelMappings choose the image per kernel)",
        ),
    ),
    opt("syslog", Some('s'), false, Effect::Nothing),
    opt("quiet", Some('q'), false, Effect::Nothing),
    opt("verbose", Some('v'), false, Effect::Nothing),
    opt(
        "version",
        Some('V'),
        false,
        Effect::Refused("it prints the version and loads nothing"),
    ),
    opt(
        "help",
        Some('h'),
        false,
        Effect::Refused("it prints the help and loads nothing"),
    ),
];

/// A problem with one argument (`index`) or with the command line as a whole (`None`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ArgError {
    /// Index of the offending argument in the list, if one is to blame.
    pub index: Option<usize>,
    /// What is wrong, naming the flag.
    pub message: String,
}

impl ArgError {
    pub(super) fn at(index: usize, message: impl Into<String>) -> Self {
        Self {
            index: Some(index),
            message: message.into(),
        }
    }

    pub(super) fn whole(message: impl Into<String>) -> Self {
        Self {
            index: None,
            message: message.into(),
        }
    }
}

/// A command line as modprobe reads it, before it is given a meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct CommandLine {
    /// Index of the (last) `-a`.
    pub all: Option<usize>,
    /// Index of the (last) `-r`.
    pub remove: Option<usize>,
    pub first_time: bool,
    /// The last `-d` value, with the index of its option (the last one wins, as in getopt).
    pub dir_name: Option<(usize, String)>,
    /// Non-option arguments with their index, in order.
    pub words: Vec<(usize, String)>,
}

impl CommandLine {
    fn apply(
        &mut self,
        at: usize,
        written: &str,
        opt: &Opt,
        value: Option<String>,
    ) -> Result<(), ArgError> {
        match opt.effect {
            Effect::All => self.all = Some(at),
            Effect::Remove => self.remove = Some(at),
            Effect::FirstTime => self.first_time = true,
            Effect::DirName => self.dir_name = value.map(|v| (at, v)),
            Effect::Nothing => {}
            Effect::Refused(why) => {
                return Err(ArgError::at(
                    at,
                    format!("{} is not supported: {why}", display(written, opt)),
                ));
            }
        }
        Ok(())
    }
}

/// The option as written, and its full name when written otherwise (`-f`, `--forc (--force)`).
fn display(written: &str, opt: &Opt) -> String {
    let long = format!("--{}", opt.long);
    match opt.short {
        _ if written == long => long,
        Some(c) if written == format!("-{c}") => format!("-{c} ({long})"),
        _ => format!("{written} ({long})"),
    }
}

/// Reads `args` as kmod's modprobe does.
///
/// # Errors
/// An unknown, ambiguous or refused option, an option missing its value, or a value given to
/// an option that takes none.
pub(super) fn parse(args: &[String]) -> Result<CommandLine, ArgError> {
    let mut line = CommandLine::default();
    let mut i = 0;
    let mut options_done = false;
    while i < args.len() {
        let at = i;
        let arg = &args[at];
        i += 1;
        if options_done || arg == "-" || !arg.starts_with('-') {
            line.words.push((at, arg.clone()));
        } else if arg == "--" {
            options_done = true;
        } else if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let opt = long_option(at, name)?;
            let written = format!("--{name}");
            let value = match (opt.takes_value, inline) {
                (true, Some(v)) => Some(v),
                (true, None) => Some(next_value(args, &mut i, at, &written)?),
                (false, Some(_)) => {
                    return Err(ArgError::at(
                        at,
                        format!("{} takes no value", display(&written, opt)),
                    ));
                }
                (false, None) => None,
            };
            line.apply(at, &written, opt, value)?;
        } else {
            let cluster: Vec<char> = arg.chars().skip(1).collect();
            for (j, c) in cluster.iter().enumerate() {
                let opt = short_option(at, *c, arg)?;
                let written = format!("-{c}");
                if opt.takes_value {
                    // The rest of the cluster is the value (`-d/opt`), else the next argument.
                    let rest: String = cluster[j + 1..].iter().collect();
                    let value = if rest.is_empty() {
                        next_value(args, &mut i, at, &written)?
                    } else {
                        rest
                    };
                    line.apply(at, &written, opt, Some(value))?;
                    break;
                }
                line.apply(at, &written, opt, None)?;
            }
        }
    }
    Ok(line)
}

fn next_value(
    args: &[String],
    i: &mut usize,
    at: usize,
    written: &str,
) -> Result<String, ArgError> {
    let value = args
        .get(*i)
        .cloned()
        .ok_or_else(|| ArgError::at(at, format!("{written} needs a value")))?;
    *i += 1;
    Ok(value)
}

fn short_option(at: usize, c: char, arg: &str) -> Result<&'static Opt, ArgError> {
    OPTIONS.iter().find(|o| o.short == Some(c)).ok_or_else(|| {
        let within = if arg.len() > 2 {
            format!(" (in {arg:?})")
        } else {
            String::new()
        };
        ArgError::at(at, format!("-{c}{within} is not a modprobe option"))
    })
}

/// An exact long name, else a prefix naming one option (or several with the same effect,
/// as `--ignore` for `--ignore-install`/`--ignore-remove`), as getopt_long abbreviates.
fn long_option(at: usize, name: &str) -> Result<&'static Opt, ArgError> {
    if let Some(exact) = OPTIONS.iter().find(|o| o.long == name) {
        return Ok(exact);
    }
    let candidates: Vec<&'static Opt> = OPTIONS
        .iter()
        .filter(|o| o.long.starts_with(name))
        .collect();
    match candidates.as_slice() {
        [] => Err(ArgError::at(
            at,
            format!("--{name} is not a modprobe option"),
        )),
        [first, rest @ ..]
            if rest
                .iter()
                .all(|o| o.effect == first.effect && o.takes_value == first.takes_value) =>
        {
            Ok(first)
        }
        many => Err(ArgError::at(
            at,
            format!(
                "--{name} is ambiguous: {}",
                many.iter()
                    .map(|o| format!("--{}", o.long))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
