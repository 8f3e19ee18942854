//! The Argo CD health check of docs/gitops.md, run as written (Lua, `lua5.4` from
//! hack/setup.sh; Argo CD runs it with gopher-lua, the same Lua 5.1 subset) on Modules in
//! each state the controller writes: Healthy when `Ready`, Degraded when `Stalled`,
//! Progressing before any status, while nodes load, and while the controller has not seen
//! the latest generation. No cluster.

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use kmm_tests::controlplane::repo_root;

/// The Lua body under `resource.customizations.health.kmm.sigs.x-k8s.io_Module: |`.
fn snippet() -> Result<String> {
    let doc = std::fs::read_to_string(repo_root().join("docs/gitops.md"))?;
    let key = "resource.customizations.health.kmm.sigs.x-k8s.io_Module: |";
    let start = doc.find(key).context("no health check in docs/gitops.md")? + key.len();
    let body: Vec<&str> = doc[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .context("empty health check")?;
    Ok(body
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// A Lua table literal of a Module with `generation`, `observed` and `(type, status, message)`
/// conditions (`None`: no status at all).
fn module(generation: i64, observed: i64, conditions: Option<&[(&str, &str, &str)]>) -> String {
    let Some(conditions) = conditions else {
        return format!("{{metadata={{generation={generation}}}}}");
    };
    let conds: Vec<String> = conditions
        .iter()
        .map(|(t, s, m)| format!("{{type={t:?}, status={s:?}, message={m:?}}}"))
        .collect();
    format!(
        "{{metadata={{generation={generation}}}, status={{observedGeneration={observed}, conditions={{{}}}}}}}",
        conds.join(", ")
    )
}

/// Runs the check on `obj`; returns `status / message`.
fn health(snippet: &str, obj: &str) -> Result<String> {
    let script = format!(
        "local function check(obj)\n{snippet}\nend\nlocal hs = check({obj})\nio.write(hs.status .. \" / \" .. hs.message)\n"
    );
    let mut child = Command::new("lua5.4")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running lua5.4 (Debian package lua5.4; bash hack/setup.sh)")?;
    child
        .stdin
        .take()
        .context("lua stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("lua failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn the_argocd_health_check_reads_ready_stalled_and_the_generation() -> Result<()> {
    let lua = snippet()?;
    let ready = [
        ("Ready", "True", "module loaded on 2/2 desired nodes"),
        ("Reconciling", "False", "nothing left to do"),
        ("Stalled", "False", "no error blocks progress"),
    ];
    let stalled = [
        ("Ready", "False", "2 nodes: ImagePullFailed: not found"),
        ("Reconciling", "False", "progress is blocked"),
        ("Stalled", "True", "2 nodes: ImagePullFailed: not found"),
    ];
    let loading = [
        ("Ready", "False", "module loaded on 1/2 desired nodes"),
        ("Reconciling", "True", "module loaded on 1/2 desired nodes"),
        ("Stalled", "False", "no error blocks progress"),
    ];
    let cases = [
        (
            module(1, 0, None),
            "Progressing / Waiting for kmm-controller",
        ),
        (
            module(2, 2, Some(&ready)),
            "Healthy / module loaded on 2/2 desired nodes",
        ),
        (
            module(2, 2, Some(&stalled)),
            "Degraded / 2 nodes: ImagePullFailed: not found",
        ),
        (
            module(2, 2, Some(&loading)),
            "Progressing / module loaded on 1/2 desired nodes",
        ),
        (
            module(3, 2, Some(&ready)),
            "Progressing / kmm-controller has not seen the latest spec yet",
        ),
    ];
    for (obj, want) in cases {
        assert_eq!(health(&lua, &obj)?, want, "{obj}");
    }
    Ok(())
}
