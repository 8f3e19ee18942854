use super::*;
use crate::test_support::module;

/// A valid Module; each case below edits one thing.
const VALID: &str = r#"
selector: {}
moduleLoader:
  container:
    modprobe:
      moduleName: mod_a
      modulesLoadingOrder: [mod_a, mod_b]
    containerImage: "reg/default:${KERNEL_FULL_VERSION}"
    sign:
      unsignedImage: "reg/unsigned:${KERNEL_FULL_VERSION}"
      keySecret: {name: k}
      certSecret: {name: c}
      filesToSign: ["/opt/lib/modules/${KERNEL_FULL_VERSION}/mod_a.ko"]
    kernelMappings:
      - literal: 6.1.0-56-amd64
      - regexp: '^.+-amd64$'
        containerImage: "reg/other@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
"#;

struct Case {
    name: &'static str,
    ns: &'static str,
    module_name: &'static str,
    from: &'static str,
    to: &'static str,
    /// Field the error must name; `None` = valid.
    field: Option<&'static str>,
    /// Whether the CRD's CEL rules can see this (namespace and RE2 syntax are invisible).
    cel_checks_it: bool,
}

const fn case(
    name: &'static str,
    from: &'static str,
    to: &'static str,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        ns: "ns",
        module_name: "m",
        from,
        to,
        field,
        cel_checks_it: true,
    }
}

const CASES: &[Case] = &[
    case("valid", "", "", None),
    case(
        "both literal and regexp",
        "- literal: 6.1.0-56-amd64",
        "- literal: 6.1.0-56-amd64\n        regexp: x",
        Some("spec.moduleLoader.container.kernelMappings[0]"),
    ),
    case(
        "neither literal nor regexp",
        "- literal: 6.1.0-56-amd64",
        "- containerImage: r:1",
        Some("spec.moduleLoader.container.kernelMappings[0]"),
    ),
    case(
        "no image anywhere",
        "containerImage: \"reg/default:${KERNEL_FULL_VERSION}\"",
        "",
        Some("spec.moduleLoader.container.kernelMappings[0].containerImage"),
    ),
    case(
        "container image without tag",
        "\"reg/default:${KERNEL_FULL_VERSION}\"",
        "reg:5000/default",
        Some("spec.moduleLoader.container.containerImage"),
    ),
    case(
        "mapping image without tag",
        "\"reg/other@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"",
        "reg/other",
        Some("spec.moduleLoader.container.kernelMappings[1].containerImage"),
    ),
    case(
        "loading order not starting with moduleName",
        "[mod_a, mod_b]",
        "[mod_b, mod_a]",
        Some("spec.moduleLoader.container.modprobe.modulesLoadingOrder"),
    ),
    case(
        "loading order with one entry",
        "[mod_a, mod_b]",
        "[mod_a]",
        Some("spec.moduleLoader.container.modprobe.modulesLoadingOrder"),
    ),
    case(
        "loading order with duplicates",
        "[mod_a, mod_b]",
        "[mod_a, mod_b, mod_b]",
        Some("spec.moduleLoader.container.modprobe.modulesLoadingOrder"),
    ),
    case(
        "rawArgs with moduleName",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n      rawArgs: {load: [x]}\n",
        Some("spec.moduleLoader.container.modprobe.rawArgs"),
    ),
    case(
        "rawArgs without moduleName is fine",
        "moduleName: mod_a\n      modulesLoadingOrder: [mod_a, mod_b]\n",
        "rawArgs: {load: [-v, a, p=1], unload: [-rv, a]}\n",
        None,
    ),
    Case {
        cel_checks_it: false,
        ..case(
            "rawArgs flag the agent refuses",
            "moduleName: mod_a\n      modulesLoadingOrder: [mod_a, mod_b]\n",
            "rawArgs: {load: [-v, --force, a], unload: [-r, a]}\n",
            Some("spec.moduleLoader.container.modprobe.rawArgs.load[1]"),
        )
    },
    Case {
        cel_checks_it: false,
        ..case(
            "rawArgs unload that does not remove",
            "moduleName: mod_a\n      modulesLoadingOrder: [mod_a, mod_b]\n",
            "rawArgs: {load: [a], unload: [a]}\n",
            Some("spec.moduleLoader.container.modprobe.rawArgs.unload"),
        )
    },
    Case {
        cel_checks_it: false,
        ..case(
            "args flag the agent refuses",
            "moduleName: mod_a\n",
            "moduleName: mod_a\n      args: {load: [-v], unload: [--wait, \"5\"]}\n",
            Some("spec.moduleLoader.container.modprobe.args.unload[0]"),
        )
    },
    case(
        "args with flags the agent maps",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n      args: {load: [-v, --first-time, -d, /tmp/opt], unload: [--first-time]}\n",
        None,
    ),
    case(
        "only load rawArgs without moduleName",
        "moduleName: mod_a\n      modulesLoadingOrder: [mod_a, mod_b]\n",
        "rawArgs: {load: [a]}\n",
        Some("spec.moduleLoader.container.modprobe.moduleName"),
    ),
    case(
        "sign without files",
        "filesToSign: [\"/opt/lib/modules/${KERNEL_FULL_VERSION}/mod_a.ko\"]",
        "filesToSign: []",
        Some("spec.moduleLoader.container.sign.filesToSign"),
    ),
    case(
        "file to sign outside dirName",
        "\"/opt/lib/modules/${KERNEL_FULL_VERSION}/mod_a.ko\"",
        "/lib/modules/mod_a.ko",
        Some("spec.moduleLoader.container.sign.filesToSign[0]"),
    ),
    case(
        "file to sign under a custom dirName",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n      dirName: /lib/\n",
        Some("spec.moduleLoader.container.sign.filesToSign[0]"),
    ),
    case(
        "mapping sign file outside dirName",
        "- literal: 6.1.0-56-amd64",
        "- literal: 6.1.0-56-amd64\n        sign: {keySecret: {name: k}, certSecret: {name: c}, filesToSign: [/opt2/x.ko]}",
        Some("spec.moduleLoader.container.kernelMappings[0].sign.filesToSign[0]"),
    ),
    Case {
        cel_checks_it: false,
        ..case(
            "sign without build and without unsignedImage",
            "      unsignedImage: \"reg/unsigned:${KERNEL_FULL_VERSION}\"\n",
            "",
            Some("spec.moduleLoader.container.sign.unsignedImage"),
        )
    },
    case(
        "sign after a build needs no unsignedImage",
        "    sign:\n      unsignedImage: \"reg/unsigned:${KERNEL_FULL_VERSION}\"\n",
        "    build: {dockerfileConfigMap: {name: df}}\n    sign:\n",
        None,
    ),
    Case {
        cel_checks_it: false,
        ..case(
            "invalid regexp",
            "'^.+-amd64$'",
            "'['",
            Some("spec.moduleLoader.container.kernelMappings[1].regexp"),
        )
    },
    Case {
        ns: "namespace-of-twenty-c",
        module_name: "name-of-twenty-chars",
        ..case(
            "long names with version",
            "containerImage: \"reg",
            "version: v1\n    containerImage: \"reg",
            Some("metadata.name"),
        )
    },
    Case {
        ns: "namespace-of-twenty-c",
        module_name: "name-of-twenty-chars",
        ..case("long names without version", "", "", None)
    },
    Case {
        ns: "namespace-of-twenty",
        module_name: "name-of-twenty-chars",
        ..case(
            "40 characters with version",
            "containerImage: \"reg",
            "version: v1\n    containerImage: \"reg",
            None,
        )
    },
    case(
        "moduleName with a slash",
        "moduleName: mod_a\n",
        "moduleName: mod/a\n",
        Some("spec.moduleLoader.container.modprobe.moduleName"),
    ),
    case(
        "moduleName with a space",
        "moduleName: mod_a\n      modulesLoadingOrder: [mod_a, mod_b]\n",
        "moduleName: \"mod a\"\n",
        Some("spec.moduleLoader.container.modprobe.moduleName"),
    ),
    case(
        "moduleName with a no-break space",
        "moduleName: mod_a\n      modulesLoadingOrder: [mod_a, mod_b]\n",
        "moduleName: \"mod\u{a0}a\"\n",
        Some("spec.moduleLoader.container.modprobe.moduleName"),
    ),
    case(
        "moduleName with NUL",
        "moduleName: mod_a\n      modulesLoadingOrder: [mod_a, mod_b]\n",
        "moduleName: \"mod\\0a\"\n",
        Some("spec.moduleLoader.container.modprobe.moduleName"),
    ),
    case(
        "moduleName of 56 bytes",
        "moduleName: mod_a\n      modulesLoadingOrder: [mod_a, mod_b]\n",
        "moduleName: m234567890123456789012345678901234567890123456789012345x\n",
        Some("spec.moduleLoader.container.modprobe.moduleName"),
    ),
    case(
        "moduleName of 55 bytes",
        "moduleName: mod_a\n      modulesLoadingOrder: [mod_a, mod_b]\n",
        "moduleName: m23456789012345678901234567890123456789012345678901234x\n",
        None,
    ),
    case(
        "moduleName of 28 two-byte characters",
        "moduleName: mod_a\n      modulesLoadingOrder: [mod_a, mod_b]\n",
        "moduleName: éééééééééééééééééééééééééééé\n",
        Some("spec.moduleLoader.container.modprobe.moduleName"),
    ),
    case(
        "loading order entry with a tab",
        "[mod_a, mod_b]",
        "[mod_a, \"mod\\tb\"]",
        Some("spec.moduleLoader.container.modprobe.modulesLoadingOrder[1]"),
    ),
    case(
        "in-tree module to remove with a slash",
        "    kernelMappings:\n",
        "    inTreeModulesToRemove: [ok, ../evil]\n    kernelMappings:\n",
        Some("spec.moduleLoader.container.inTreeModulesToRemove[1]"),
    ),
    case(
        "deprecated in-tree module of a mapping with a space",
        "- literal: 6.1.0-56-amd64",
        "- literal: 6.1.0-56-amd64\n        inTreeModuleToRemove: \"a b\"",
        Some("spec.moduleLoader.container.kernelMappings[0].inTreeModuleToRemove"),
    ),
    case(
        "dirName leaving the image",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n      dirName: /opt/../etc\n",
        Some("spec.moduleLoader.container.modprobe.dirName"),
    ),
    case(
        "firmwarePath leaving the image",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n      firmwarePath: ../../lib/firmware\n",
        Some("spec.moduleLoader.container.modprobe.firmwarePath"),
    ),
    case(
        "firmwarePath with dots in names is fine",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n      firmwarePath: /firmware/..hidden/v1..2\n",
        None,
    ),
    case(
        "parameter with a newline",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n      parameters: [a=1, \"b=2\\nc=3\"]\n",
        Some("spec.moduleLoader.container.modprobe.parameters[1]"),
    ),
    case(
        "parameter with NUL",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n      parameters: [\"a=1\\0\"]\n",
        Some("spec.moduleLoader.container.modprobe.parameters[0]"),
    ),
    case(
        "unknown imagePullPolicy",
        "    kernelMappings:\n",
        "    imagePullPolicy: Sometimes\n    kernelMappings:\n",
        Some("spec.moduleLoader.container.imagePullPolicy"),
    ),
    case(
        "known imagePullPolicy",
        "    kernelMappings:\n",
        "    imagePullPolicy: Never\n    kernelMappings:\n",
        None,
    ),
    case(
        "unknown imagePullPolicy of the device plugin init container",
        "selector: {}\n",
        "selector: {}\ndevicePlugin:\n  container: {image: \"reg/dp:1\"}\n  initContainer: {image: \"reg/init:1\", imagePullPolicy: always}\n",
        Some("spec.devicePlugin.initContainer.imagePullPolicy"),
    ),
    case(
        "short digest",
        "@sha256:0123456789abcdef",
        "@sha256:0123",
        Some("spec.moduleLoader.container.kernelMappings[1].containerImage"),
    ),
    case(
        "upper-case digest",
        "@sha256:0123456789abcdef",
        "@sha256:0123456789ABCDEF",
        Some("spec.moduleLoader.container.kernelMappings[1].containerImage"),
    ),
    case(
        "tag and digest",
        "reg/other@sha256:",
        "reg/other:1.0@sha256:",
        None,
    ),
    case(
        "digest of another algorithm",
        "\"reg/default:${KERNEL_FULL_VERSION}\"",
        "\"reg/default@sha512:abcd\"",
        Some("spec.moduleLoader.container.containerImage"),
    ),
    case(
        "version that cannot be a label value",
        "containerImage: \"reg",
        "version: \"1.0 beta\"\n    containerImage: \"reg",
        Some("spec.moduleLoader.container.version"),
    ),
    Case {
        module_name: "m234567890123456789012345678901234567890123456789012345x",
        ..case("name of 56 characters", "", "", Some("metadata.name"))
    },
    Case {
        ns: "n",
        module_name: "m23456789012345678901234567890123456789012345678901234x",
        ..case(
            "name of 55 characters in a 1-character namespace",
            "",
            "",
            None,
        )
    },
    Case {
        ns: "namespace-of-twenty-c",
        module_name: "name-of-forty-characters-0123456789-abcd",
        cel_checks_it: false,
        ..case(
            "ready label too long without version",
            "",
            "",
            Some("metadata.name"),
        )
    },
    Case {
        ns: "namespace-of-twenty-c",
        module_name: "name-of-twenty-two-chr",
        cel_checks_it: false,
        ..case(
            "device plugin label too long",
            "selector: {}\n",
            "selector: {}\ndevicePlugin: {container: {image: \"reg/dp:1\"}}\n",
            Some("metadata.name"),
        )
    },
    Case {
        ns: "namespace-of-twenty-c",
        module_name: "name-of-twenty-one-c",
        ..case(
            "device plugin label of 62 characters",
            "selector: {}\n",
            "selector: {}\ndevicePlugin: {container: {image: \"reg/dp:1\"}}\n",
            None,
        )
    },
    Case {
        module_name: "name-of-forty-two-characters-0123456789-ab",
        ..case(
            "device plugin label with a 42-character name",
            "selector: {}\n",
            "selector: {}\ndevicePlugin: {container: {image: \"reg/dp:1\"}}\n",
            Some("metadata.name"),
        )
    },
    Case {
        ns: "namespace-of-twenty-c",
        module_name: "name-of-thirty-four-characters-012",
        cel_checks_it: false,
        ..case(
            "DRA label too long",
            "selector: {}\n",
            "selector: {}\ndra: {driverName: d.example.com, container: {image: \"reg/dra:1\"}}\n",
            Some("metadata.name"),
        )
    },
    case(
        "DRA with device classes and a hostPath under /var",
        "selector: {}\n",
        "selector: {}\ndra: {driverName: gpu.example.com, container: {image: \"reg/dra:1\"}, deviceClasses: [{name: gpu.example.com}, {name: gpu-small.example.com}], volumes: [{name: l, hostPath: {path: /var/lib/x}}]}\n",
        None,
    ),
    case(
        "DRA and device plugin together",
        "selector: {}\n",
        "selector: {}\ndevicePlugin: {container: {image: \"reg/dp:1\"}}\ndra: {driverName: d.example.com, container: {image: \"reg/dra:1\"}}\n",
        Some("spec"),
    ),
    case(
        "DRA driver name not a DNS subdomain",
        "selector: {}\n",
        "selector: {}\ndra: {driverName: GPU_driver, container: {image: \"reg/dra:1\"}}\n",
        Some("spec.dra.driverName"),
    ),
    Case {
        cel_checks_it: false,
        ..case(
            "DRA device class listed twice",
            "selector: {}\n",
            "selector: {}\ndra: {driverName: d.example.com, container: {image: \"reg/dra:1\"}, deviceClasses: [{name: a.example.com}, {name: a.example.com}]}\n",
            Some("spec.dra.deviceClasses[1].name"),
        )
    },
    Case {
        cel_checks_it: false,
        ..case(
            "DRA hostPath outside /dev, /sys, /var, /opt and /run",
            "selector: {}\n",
            "selector: {}\ndra: {driverName: d.example.com, container: {image: \"reg/dra:1\"}, volumes: [{name: e, hostPath: {path: /var/../etc}}]}\n",
            Some("spec.dra.volumes[0]"),
        )
    },
    Case {
        cel_checks_it: false,
        ..case(
            "device plugin hostPath outside the allowed prefixes",
            "selector: {}\n",
            "selector: {}\ndevicePlugin: {container: {image: \"reg/dp:1\"}, volumes: [{name: r, hostPath: {path: /}}]}\n",
            Some("spec.devicePlugin.volumes[0]"),
        )
    },
];

fn build(case: &Case) -> Module {
    let spec = if case.from.is_empty() {
        VALID.to_string()
    } else {
        assert!(
            VALID.contains(case.from),
            "{}: {:?} not in VALID",
            case.name,
            case.from
        );
        VALID.replacen(case.from, case.to, 1)
    };
    module(case.ns, case.module_name, &spec)
}

#[test]
fn webhook_rules() {
    for case in CASES {
        let result = validate_module(&build(case));
        match case.field {
            None => assert_eq!(result, Ok(()), "{}", case.name),
            Some(field) => {
                let errors = result.expect_err(case.name);
                assert!(
                    errors.iter().any(|e| e.field == field),
                    "{}: want an error on {field}, got {errors:?}",
                    case.name
                );
            }
        }
    }
}

/// The CRD's CEL rules (evaluated client-side by kube's CEL engine) agree with the webhook.
#[test]
fn cel_rules_agree_with_the_webhook() {
    for case in CASES.iter().filter(|c| c.cel_checks_it) {
        let module = build(case);
        let cel = module.validate_cel();
        let rust = validate_module(&module);
        // The namespace is invisible to CEL: it only checks name <= 39.
        if case.name.starts_with("long names with") {
            continue;
        }
        assert_eq!(
            cel.is_ok(),
            rust.is_ok(),
            "{}: cel {cel:?} rust {rust:?}",
            case.name
        );
    }
}

#[test]
fn version_cannot_change_to_or_from_empty() {
    let with = |version: &str| {
        let spec = VALID.replacen(
            "containerImage: \"reg",
            &format!("version: \"{version}\"\n    containerImage: \"reg"),
            1,
        );
        module("ns", "m", &spec)
    };
    let without = module("ns", "m", VALID);
    let field = "spec.moduleLoader.container.version";
    let cases = [
        (&with("1"), &with("2"), true),
        (&without, &without, true),
        (&with("1"), &without, false),
        (&without, &with("1"), false),
    ];
    for (old, new, ok) in cases {
        let result = validate_module_update(old, new);
        assert_eq!(result.is_ok(), ok, "{result:?}");
        if !ok {
            assert!(result.expect_err("err").iter().any(|e| e.field == field));
        }
        assert_eq!(
            new.validate_cel_update(old).is_ok(),
            ok,
            "CEL transition rule"
        );
    }
}

#[test]
fn errors_display_field_and_message() {
    let m = build(&CASES[1]);
    let errors = validate_module(&m).expect_err("invalid");
    assert_eq!(
        errors[0].to_string(),
        "spec.moduleLoader.container.kernelMappings[0]: regexp and literal are mutually exclusive properties"
    );
}

/// Every Module under `examples/` parses and passes the webhook rules and the CEL rules.
#[test]
fn examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        for doc in text.split("\n---\n") {
            let mut m: Module =
                serde_yaml::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            m.metadata.namespace = Some("ns".into());
            assert_eq!(validate_module(&m), Ok(()), "{}", path.display());
            assert!(
                m.validate_cel().is_ok(),
                "{}: {:?}",
                path.display(),
                m.validate_cel()
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} example Modules found");
}

#[test]
fn kernel_module_names_the_agent_refuses() {
    let cases = [
        ("null_blk", true),
        ("my-mod", true),
        (&"m".repeat(55), true),
        (&"m".repeat(56), false),
        ("", false),
        ("a/b", false),
        ("a b", false),
        ("a\tb", false),
        ("a\u{0b}b", false),
        ("a\u{85}b", false),
        ("a\u{3000}b", false),
        ("a\0b", false),
    ];
    for (name, ok) in cases {
        assert_eq!(check_kernel_module_name(name).is_ok(), ok, "{name:?}");
    }
}

#[test]
fn paths_parameters_policies_and_digests() {
    for (path, ok) in [
        ("/opt", true),
        ("", true),
        ("/lib/firmware/v1..2", true),
        ("..", false),
        ("/opt/..", false),
        ("a/../b", false),
        ("../a", false),
    ] {
        assert_eq!(check_path_stays_inside(path).is_ok(), ok, "{path:?}");
    }
    for (p, ok) in [
        ("a=1", true),
        ("a=1 2", true),
        ("a=1\n", false),
        ("a=\0", false),
    ] {
        assert_eq!(check_module_parameter(p).is_ok(), ok, "{p:?}");
    }
    for (p, ok) in [
        ("", true),
        ("Always", true),
        ("IfNotPresent", true),
        ("Never", true),
        ("always", false),
        ("Sometimes", false),
    ] {
        assert_eq!(check_pull_policy(p).is_ok(), ok, "{p:?}");
    }
    let hex = "0123456789abcdef".repeat(4);
    for (image, ok) in [
        ("reg/x:1".to_string(), true),
        (format!("reg/x@sha256:{hex}"), true),
        (format!("reg:5000/x:1@sha256:{hex}"), true),
        ("reg/x@sha256:0123".to_string(), false),
        (format!("reg/x@sha256:{}", hex.to_uppercase()), false),
        (format!("reg/x@sha256:{hex}0"), false),
        (format!("reg/x@sha512:{hex}{hex}"), false),
        (format!("reg/x@@sha256:{hex}"), false),
    ] {
        assert_eq!(check_image_digest(&image).is_ok(), ok, "{image}");
    }
}

#[test]
fn label_keys_and_values() {
    let ok = [
        "kmm.node.kubernetes.io/ns.m.ready",
        "plain",
        &format!("kmm.node.kubernetes.io/{}", "a".repeat(63)),
    ];
    for key in ok {
        assert_eq!(check_label_key(key), Ok(()), "{key}");
    }
    let bad = [
        format!("kmm.node.kubernetes.io/{}", "a".repeat(64)),
        "kmm.node.kubernetes.io/-a".to_string(),
        "kmm.node.kubernetes.io/a.".to_string(),
        "Upper.Case/a".to_string(),
        "kmm.node.kubernetes.io/".to_string(),
    ];
    for key in bad {
        assert!(check_label_key(&key).is_err(), "{key}");
    }
    for (value, ok) in [
        ("", true),
        ("v1.2_3-a", true),
        ("1.0 beta", false),
        ("-a", false),
    ] {
        assert_eq!(check_label_value(value).is_ok(), ok, "{value:?}");
    }
    assert!(check_label_value(&"a".repeat(64)).is_err());
}

/// The label-key error names the fields a user can change, and the version field when only
/// the version's labels are too long.
#[test]
fn label_key_errors_name_the_fields() {
    let ns = "n".repeat(10);
    let name = "m".repeat(30);
    // With a 40-character name `.ready` fits (10+1+40+6 = 57), `.version.ready` (65) and
    // `version-module.` (66) do not; with 30 characters all fit.
    let spec = VALID.replacen(
        "containerImage: \"reg",
        "version: v1\n    containerImage: \"reg",
        1,
    );
    let long = module(&ns, &"m".repeat(40), &spec);
    let errors = validate_module(&long).expect_err("too long");
    let e = errors
        .iter()
        .find(|e| e.field == "metadata.name" && e.message.contains("node labels"))
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert!(
        e.message.contains("metadata.namespace")
            && e.message.contains("spec.moduleLoader.container.version")
            && e.message
                .contains(&format!("kmm.node.kubernetes.io/version-module.{ns}.")),
        "{e}"
    );
    let fits = module(&ns, &name, &spec);
    assert!(
        validate_module(&fits).is_ok(),
        "{:?}",
        validate_module(&fits)
    );
    let keys: Vec<String> = node_label_keys(&fits).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            format!("kmm.node.kubernetes.io/{ns}.{name}.ready"),
            format!("kmm.node.kubernetes.io/{ns}.{name}.version.ready"),
            format!("kmm.node.kubernetes.io/version-module.{ns}.{name}"),
        ]
    );
}

/// What upstream's webhook accepts (namespace + name <= 40) has node labels that can exist, so
/// the label-key rule never refuses a Module upstream admits.
#[test]
fn every_name_upstream_accepts_has_label_keys_that_exist() {
    // A Module has a device plugin or a DRA driver, never both: check each.
    for plugin in [
        "devicePlugin: {container: {image: \"reg/dp:1\"}}",
        "dra: {driverName: d.example.com, container: {image: \"reg/dra:1\"}}",
    ] {
        let with_plugin =
            VALID.replacen("selector: {}\n", &format!("selector: {{}}\n{plugin}\n"), 1);
        let spec = with_plugin.replacen(
            "containerImage: \"reg",
            "version: v1\n    containerImage: \"reg",
            1,
        );
        for ns_len in 1..40 {
            let ns = "n".repeat(ns_len);
            let name = "m".repeat(40 - ns_len);
            let m = module(&ns, &name, &spec);
            for (key, _) in node_label_keys(&m) {
                assert_eq!(check_label_key(&key), Ok(()), "{key}");
            }
            assert!(
                validate_module(&m).is_ok(),
                "{ns}/{name}: {:?}",
                validate_module(&m)
            );
        }
    }
}
