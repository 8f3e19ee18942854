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
        containerImage: "reg/other@sha256:0123"
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
        "\"reg/other@sha256:0123\"",
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
        "rawArgs: {load: [a], unload: [b]}\n",
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
