//! The upstream compatibility corpus (`tests/data/upstream-corpus`, one file per Module or
//! PreflightValidation example of upstream KMM's docs, CI and samples) without a cluster: every
//! valid file deserialises into our types and re-serialises with nothing lost, and every
//! invalid one is refused by our types or our validation, naming the field. The same files go
//! through the real API server, CEL and the webhook in `tests/tests/compat_corpus.rs`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::{Module, PreflightValidation, validate_module, validate_preflight};

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/upstream-corpus")
        .join(kind)
}

/// `(file name, text)` of every YAML file of `valid` or `invalid`, sorted.
fn corpus(kind: &str) -> Vec<(String, String)> {
    let dir = corpus_dir(kind);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// The `# expect: <text>` lines of an invalid file.
fn expectations(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .collect()
}

/// `doc` as our types write it back: the only differences allowed, each listed here.
fn as_we_write_it(doc: &Value) -> Value {
    let mut want = doc.clone();
    // TLS flags are `omitempty` upstream too: `false` and absent mean the same.
    fn drop_false_tls(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for key in ["insecure", "insecureSkipTLSVerify"] {
                    if map.get(key) == Some(&Value::Bool(false)) {
                        map.remove(key);
                    }
                }
                map.values_mut().for_each(drop_false_tls);
            }
            Value::Array(items) => items.iter_mut().for_each(drop_false_tls),
            _ => {}
        }
    }
    drop_false_tls(&mut want);
    // modprobe.dirName defaults to /opt (upstream's +kubebuilder:default=/opt).
    if let Some(modprobe) = want.pointer_mut("/spec/moduleLoader/container/modprobe") {
        modprobe
            .as_object_mut()
            .unwrap()
            .entry("dirName")
            .or_insert(json!("/opt"));
    }
    // PreflightValidation is stored as v1beta2; v1beta1 has the same schema.
    if want["kind"] == "PreflightValidation" {
        want["apiVersion"] = json!("kmm.sigs.x-k8s.io/v1beta2");
    }
    want
}

#[test]
fn every_valid_upstream_example_round_trips_through_our_types_with_nothing_lost() {
    let files = corpus("valid");
    assert!(files.len() >= 20, "corpus too small: {}", files.len());
    let mut failures = Vec::new();
    for (name, text) in files {
        assert!(
            text.starts_with("# Mirrors upstream "),
            "{name}: must name the upstream file it mirrors"
        );
        let doc: Value = serde_yaml::from_str(&text).unwrap();
        let back = match doc["kind"].as_str() {
            Some("Module") => {
                let mut m: Module =
                    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
                let back = serde_json::to_value(&m).unwrap();
                // The API server fills in the namespace; the label-length rules need one.
                m.metadata.namespace = Some("default".into());
                if let Err(e) = validate_module(&m) {
                    failures.push(format!("{name}: refused: {e:?}"));
                }
                back
            }
            Some("PreflightValidation") => {
                let p: PreflightValidation =
                    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
                if let Err(e) = validate_preflight(&p.spec) {
                    failures.push(format!("{name}: refused: {e}"));
                }
                serde_json::to_value(&p).unwrap()
            }
            other => panic!("{name}: unexpected kind {other:?}"),
        };
        let want = as_we_write_it(&doc);
        if back != want {
            failures.push(format!(
                "{name}: lost or changed in a round trip:\n wrote {back}\n  want {want}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_invalid_upstream_example_is_refused_by_our_types_or_validation_naming_the_field() {
    let files = corpus("invalid");
    assert!(files.len() >= 15, "corpus too small: {}", files.len());
    let mut failures = Vec::new();
    for (name, text) in files {
        assert!(
            text.starts_with("# Mirrors upstream ") || text.starts_with("# Upstream "),
            "{name}: must name the upstream file it mirrors"
        );
        let expect = expectations(&text);
        assert!(!expect.is_empty(), "{name}: no '# expect:' line");
        let doc: Value = serde_yaml::from_str(&text).unwrap();
        let refusal = match doc["kind"].as_str() {
            Some("Module") => match serde_json::from_value::<Module>(doc) {
                Err(e) => e.to_string(),
                Ok(mut m) => match validate_module(&{
                    m.metadata.namespace = Some("default".into());
                    m
                }) {
                    Err(errors) => errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                    Ok(()) => {
                        failures.push(format!("{name}: admitted by validate_module"));
                        continue;
                    }
                },
            },
            Some("PreflightValidation") => {
                let p: PreflightValidation = serde_json::from_value(doc).unwrap();
                match validate_preflight(&p.spec) {
                    Err(e) => e.to_string(),
                    Ok(()) => {
                        failures.push(format!("{name}: admitted by validate_preflight"));
                        continue;
                    }
                }
            }
            other => panic!("{name}: unexpected kind {other:?}"),
        };
        // Our own validation names the field; CEL-only rules (the API server's wording) are
        // checked by the cluster test.
        let field = expect[0];
        if !(refusal.contains(field) || CEL_ONLY.contains(&name.as_str())) {
            failures.push(format!(
                "{name}: refusal does not name {field:?}: {refusal}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Invalid files refused by a type or CEL rule whose Rust-side error names the field
/// differently (serde says "missing field", not the path).
const CEL_ONLY: &[&str] = &["firmwares-without-kernel-mappings.yaml"];
