//! The CRD's CEL rules against the real API server: invalid Modules are rejected with a
//! message naming the field.
//!
//! Needs the control plane binaries (`bash hack/controlplane/build.sh`); fails without them.

mod crd_support;

use anyhow::{Result, ensure};
use kmm_tests::controlplane::ControlPlane;

use crd_support::{apply, install_crds};

/// A valid Module; each case replaces one snippet.
const VALID: &str = r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: NAME}
spec:
  selector: {}
  moduleLoader:
    container:
      modprobe:
        moduleName: mod_a
        modulesLoadingOrder: [mod_a, mod_b]
      kernelMappings:
        - literal: 6.1.0-56-amd64
          containerImage: "reg/mod_a:${KERNEL_FULL_VERSION}"
"#;

/// (name, snippet, replacement, substrings the rejection must contain)
const INVALID: &[(&str, &str, &str, &[&str])] = &[
    (
        "both-literal-and-regexp",
        "- literal: 6.1.0-56-amd64",
        "- literal: 6.1.0-56-amd64\n          regexp: '.*'",
        &["kernelMappings[0]", "exactly one of literal and regexp"],
    ),
    (
        "order-not-starting-with-module-name",
        "[mod_a, mod_b]",
        "[mod_b, mod_a]",
        &[
            "modulesLoadingOrder",
            "first entry must be modprobe.moduleName",
        ],
    ),
    (
        "no-image-anywhere",
        "          containerImage: \"reg/mod_a:${KERNEL_FULL_VERSION}\"\n",
        "",
        &[
            "kernelMappings[].containerImage",
            "required in every mapping",
        ],
    ),
    (
        "image-without-tag",
        "\"reg/mod_a:${KERNEL_FULL_VERSION}\"",
        "reg:5000/mod_a",
        &["containerImage", "must carry a tag or a digest"],
    ),
    (
        "raw-args-with-module-name",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n        rawArgs: {load: [--load], unload: [--unload]}\n",
        &["rawArgs", "cannot be set when modprobe.moduleName is set"],
    ),
    (
        "sign-without-files",
        "      kernelMappings:",
        "      sign: {keySecret: {name: k}, certSecret: {name: c}}\n      kernelMappings:",
        &["filesToSign", "at least one file"],
    ),
    (
        "duplicate-in-loading-order",
        "[mod_a, mod_b]",
        "[mod_a, mod_b, mod_b]",
        &["modulesLoadingOrder", "unique"],
    ),
    (
        "module-name-with-slash",
        "moduleName: mod_a\n",
        "moduleName: mod/a\n",
        &["modprobe.moduleName", "kernel module name"],
    ),
    (
        "loading-order-with-space",
        "[mod_a, mod_b]",
        "[mod_a, \"mod b\"]",
        &["modulesLoadingOrder", "kernel module name"],
    ),
    (
        "in-tree-module-with-slash",
        "          containerImage: \"reg/mod_a",
        "          inTreeModulesToRemove: [a/b]\n          containerImage: \"reg/mod_a",
        &["inTreeModulesToRemove", "kernel module name"],
    ),
    (
        "dir-name-leaving-the-image",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n        dirName: /opt/../etc\n",
        &["modprobe.dirName", "'..'"],
    ),
    (
        "firmware-path-leaving-the-image",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n        firmwarePath: fw/../../etc\n",
        &["modprobe.firmwarePath", "'..'"],
    ),
    (
        "parameter-with-newline",
        "moduleName: mod_a\n",
        "moduleName: mod_a\n        parameters: [\"a=1\\nb=2\"]\n",
        &["modprobe.parameters", "newline or NUL"],
    ),
    (
        "unknown-pull-policy",
        "      modprobe:",
        "      imagePullPolicy: Sometimes\n      modprobe:",
        &["imagePullPolicy", "Always, IfNotPresent or Never"],
    ),
    (
        "device-plugin-pull-policy",
        "  selector: {}",
        "  selector: {}\n  devicePlugin: {container: {image: \"reg/dp:1\", imagePullPolicy: always}}",
        &[
            "devicePlugin.container.imagePullPolicy",
            "Always, IfNotPresent or Never",
        ],
    ),
    (
        "malformed-digest",
        "\"reg/mod_a:${KERNEL_FULL_VERSION}\"",
        "reg/mod_a@sha256:0123",
        &["containerImage", "64 lowercase hex"],
    ),
    (
        "version-not-a-label-value",
        "      modprobe:",
        "      version: \"1.0 beta\"\n      modprobe:",
        &["version", "node label value"],
    ),
    (
        "name-of-fifty-six-characters-cannot-have-a-ready-label-x",
        "  selector: {}",
        "  selector: {}",
        &["metadata.name", ".ready"],
    ),
    (
        "name-of-forty-two-chars-with-device-plugin",
        "  selector: {}",
        "  selector: {}\n  devicePlugin: {container: {image: \"reg/dp:1\"}}",
        &["metadata.name", "device-plugin-ready"],
    ),
    (
        "dra-and-device-plugin",
        "  selector: {}",
        "  selector: {}\n  devicePlugin: {container: {image: \"reg/dp:1\"}}\n  dra: {driverName: gpu.example.com, container: {image: \"reg/dra:1\"}}",
        &["spec.dra and spec.devicePlugin are mutually exclusive"],
    ),
    (
        "dra-driver-name-not-a-dns-subdomain",
        "  selector: {}",
        "  selector: {}\n  dra: {driverName: GPU_driver, container: {image: \"reg/dra:1\"}}",
        &["spec.dra.driverName", "DNS subdomain"],
    ),
    (
        "dra-without-driver-name",
        "  selector: {}",
        "  selector: {}\n  dra: {container: {image: \"reg/dra:1\"}}",
        &["driverName", "Required"],
    ),
    (
        "dra-device-class-name-not-a-dns-subdomain",
        "  selector: {}",
        "  selector: {}\n  dra: {driverName: gpu.example.com, container: {image: \"reg/dra:1\"}, deviceClasses: [{name: Bad_Name}]}",
        &["deviceClasses[0].name", "should match"],
    ),
];

#[tokio::test]
async fn invalid_modules_are_rejected_naming_the_field() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_crds(cp).await?;
    let ns = cp.temp_namespace("crd").await?;
    let valid = apply(cp, ns.name(), &VALID.replace("NAME", "valid"))?;
    ensure!(
        valid.ok,
        "the valid base Module is rejected: {}",
        valid.output
    );
    for (name, from, to, needles) in INVALID {
        ensure!(
            VALID.contains(from),
            "{name}: snippet {from:?} not in VALID"
        );
        let manifest = VALID.replace("NAME", name).replacen(from, to, 1);
        let applied = apply(cp, ns.name(), &manifest)?;
        ensure!(!applied.ok, "{name} was accepted:\n{manifest}");
        for needle in *needles {
            ensure!(
                applied.output.contains(needle),
                "{name}: rejection lacks {needle:?}: {}",
                applied.output
            );
        }
    }
    ns.cleanup().await
}

#[tokio::test]
async fn version_cannot_be_removed_once_set() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_crds(cp).await?;
    let ns = cp.temp_namespace("crd").await?;
    let with_version = |v: &str| {
        VALID.replace("NAME", "versioned").replacen(
            "      modprobe:",
            &format!("      version: \"{v}\"\n      modprobe:"),
            1,
        )
    };
    let created = apply(cp, ns.name(), &with_version("1"))?;
    ensure!(created.ok, "{}", created.output);
    let upgraded = apply(cp, ns.name(), &with_version("2"))?;
    ensure!(
        upgraded.ok,
        "changing 1 -> 2 must work: {}",
        upgraded.output
    );
    let removed = apply(cp, ns.name(), &VALID.replace("NAME", "versioned"))?;
    ensure!(!removed.ok, "removing version was accepted");
    ensure!(
        removed.output.contains("version")
            && removed
                .output
                .contains("cannot update to or from an empty version"),
        "{}",
        removed.output
    );
    // And the other direction.
    let plain = apply(cp, ns.name(), &VALID.replace("NAME", "plain"))?;
    ensure!(plain.ok, "{}", plain.output);
    let added = apply(
        cp,
        ns.name(),
        &with_version("1").replace("versioned", "plain"),
    )?;
    ensure!(!added.ok, "adding a version was accepted");
    ns.cleanup().await
}

#[tokio::test]
async fn long_name_with_version_is_rejected() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    install_crds(cp).await?;
    let ns = cp.temp_namespace("crd").await?;
    let name = "m".repeat(40);
    let manifest = VALID.replace("NAME", &name).replacen(
        "      modprobe:",
        "      version: \"1\"\n      modprobe:",
        1,
    );
    let applied = apply(cp, ns.name(), &manifest)?;
    ensure!(!applied.ok, "40-character name with version accepted");
    ensure!(
        applied.output.contains("metadata.name"),
        "{}",
        applied.output
    );
    // Without version the same name is fine.
    let applied = apply(cp, ns.name(), &VALID.replace("NAME", &name))?;
    ensure!(applied.ok, "{}", applied.output);
    ns.cleanup().await
}
