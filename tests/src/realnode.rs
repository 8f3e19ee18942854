//! A real node: `hack/realnode`'s QEMU guest (Debian's kernel) running
//! containerd, runc and kubelet v1.35.4, joined to a control plane of its own.
//! Everything (etcd, API server, registry, QEMU) runs inside a network
//! namespace the scripts create, with loopback and a tap to the guest only:
//! every `kubectl`, `curl` and guest command here goes through
//! `ip netns exec`. Stopped (QEMU, control plane, namespace) on drop.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result, ensure};

use crate::controlplane::repo_root;

/// Variables of the test control plane that must not leak into the real
/// node's scripts (they pick their own ports inside their own namespace).
const INHERITED_PORTS: &[&str] = &[
    "KMM_APISERVER_PORT",
    "KMM_REGISTRY_PORT",
    "KMM_ETCD_PORT",
    "KMM_ETCD_PEER_PORT",
    "KMM_KCM_PORT",
    "KMM_SCHEDULER_PORT",
    "KUBECONFIG_KMM",
];

/// A started real node; `stop.sh` runs on drop.
#[derive(Debug)]
pub struct RealNode {
    run: PathBuf,
    netns: String,
    kubectl: PathBuf,
}

impl RealNode {
    /// The node's name in the cluster.
    pub const NAME: &'static str = "kmm-guest";

    /// Runs `hack/realnode/start.sh` (control plane, registry, QEMU guest)
    /// and returns once the Node is Ready. Its run dir is
    /// `$KMM_RUN/realnode` (or `/tmp/kmm-realnode-test`), its namespace
    /// `kmm-rn-<pid>`.
    ///
    /// # Errors
    /// If the script fails (its output is on stderr).
    pub fn start() -> Result<Self> {
        let run = std::env::var_os("KMM_RUN").map_or_else(
            || PathBuf::from("/tmp/kmm-realnode-test"),
            |r| PathBuf::from(r).join("realnode"),
        );
        let netns = format!("kmm-rn-{}", std::process::id());
        let mut node = Self {
            run,
            netns,
            kubectl: PathBuf::new(),
        };
        // A run dir of an earlier run holds a stale share and pid files.
        let _ = std::fs::remove_dir_all(&node.run);
        node.script("start.sh", &[])?;
        let paths = std::fs::read_to_string(node.run.join("paths"))
            .context("reading the paths start.sh wrote")?;
        let cp_bin = paths
            .lines()
            .find_map(|l| l.strip_prefix("CP_BIN="))
            .context("no CP_BIN= in start.sh's paths file")?;
        node.kubectl = Path::new(cp_bin).join("kubectl");
        Ok(node)
    }

    /// Its run dir.
    pub fn run_dir(&self) -> &Path {
        &self.run
    }

    /// Runs `hack/realnode/<name>` with this node's run dir and namespace,
    /// its output going to the test's output.
    ///
    /// # Errors
    /// If it exits non-zero.
    pub fn script(&self, name: &str, env: &[(&str, &OsStr)]) -> Result<()> {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("hack/realnode").join(name))
            .env("KMM_RUN", &self.run)
            .env("KMM_RN_NETNS", &self.netns)
            .stdin(Stdio::null());
        for var in INHERITED_PORTS {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let status = cmd.status().with_context(|| format!("running {name}"))?;
        ensure!(status.success(), "hack/realnode/{name} failed: {status}");
        Ok(())
    }

    /// A command inside the node's namespace, `stdin` fed to it.
    fn in_netns<S: AsRef<OsStr>>(
        &self,
        program: &OsStr,
        args: &[S],
        stdin: Option<&str>,
    ) -> Result<Output> {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("ip netns exec {}", self.netns))?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// `kubectl` against the node's control plane, `stdin` fed to it; its stdout.
    fn run_kubectl<S: AsRef<OsStr>>(&self, args: &[S], stdin: Option<&str>) -> Result<String> {
        let kubeconfig = self.run.join("admin.kubeconfig");
        let mut all: Vec<&OsStr> = vec![OsStr::new("--kubeconfig"), kubeconfig.as_os_str()];
        all.extend(args.iter().map(AsRef::as_ref));
        let out = self.in_netns(self.kubectl.as_os_str(), &all, stdin)?;
        ensure!(
            out.status.success(),
            "kubectl {:?}: {}",
            all.get(2..).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl` against the node's control plane; its stdout.
    ///
    /// # Errors
    /// If kubectl fails (its stderr in the error).
    pub fn kubectl<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        self.run_kubectl(args, None)
    }

    /// `kubectl ... -f -` with `stdin` as the manifest.
    ///
    /// # Errors
    /// If kubectl fails.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String> {
        self.run_kubectl(args, Some(stdin))
    }

    /// `kubectl get KIND NAME -w -o json` in the background: every version
    /// of the object the API server sends, in order, kept until the
    /// [`Watch`] is dropped. A poll can miss a state that lasts less than
    /// its period; a watch sees every write.
    ///
    /// # Errors
    /// If kubectl cannot be started.
    pub fn watch(&self, kind: &str, name: &str) -> Result<Watch> {
        let kubeconfig = self.run.join("admin.kubeconfig");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", kind, name, "--watch", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("kubectl get {kind} {name} --watch"))?;
        let stdout = child.stdout.take().context("kubectl watch stdout")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let reader = std::thread::spawn(move || {
            let stream = serde_json::Deserializer::from_reader(std::io::BufReader::new(stdout));
            for object in stream
                .into_iter::<serde_json::Value>()
                .map_while(Result::ok)
            {
                if let Ok(mut seen) = sink.lock() {
                    seen.push(object);
                }
            }
        });
        Ok(Watch {
            child,
            reader: Some(reader),
            seen,
        })
    }

    /// Runs `sh -c CMD` in the guest (`guest-exec.sh`); its exit status and
    /// output.
    ///
    /// # Errors
    /// If the command channel fails.
    pub fn guest(&self, cmd: &str) -> Result<(bool, String)> {
        let out = Command::new("bash")
            .arg(repo_root().join("hack/realnode/guest-exec.sh"))
            .arg(cmd)
            .env("KMM_RUN", &self.run)
            .stdin(Stdio::null())
            .output()
            .context("guest-exec.sh")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// An instant query to the Prometheus `prometheus.sh` started (port
    /// 29090 in the namespace); the `data.result` array.
    ///
    /// # Errors
    /// If Prometheus does not answer with a success.
    pub fn prometheus_query(&self, query: &str) -> Result<Vec<serde_json::Value>> {
        let out = self.in_netns(
            OsStr::new("curl"),
            &[
                "-fsS",
                "--max-time",
                "5",
                "http://127.0.0.1:29090/api/v1/query",
                "--data-urlencode",
                &format!("query={query}"),
            ],
            None,
        )?;
        ensure!(
            out.status.success(),
            "prometheus query {query}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let body: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        ensure!(body["status"] == "success", "prometheus said: {body}");
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// A running `kubectl --watch` ([`RealNode::watch`]); killed on drop.
#[derive(Debug)]
pub struct Watch {
    child: Child,
    reader: Option<JoinHandle<()>>,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Watch {
    /// Every version of the object received so far, oldest first.
    #[must_use]
    pub fn seen(&self) -> Vec<serde_json::Value> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        if let Err(e) = self.script("stop.sh", &[]) {
            eprintln!("realnode: stop.sh: {e:#}");
        }
    }
}
