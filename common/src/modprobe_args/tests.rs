#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

use super::*;
use crate::ModprobeArgs;

fn spec(yaml: &str) -> ModprobeSpec {
    serde_yaml::from_str(yaml).unwrap()
}

fn raw(load: &[&str], unload: &[&str]) -> ModprobeSpec {
    ModprobeSpec {
        raw_args: Some(ModprobeArgs {
            load: load.iter().map(|s| s.to_string()).collect(),
            unload: unload.iter().map(|s| s.to_string()).collect(),
        }),
        ..ModprobeSpec::default()
    }
}

fn load(module_name: &str, parameters: &[&str], order: &[&str], dir: &str) -> LoadCommand {
    LoadCommand {
        module_name: module_name.into(),
        parameters: parameters.iter().map(|s| s.to_string()).collect(),
        modules_loading_order: order.iter().map(|s| s.to_string()).collect(),
        dir_name: dir.into(),
        first_time: false,
    }
}

/// The one error of `spec`: its field and a fragment of its message.
fn refused(spec: &ModprobeSpec) -> (String, String) {
    let errors = resolve(spec).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    (errors[0].field.clone(), errors[0].message.clone())
}

const UNLOAD: &[&str] = &["-r", "brd"];

#[test]
fn raw_load_command_lines_map_to_modules_parameters_and_directory() {
    let first_time = |mut l: LoadCommand| {
        l.first_time = true;
        l
    };
    let cases: &[(&[&str], LoadCommand)] = &[
        (&["brd"], load("brd", &[], &[], "/opt")),
        (
            &["-v", "brd", "rd_nr=2", "rd_size=4096"],
            load("brd", &["rd_nr=2", "rd_size=4096"], &[], "/opt"),
        ),
        // Options anywhere before `--`, as GNU getopt permutes them.
        (
            &["brd", "rd_nr=2", "-q"],
            load("brd", &["rd_nr=2"], &[], "/opt"),
        ),
        // A bare word after the module is a (boolean) parameter.
        (&["brd", "debug"], load("brd", &["debug"], &[], "/opt")),
        (
            &["-d", "/drivers", "brd"],
            load("brd", &[], &[], "/drivers"),
        ),
        (&["-d/drivers", "brd"], load("brd", &[], &[], "/drivers")),
        (
            &["-vd", "/drivers", "brd"],
            load("brd", &[], &[], "/drivers"),
        ),
        (&["-vd/drivers", "brd"], load("brd", &[], &[], "/drivers")),
        (
            &["--dirname=/drivers", "brd"],
            load("brd", &[], &[], "/drivers"),
        ),
        (
            &["--dirname", "/drivers", "brd"],
            load("brd", &[], &[], "/drivers"),
        ),
        // getopt_long takes unambiguous abbreviations.
        (
            &["--dir=/drivers", "--verb", "brd"],
            load("brd", &[], &[], "/drivers"),
        ),
        // The last -d wins.
        (
            &["-d", "/a", "-d", "/b", "brd"],
            load("brd", &[], &[], "/b"),
        ),
        // Upstream's worker copies dirName under /tmp: its Modules write -d /tmp/opt.
        (&["-d", "/tmp/opt", "brd"], load("brd", &[], &[], "/opt")),
        (&["-d", "/tmp", "brd"], load("brd", &[], &[], "/")),
        (&["-d", "/tmpfoo", "brd"], load("brd", &[], &[], "/tmpfoo")),
        // -a: every argument a module, loaded in the order given.
        (&["-a", "brd"], load("brd", &[], &[], "/opt")),
        (
            &["-va", "null_blk", "brd", "loop"],
            load("loop", &[], &["loop", "brd", "null_blk"], "/opt"),
        ),
        (
            &["--all", "null_blk", "brd"],
            load("brd", &[], &["brd", "null_blk"], "/opt"),
        ),
        (
            &["--first-time", "brd", "rd_nr=1"],
            first_time(load("brd", &["rd_nr=1"], &[], "/opt")),
        ),
        // Accepted, changing nothing of what is loaded.
        (
            &[
                "-s",
                "-i",
                "-b",
                "--ignore-install",
                "--use-blacklist",
                "--syslog",
                "--quiet",
                "brd",
            ],
            load("brd", &[], &[], "/opt"),
        ),
        (&["-vvvq", "brd"], load("brd", &[], &[], "/opt")),
        // `--` ends the options.
        (&["--", "brd", "-x=1"], load("brd", &["-x=1"], &[], "/opt")),
    ];
    for (args, want) in cases {
        let got = resolve(&raw(args, UNLOAD));
        assert_eq!(got.map(|c| c.load).as_ref(), Ok(want), "{args:?}");
    }
}

#[test]
fn raw_unload_command_lines_need_remove_and_module_names() {
    let ok: &[(&[&str], bool)] = &[
        (&["-r", "brd"], false),
        (&["-rv", "brd"], false),
        (&["-vr", "brd", "null_blk"], false),
        (&["--remove", "-a", "brd", "null_blk"], false),
        (&["-r", "--first-time", "brd"], true),
        (&["brd", "-r"], false),
        (&["-rd", "/tmp/opt", "brd"], false),
    ];
    for (args, first_time) in ok {
        let got = resolve(&raw(&["brd"], args)).map(|c| c.unload);
        assert_eq!(
            got,
            Ok(UnloadCommand {
                first_time: *first_time
            }),
            "{args:?}"
        );
    }
    let field = "spec.moduleLoader.container.modprobe.rawArgs.unload";
    let bad: &[(&[&str], &str, &str)] = &[
        (&["brd"], field, "has no -r/--remove"),
        (&["-v"], field, "has no -r/--remove"),
        (&["-r"], field, "names no module to remove"),
        (
            &["-r", "brd", "rd_nr=2"],
            &format!("{field}[2]"),
            "is a parameter",
        ),
        (&["-r", "brd", "brd"], &format!("{field}[2]"), "twice"),
        (
            &["-rf", "brd"],
            &format!("{field}[0]"),
            "-f (--force) is not supported",
        ),
        (
            &["-r", "--remove-holders", "brd"],
            &format!("{field}[1]"),
            "--remove-holders",
        ),
        (
            &["-r", "-w", "100", "brd"],
            &format!("{field}[1]"),
            "-w (--wait)",
        ),
        (
            &["-r", "-d", "/opt/../etc", "brd"],
            &format!("{field}[1]"),
            "'..'",
        ),
    ];
    for (args, want_field, message) in bad {
        let (f, m) = refused(&raw(&["brd"], args));
        assert_eq!(
            (&f, m.contains(message)),
            (&want_field.to_string(), true),
            "{args:?}: {f}: {m}"
        );
    }
}

#[test]
fn refused_flags_are_named_with_their_argument() {
    let field = "spec.moduleLoader.container.modprobe.rawArgs.load";
    let cases: &[(&[&str], usize, &str)] = &[
        (
            &["-f", "brd"],
            0,
            "-f (--force) is not supported: kmm-agent never bypasses",
        ),
        (&["brd", "--force"], 1, "--force is not supported"),
        (&["-vf", "brd"], 0, "-f (--force)"),
        (
            &["--force-vermagic", "brd"],
            0,
            "--force-vermagic is not supported",
        ),
        (&["--force-modversion", "brd"], 0, "--force-modversion"),
        (&["--forc", "brd"], 0, "--forc (--force) is not supported"),
        (
            &["-n", "brd"],
            0,
            "-n (--dry-run) is not supported: it loads nothing",
        ),
        (&["--dry-run", "brd"], 0, "--dry-run"),
        (&["--show", "brd"], 0, "--show is not supported"),
        (
            &["-C", "/etc/x.conf", "brd"],
            0,
            "-C (--config) is not supported",
        ),
        (&["--config=/etc/x.conf", "brd"], 0, "--config"),
        (&["-S", "6.1.0", "brd"], 0, "-S (--set-version)"),
        (&["-D", "brd"], 0, "-D (--show-depends)"),
        (&["--show-depends", "brd"], 0, "--show-depends"),
        (&["-R", "brd"], 0, "-R (--show-alias)"),
        (&["-c"], 0, "-c (--show-config)"),
        (&["--show-exports", "brd"], 0, "--show-exports"),
        (&["-V"], 0, "-V (--version)"),
        (&["-h"], 0, "-h (--help)"),
        (&["-v", "-x", "brd"], 1, "-x is not a modprobe option"),
        (
            &["-vx", "brd"],
            0,
            "-x (in \"-vx\") is not a modprobe option",
        ),
        (
            &["--frobnicate", "brd"],
            0,
            "--frobnicate is not a modprobe option",
        ),
        (
            &["--rem", "brd"],
            0,
            "--rem is ambiguous: --remove, --remove-dependencies, --remove-holders",
        ),
        (&["--verbose=2", "brd"], 0, "--verbose takes no value"),
        (&["brd", "-d"], 1, "-d needs a value"),
        (
            &["-d", "/opt/../../etc", "brd"],
            0,
            "-d (--dirname) \"/opt/../../etc\" contains a '..'",
        ),
        (&["--dirname=../x", "brd"], 0, "'..'"),
        (
            &["-r", "brd"],
            0,
            "-r (--remove) removes instead of loading",
        ),
        (
            &["-a", "brd", "rd_nr=2"],
            2,
            "is a parameter where a module name is expected (with -a",
        ),
        (&["-a", "brd", "brd"], 2, "names module \"brd\" twice"),
        (&["-a", "my-mod", "my_mod"], 2, "twice"),
        (&["lib/brd.ko"], 0, "contains '/'"),
        (
            &["rd_nr=2", "brd"],
            0,
            "is a parameter where a module name is expected",
        ),
        (&["brd", "a=\n"], 1, "newline"),
    ];
    for (args, index, message) in cases {
        let (f, m) = refused(&raw(args, UNLOAD));
        assert_eq!(f, format!("{field}[{index}]"), "{args:?}: {m}");
        assert!(m.contains(message), "{args:?}: {m}");
    }
    let (f, m) = refused(&raw(&["-v"], UNLOAD));
    assert_eq!((f.as_str(), m.as_str()), (field, "names no module to load"));
    // A load only in rawArgs.unload: the load side names nothing.
    let (f, _) = refused(&raw(&[], UNLOAD));
    assert_eq!(f, field);
    // Both sides wrong: both reported.
    let errors = resolve(&raw(&["-f", "brd"], &["brd"])).unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn args_are_flags_before_module_name() {
    let base = "{moduleName: brd, parameters: [rd_nr=3], dirName: /drivers";
    let with = |args: &str| spec(&format!("{base}, args: {args}}}"));
    let c = resolve(&spec(&format!("{base}}}"))).unwrap();
    assert_eq!(c.load, load("brd", &["rd_nr=3"], &[], "/drivers"));
    assert_eq!(c.unload, UnloadCommand::default());

    let c = resolve(&with("{load: [-v, --first-time], unload: [--first-time]}")).unwrap();
    assert!(c.load.first_time && c.unload.first_time);
    assert_eq!(c.load.parameters, ["rd_nr=3"]);
    // -d in args comes after the worker's own -d: it wins.
    let c = resolve(&with("{load: [-d, /tmp/other]}")).unwrap();
    assert_eq!(c.load.dir_name, "/other");
    // -r in args.unload is what the worker writes anyway.
    assert!(resolve(&with("{unload: [-rv]}")).is_ok());
    let c = resolve(&spec(
        "{moduleName: a, modulesLoadingOrder: [a, b], args: {load: [-a]}}",
    ))
    .unwrap();
    assert_eq!(c.load, load("a", &[], &["a", "b"], "/opt"));

    let field = "spec.moduleLoader.container.modprobe.args";
    let cases = [
        ("{load: [-v, extra]}", "load[1]", "\"extra\" is not a flag"),
        ("{unload: [brd]}", "unload[0]", "is not a flag"),
        (
            "{load: [-r]}",
            "load[0]",
            "-r (--remove) removes instead of loading",
        ),
        ("{load: [--force]}", "load[0]", "--force is not supported"),
        ("{unload: [-f]}", "unload[0]", "-f (--force)"),
        (
            "{load: [-a]}",
            "load[0]",
            "modprobe.parameters would be loaded as modules",
        ),
        ("{load: [-d, /x/../..]}", "load[0]", "'..'"),
    ];
    for (args, at, message) in cases {
        let (f, m) = refused(&with(args));
        assert_eq!(f, format!("{field}.{at}"), "{args}: {m}");
        assert!(m.contains(message), "{args}: {m}");
    }
}

#[test]
fn raw_args_replace_the_other_fields_as_upstream_ignores_them() {
    // rawArgs wins over moduleName (admission refuses both; upstream's worker reads rawArgs).
    let mut s = raw(&["-a", "x", "y"], &["-r", "x", "y"]);
    s.module_name = "brd".into();
    s.parameters = vec!["rd_nr=1".into()];
    s.args = Some(ModprobeArgs {
        load: vec!["--force".into()],
        unload: vec![],
    });
    assert_eq!(
        resolve(&s).unwrap().load,
        load("y", &[], &["y", "x"], "/opt")
    );
    // Empty rawArgs are no rawArgs.
    let mut s = raw(&[], &[]);
    s.module_name = "brd".into();
    assert_eq!(resolve(&s).unwrap().load, load("brd", &[], &[], "/opt"));
}
