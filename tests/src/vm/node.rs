//! [`VmNode`]: one QEMU guest, its console log and its command channel.
//!
//! QEMU runs `-machine q35 -accel tcg -cpu max` (KVM cannot run a stock kernel on
//! this host, see shared/lab), boots the ELF vmlinux directly, logs the serial
//! console to `console.log` in a per-boot temp dir, and exposes a virtio-serial
//! port `kmm.0` through a unix socket. The guest's `/init`
//! (`tests/vm/guest/init`) serves shell commands on that port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::KernelArtifacts;

/// How to boot.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The kernel.
    pub kernel: KernelArtifacts,
    /// The initramfs (see [`super::InitramfsSpec::build`]).
    pub initramfs: PathBuf,
    /// Guest RAM (MiB).
    pub mem_mib: u32,
    /// Virtual CPUs.
    pub smp: u32,
    /// User-mode networking (guest 10.0.2.15, host loopback at 10.0.2.2).
    pub net: bool,
    /// Host directory shared over 9p, mounted on `/host` in the guest.
    pub share: Option<PathBuf>,
    /// Extra kernel command line arguments (e.g. `module.sig_enforce=1`).
    pub append: Vec<String>,
    /// `(host port, guest port)`: host `127.0.0.1:<host port>` reaches the guest's
    /// TCP `<guest port>` (e.g. the agent's metrics/health server). Needs `net`.
    pub forward: Vec<(u16, u16)>,
    /// Extra QEMU arguments, appended as given.
    pub qemu_args: Vec<String>,
    /// Time allowed from QEMU start to the guest being ready.
    pub boot_timeout: Duration,
}

impl VmOptions {
    /// 1 GiB, 1 CPU, networking on, no share, 120 s to boot.
    pub fn new(kernel: KernelArtifacts, initramfs: PathBuf) -> Self {
        Self {
            kernel,
            initramfs,
            mem_mib: 1024,
            smp: 1,
            net: true,
            share: None,
            append: Vec::new(),
            forward: Vec::new(),
            qemu_args: Vec::new(),
            boot_timeout: Duration::from_secs(120),
        }
    }
}

/// The result of a command run in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit code of the script.
    pub rc: i32,
    /// Its stdout and stderr, interleaved.
    pub output: String,
}

struct Channel {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

/// A running VM; QEMU is killed when this is dropped. If dropped while the
/// thread panics (a failed test), the guest console log is printed.
pub struct VmNode {
    child: Child,
    dir: tempfile::TempDir,
    chan: Mutex<Channel>,
    boot_time: Duration,
}

impl VmNode {
    /// Starts QEMU and waits until the guest's command loop is up.
    ///
    /// # Errors
    /// QEMU failing to start, the guest failing or timing out (the error
    /// includes the console log).
    pub async fn boot(opts: VmOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("kmm-vm-").tempdir()?;
        let console = dir.path().join("console.log");
        let sock = dir.path().join("chan.sock");
        let qemu_log = std::fs::File::create(dir.path().join("qemu.log"))?;

        let mut cmdline = vec!["console=ttyS0", "panic=-1", "quiet", "kmm.chan=1"];
        let mut args: Vec<String> = [
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-no-reboot",
            "-nodefaults",
            "-display",
            "none",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend([
            "-m".into(),
            opts.mem_mib.to_string(),
            "-smp".into(),
            opts.smp.to_string(),
            "-kernel".into(),
            path_arg(&opts.kernel.vmlinux)?,
            "-initrd".into(),
            path_arg(&opts.initramfs)?,
            "-serial".into(),
            format!("file:{}", path_arg(&console)?),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!(
                "socket,id=kmm0,path={},server=on,wait=off",
                path_arg(&sock)?
            ),
            "-device".into(),
            "virtserialport,chardev=kmm0,name=kmm.0".into(),
        ]);
        if opts.net {
            let mut nic = String::from("user,model=virtio-net-pci");
            for (host, guest) in &opts.forward {
                nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            }
            args.extend(["-nic".into(), nic]);
            cmdline.push("kmm.net=1");
        } else if !opts.forward.is_empty() {
            bail!("port forwards need networking (VmOptions::net)");
        }
        if let Some(share) = &opts.share {
            args.extend([
                "-virtfs".into(),
                format!(
                    "local,path={},mount_tag=host0,security_model=none,id=fs0",
                    path_arg(share)?
                ),
            ]);
            cmdline.push("kmm.share=1");
        }
        args.extend(opts.qemu_args.iter().cloned());
        let mut cmdline = cmdline.join(" ");
        for extra in &opts.append {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        args.extend(["-append".into(), cmdline]);

        let started = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(qemu_log.try_clone()?)
            .stderr(qemu_log)
            .kill_on_drop(true)
            .spawn()
            .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;

        // connect before the guest opens its end: bytes sent to an unconnected
        // port are lost
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&sock).await {
                break s;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "qemu exited at start ({status}): {}",
                    std::fs::read_to_string(dir.path().join("qemu.log")).unwrap_or_default()
                );
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("qemu did not create {}", sock.display());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let (reader, writer) = stream.into_split();
        let mut node = Self {
            child,
            dir,
            chan: Mutex::new(Channel {
                reader: BufReader::new(reader),
                writer,
                next_id: 1,
            }),
            boot_time: Duration::ZERO,
        };
        if let Err(e) = node.wait_for_line("KMM-VM-READY", opts.boot_timeout).await {
            bail!("{e:#}\n--- guest console ---\n{}", node.console_log());
        }
        node.boot_time = started.elapsed();
        Ok(node)
    }

    /// Wall time from QEMU start to the guest being ready.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The per-boot directory (console.log, qemu.log, chan.sock).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the guest printed on its serial console so far.
    pub fn console_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Waits for a console line containing `pattern`; returns that line.
    ///
    /// # Errors
    /// Timeout, QEMU exiting, or the guest init reporting `KMM-VM-FAIL`.
    pub async fn wait_for_line(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.console_log();
            if let Some(line) = log.lines().find(|l| l.contains(pattern)) {
                return Ok(line.to_owned());
            }
            if let Some(line) = log.lines().find(|l| l.contains("KMM-VM-FAIL")) {
                bail!("guest init failed: {line}");
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("qemu exited ({status}) before {pattern:?} appeared");
            }
            if Instant::now() > deadline {
                bail!("{pattern:?} did not appear on the console within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a shell script (busybox sh) in the guest, 120 s at most.
    ///
    /// # Errors
    /// Channel failures or the timeout (not a non-zero exit code: see [`Self::run_ok`]).
    pub async fn run(&self, script: &str) -> Result<CmdOutput> {
        self.run_with_timeout(script, Duration::from_secs(120))
            .await
    }

    /// [`Self::run`] with an explicit timeout.
    ///
    /// # Errors
    /// Channel failures or the timeout.
    pub async fn run_with_timeout(&self, script: &str, timeout: Duration) -> Result<CmdOutput> {
        let mut chan = self.chan.lock().await;
        let id = chan.next_id;
        chan.next_id += 1;
        let request = format!("{id} {}\n", hex::encode(script));
        chan.writer.write_all(request.as_bytes()).await?;
        chan.writer.flush().await?;
        let exchange = async {
            let (begin, end) = (format!("@@KMM-OUT {id}"), format!("@@KMM-END {id} "));
            let mut in_output = false;
            let mut hex_out = String::new();
            let mut line = String::new();
            loop {
                line.clear();
                if chan.reader.read_line(&mut line).await? == 0 {
                    bail!("command channel closed (guest gone?)");
                }
                let l = line.trim_end();
                if l == begin {
                    in_output = true;
                } else if let Some(rc) = l.strip_prefix(&end) {
                    let output = hex::decode(&hex_out).context("guest sent bad hex")?;
                    return Ok(CmdOutput {
                        rc: rc.parse().context("bad exit code")?,
                        output: String::from_utf8_lossy(&output).into_owned(),
                    });
                } else if in_output {
                    hex_out.push_str(l);
                }
                // anything else: late output of an earlier, timed-out command
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .with_context(|| format!("guest command timed out after {timeout:?}: {script}"))?
    }

    /// Runs a script and fails unless it exits 0; returns its output.
    ///
    /// # Errors
    /// A non-zero exit code (the error carries the output), or [`Self::run`] errors.
    pub async fn run_ok(&self, script: &str) -> Result<String> {
        let out = self.run(script).await?;
        if out.rc != 0 {
            bail!(
                "guest command failed (exit {}): {script}\n{}",
                out.rc,
                out.output
            );
        }
        Ok(out.output)
    }

    /// Starts `command` in the background in the guest (e.g. the agent), its
    /// output in `/tmp/<name>.log` and its pid in `/tmp/<name>.pid`; see [`Self::log_of`].
    ///
    /// # Errors
    /// If the guest shell could not start it.
    pub async fn spawn_background(&self, name: &str, command: &str) -> Result<()> {
        let script = format!(
            "cat > /tmp/{name}.sh <<'KMM_EOF'\n{command}\nKMM_EOF\n\
             setsid sh /tmp/{name}.sh > /tmp/{name}.log 2>&1 < /dev/null &\n\
             echo $! > /tmp/{name}.pid"
        );
        self.run_ok(&script).await.map(drop)
    }

    /// What a [`Self::spawn_background`] process has printed so far.
    ///
    /// # Errors
    /// Channel errors.
    pub async fn log_of(&self, name: &str) -> Result<String> {
        Ok(self.run(&format!("cat /tmp/{name}.log")).await?.output)
    }

    /// Asks the guest to sync and power off; kills QEMU after 30 s.
    ///
    /// # Errors
    /// Channel or process errors.
    pub async fn shutdown(mut self) -> Result<()> {
        {
            let mut chan = self.chan.lock().await;
            chan.writer.write_all(b"@quit\n").await?;
            chan.writer.flush().await?;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("guest did not power off within 30 s");
            }
        }
        Ok(())
    }
}

impl Drop for VmNode {
    fn drop(&mut self) {
        if std::env::var_os("KMM_VM_KEEP").is_some() {
            // keep console.log / qemu.log for a post-mortem
            self.dir.disable_cleanup(true);
            eprintln!(
                "KMM_VM_KEEP: VM files kept in {}",
                self.dir.path().display()
            );
        }
        if std::thread::panicking() {
            eprintln!(
                "--- guest console ({}) ---\n{}--- end of guest console ---",
                self.dir.path().display(),
                self.console_log()
            );
        }
        let _ = self.child.start_kill();
    }
}

fn path_arg(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))?;
    // QEMU option syntax: ',' separates options
    if s.contains(',') {
        bail!("{s}: QEMU paths must not contain ','");
    }
    Ok(s.to_owned())
}
