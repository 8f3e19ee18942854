use super::*;
use crate::test_support::module;

const BASE: &str = r#"
selector: {}
moduleLoader:
  container:
    modprobe: {moduleName: brd}
    kernelMappings:
      - literal: 6.1.0-56-amd64
        containerImage: reg/literal:${KERNEL_FULL_VERSION}
      - regexp: 'amd64$'
        containerImage: reg/${MOD_NAMESPACE}/${MOD_NAME}:$KERNEL_FULL_VERSION
      - regexp: '^.+$'
        containerImage: reg/fallback:1
"#;

#[test]
fn first_matching_mapping_wins_in_order() {
    let m = module("ns", "brd", BASE);
    let cases = [
        ("6.1.0-56-amd64", 0, "reg/literal:6.1.0-56-amd64"),
        ("6.1.0-57-amd64", 1, "reg/ns/brd:6.1.0-57-amd64"),
        ("6.1.0-57-arm64", 2, "reg/fallback:1"),
    ];
    for (kernel, index, image) in cases {
        let r = resolve_mapping(&m, kernel).expect(kernel);
        assert_eq!(
            (r.mapping_index, r.container_image.as_str()),
            (index, image),
            "{kernel}"
        );
        assert_eq!(r.kernel_version, kernel);
    }
}

#[test]
fn literal_is_exact_and_regexp_is_an_unanchored_search() {
    let literal = KernelMapping {
        literal: "6.1".into(),
        ..Default::default()
    };
    let regexp = KernelMapping {
        regexp: "1\\.0".into(),
        ..Default::default()
    };
    let anchored = KernelMapping {
        regexp: "^6\\.1$".into(),
        ..Default::default()
    };
    let neither = KernelMapping::default();
    let cases = [
        (&literal, "6.1", true),
        (&literal, "6.1.0", false),
        (&regexp, "6.1.0-56-amd64", true),
        (&regexp, "6.2.5", false),
        (&anchored, "6.1", true),
        (&anchored, "6.1.0", false),
        (&neither, "6.1", false),
    ];
    for (mapping, kernel, want) in cases {
        assert_eq!(
            kernel_matches(mapping, 0, kernel),
            Ok(want),
            "{mapping:?} {kernel}"
        );
    }
}

#[test]
fn no_match_names_the_kernel() {
    let m = module(
        "ns",
        "brd",
        r#"
selector: {}
moduleLoader:
  container:
    modprobe: {moduleName: brd}
    kernelMappings: [{literal: "5.0", containerImage: "r:1"}]
"#,
    );
    let err = resolve_mapping(&m, "6.1.0-56-amd64").expect_err("should fail");
    assert_eq!(
        err.to_string(),
        "kernel 6.1.0-56-amd64 matches no kernelMapping"
    );
}

#[test]
fn invalid_regexp_is_an_error_not_a_panic() {
    let m = module(
        "ns",
        "brd",
        r#"
selector: {}
moduleLoader:
  container:
    modprobe: {moduleName: brd}
    kernelMappings: [{regexp: "[", containerImage: "r:1"}]
"#,
    );
    // Twice: the second answer comes from the compiled-pattern cache.
    for _ in 0..2 {
        let err = resolve_mapping(&m, "6.1").expect_err("should fail");
        assert!(
            matches!(err, Ineligible::InvalidRegexp { index: 0, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("invalid regexp '[' in kernelMappings[0]: "),
            "{err}"
        );
    }
}

#[test]
fn compiled_patterns_stay_correct_past_the_cache_bound() {
    // More distinct patterns than the cache holds: it starts over, answers
    // stay right (each pattern matches only its own kernel).
    for i in 0..(COMPILED_MAX + 10) {
        let re = compiled(&format!("^6\\.1\\.0-{i}-amd64$")).expect("compiles");
        assert!(re.is_match(&format!("6.1.0-{i}-amd64")));
        assert!(!re.is_match(&format!("6.1.0-{}-amd64", i + 1)));
    }
    assert_eq!(
        compiled("(").expect_err("does not compile"),
        compiled("(").expect_err("still does not compile")
    );
}

#[test]
fn missing_module_loader_and_missing_image_are_reported() {
    let m = module("ns", "brd", "selector: {}");
    assert_eq!(resolve_mapping(&m, "6.1"), Err(Ineligible::NoModuleLoader));
    let m = module(
        "ns",
        "brd",
        r#"
selector: {}
moduleLoader:
  container:
    modprobe: {moduleName: brd}
    kernelMappings: [{literal: "6.1"}]
"#,
    );
    assert_eq!(
        resolve_mapping(&m, "6.1"),
        Err(Ineligible::MissingImage {
            index: 0,
            kernel: "6.1".into()
        })
    );
}

const DEFAULTS: &str = r#"
selector: {}
moduleLoader:
  container:
    version: "2"
    imagePullPolicy: Always
    containerImage: reg/default:${KERNEL_FULL_VERSION}
    registryTLS: {insecure: true}
    inTreeModuleToRemove: old_a
    inTreeModulesToRemove: [old_b, old_a]
    build:
      dockerfileConfigMap: {name: container-dockerfile}
    sign:
      keySecret: {name: k}
      certSecret: {name: c}
      filesToSign: ['/opt/lib/modules/${KERNEL_FULL_VERSION}/container.ko']
    modprobe: {moduleName: brd, parameters: [rd_nr=3]}
    kernelMappings:
      - literal: plain
      - literal: override
        containerImage: reg/override:$MOD_NAME
        registryTLS: {insecureSkipTLSVerify: true}
        inTreeModuleToRemove: map_a
        build:
          dockerfileConfigMap: {name: mapping-dockerfile}
        sign:
          keySecret: {name: k2}
          certSecret: {name: c2}
          filesToSign: [/opt/$MOD_NAMESPACE/mapping.ko]
"#;

#[test]
fn container_fields_are_defaults_for_mappings() {
    let m = module("ns", "brd", DEFAULTS);
    let r = resolve_mapping(&m, "plain").expect("plain");
    assert_eq!(r.container_image, "reg/default:plain");
    assert!(r.registry_tls.insecure && !r.registry_tls.insecure_skip_tls_verify);
    assert_eq!(r.in_tree_modules_to_remove, ["old_b", "old_a"]);
    assert_eq!(
        r.build
            .as_ref()
            .map(|b| b.dockerfile_config_map.name.as_str()),
        Some("container-dockerfile")
    );
    assert_eq!(
        r.sign.as_ref().map(|s| s.files_to_sign.clone()),
        Some(vec!["/opt/lib/modules/plain/container.ko".to_string()])
    );
    assert_eq!(r.version.as_deref(), Some("2"));
    assert_eq!(r.image_pull_policy, "Always");
    assert_eq!(r.modprobe.module_name, "brd");
    assert_eq!(r.modprobe.dir_name, "/opt");
}

#[test]
fn mapping_fields_override_container_defaults() {
    let m = module("ns", "brd", DEFAULTS);
    let r = resolve_mapping(&m, "override").expect("override");
    assert_eq!(r.container_image, "reg/override:brd");
    assert!(!r.registry_tls.insecure && r.registry_tls.insecure_skip_tls_verify);
    assert_eq!(r.in_tree_modules_to_remove, ["map_a"]);
    assert_eq!(
        r.build
            .as_ref()
            .map(|b| b.dockerfile_config_map.name.as_str()),
        Some("mapping-dockerfile")
    );
    let sign = r.sign.expect("sign");
    assert_eq!(sign.key_secret.name, "k2");
    assert_eq!(sign.files_to_sign, ["/opt/ns/mapping.ko"]);
}

#[test]
fn deprecated_singular_merges_without_duplicates() {
    let cases: [(&[&str], &str, &[&str]); 5] = [
        (&[], "", &[]),
        (&[], "a", &["a"]),
        (&["a", "b"], "", &["a", "b"]),
        (&["a", "b"], "a", &["a", "b"]),
        (&["a", "a", "b"], "c", &["a", "b", "c"]),
    ];
    for (plural, singular, want) in cases {
        let plural: Vec<String> = plural.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            in_tree_list(&plural, singular),
            want,
            "{plural:?} + {singular:?}"
        );
    }
}

#[test]
fn no_version_and_no_tls_give_defaults() {
    let m = module("ns", "brd", BASE);
    let r = resolve_mapping(&m, "6.1.0-56-amd64").expect("resolve");
    assert_eq!(r.version, None);
    assert_eq!(r.registry_tls, TlsOptions::default());
    assert!(r.build.is_none() && r.sign.is_none());
    assert!(r.in_tree_modules_to_remove.is_empty());
}
