//! Command-line definitions (clap derive) and their execution. `main.rs` only
//! parses, sets up logging and prints what [`run`] returns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use oci_client::secrets::RegistryAuth;

use crate::depmod::Depmod;
use crate::package::{FirmwareInput, PackageRequest};
use crate::registry::{self, RegistryOptions};
use crate::{Error, layout, package};

/// kmm-rs command line tool.
#[derive(Debug, Parser)]
#[command(name = "kmmctl", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// kubectl's flags, for the commands that talk to a cluster.
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only obscure the clap derive"
)]
pub enum Command {
    /// Build a kmod OCI image (no docker/buildah) and write it to an OCI layout
    /// and/or push it. Prints the manifest digest as the last line on stdout.
    Package(PackageArgs),
    /// Explain, node by node, whether a Module applies, what it resolves to, what is
    /// loaded and the last error.
    Explain(crate::explain::ExplainArgs),
    /// Sign a kernel module file like the kernel's scripts/sign-file (replacing
    /// any signature it has). Prints the path written.
    SignFile(SignFileArgs),
    /// See and steer a ModuleRollout (rollout.kmm-rs.io): status, pause, resume, skip,
    /// unskip, retry.
    Rollout(crate::rollout::RolloutArgs),
    /// A Module × node matrix: on each node, loaded (and its version), pending and why,
    /// failing and why, or not targeted; then the failures with the agents' messages.
    Status(crate::status::StatusArgs),
    /// Sign the kernel modules inside an image: pull --from, sign the --file
    /// matches, push --to with one layer of signed files appended. Prints the
    /// pushed manifest digest as the last line on stdout.
    Sign(SignArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(CompletionArgs),
}

/// Arguments of `kmmctl completion`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  source <(kmmctl completion bash)
  kmmctl completion zsh > \"${fpath[1]}/_kmmctl\"
  kmmctl completion fish > ~/.config/fish/completions/kmmctl.fish
  kubectl-kmm completion bash   # for the kubectl-kmm binary")]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `kmmctl sign` (the interface the controller's sign Job uses).
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  kmmctl sign --from 127.0.0.1:5000/kmod/mymod:6.1.0-56-amd64 --from-insecure \\
      --to 127.0.0.1:5000/kmod/mymod-signed:6.1.0-56-amd64 --to-insecure \\
      --key /signing-key/key --cert /signing-cert/cert \\
      --file '/opt/lib/modules/*/extra/*.ko'")]
pub struct SignArgs {
    /// The image with unsigned modules.
    #[arg(long, value_name = "IMAGE")]
    pub from: String,
    /// Where to push the signed image.
    #[arg(long, value_name = "IMAGE")]
    pub to: String,
    /// Private key (RSA or EC; PEM or DER, unencrypted).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The key's X.509 certificate (PEM or DER).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Absolute path or shell glob of files to sign (repeatable); each must match.
    #[arg(long = "file", value_name = "PATH_OR_GLOB", required = true)]
    pub files: Vec<String>,
    /// Pull --from over plain HTTP.
    #[arg(long)]
    pub from_insecure: bool,
    /// Pull --from over HTTPS without verifying the certificate.
    #[arg(long)]
    pub from_insecure_skip_tls_verify: bool,
    /// Push --to over plain HTTP.
    #[arg(long)]
    pub to_insecure: bool,
    /// Push --to over HTTPS without verifying the certificate.
    #[arg(long)]
    pub to_insecure_skip_tls_verify: bool,
    /// A .dockerconfigjson (or legacy .dockercfg) with credentials for pull and push;
    /// entries match images as the kubelet matches pull secrets.
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// Signature digest.
    #[arg(long, value_enum, default_value_t = crate::sign::HashAlgorithm::Sha256)]
    pub hash: crate::sign::HashAlgorithm,
}

/// Arguments of `kmmctl sign-file`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  kmmctl sign-file --key signing_key.pem --cert signing_key.x509 mymod.ko
  kmmctl sign-file --key key.der --cert cert.der --hash sha512 mymod.ko.xz  # writes mymod.ko")]
pub struct SignFileArgs {
    /// Private key (RSA or EC; PEM or DER, unencrypted).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The key's X.509 certificate (PEM or DER).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Signature digest.
    #[arg(long, value_enum, default_value_t = crate::sign::HashAlgorithm::Sha256)]
    pub hash: crate::sign::HashAlgorithm,
    /// The module (.ko; .ko.xz/.zst/.gz are signed decompressed).
    #[arg(value_name = "MODULE")]
    pub module: PathBuf,
    /// Where to write (default: in place; `foo.ko` next to a compressed `foo.ko.xz`).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Arguments of `kmmctl package`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  kmmctl package -k 6.1.0-56-amd64 --module-tree /tmp/lab/kernel brd null_blk \\
      --push 127.0.0.1:5000/kmod/blk:6.1.0-56-amd64 --insecure
  kmmctl package -k 6.1.0-56-amd64 --ko build/mymod.ko --firmware fw/my.bin \\
      --oci-dir /tmp/oci/mymod")]
pub struct PackageArgs {
    /// Kernel release the modules are for (`uname -r` of the target nodes).
    #[arg(long, short = 'k', value_name = "KVER")]
    pub kernel_version: String,
    /// Module names to take from --module-tree, with all their dependencies.
    #[arg(value_name = "MODULE")]
    pub modules: Vec<String>,
    /// Root of a module tree containing lib/modules/<KVER> (e.g. an unpacked linux-image .deb).
    #[arg(long, value_name = "DIR")]
    pub module_tree: Option<PathBuf>,
    /// Explicit module files (.ko, .ko.xz, .ko.zst, .ko.gz; decompressed into the image).
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub ko: Vec<PathBuf>,
    /// Where --ko files go, relative to lib/modules/<KVER>/.
    #[arg(long, value_name = "DIR", default_value = "extra")]
    pub subdir: String,
    /// Firmware files, FILE or FILE=DEST (DEST relative to --firmware-dir).
    #[arg(long, value_name = "FILE[=DEST]", num_args = 1..)]
    pub firmware: Vec<FirmwareInput>,
    /// Firmware directory in the image (the Module's firmwarePath).
    #[arg(long, value_name = "DIR", default_value = "/firmware")]
    pub firmware_dir: String,
    /// Module root in the image (the Module's dirName): modules go to <DIR>/lib/modules/<KVER>/.
    #[arg(long, value_name = "DIR", default_value = "/opt")]
    pub dir_name: String,
    /// Extra image label (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Image architecture.
    #[arg(long, value_name = "ARCH", default_value = "amd64")]
    pub arch: String,
    /// Timestamp for file mtimes and `created`; without it mtimes are 0 and there is no `created`.
    #[arg(long, value_name = "SECONDS", env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<u64>,
    /// Write the image as an OCI layout to this directory.
    #[arg(long, value_name = "DIR")]
    pub oci_dir: Option<PathBuf>,
    /// Tag recorded in the OCI layout's index.json (default: --push's tag, else KVER).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// Push to this reference, e.g. 127.0.0.1:5000/ns/brd:6.1.0-56-amd64 (tag defaults to KVER).
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    /// Use plain HTTP for the registry.
    #[arg(long)]
    pub insecure: bool,
    /// Use HTTPS without verifying the registry's certificate.
    #[arg(long)]
    pub insecure_skip_tls_verify: bool,
    /// Registry user name.
    #[arg(long, env = "KMMCTL_USERNAME", requires = "password")]
    pub username: Option<String>,
    /// Registry password.
    #[arg(
        long,
        env = "KMMCTL_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    pub password: Option<String>,
    /// Docker config JSON with registry credentials (like ~/.docker/config.json);
    /// entries match images as the kubelet matches pull secrets.
    #[arg(
        long,
        value_name = "FILE",
        env = "REGISTRY_AUTH_FILE",
        conflicts_with = "username"
    )]
    pub auth_file: Option<PathBuf>,
    /// depmod binary to use (default: found in PATH, /usr/sbin, /sbin).
    #[arg(long, value_name = "FILE", env = "KMMCTL_DEPMOD")]
    pub depmod: Option<PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}': expected KEY=VALUE")),
    }
}

impl PackageArgs {
    /// The library request these arguments describe.
    pub fn request(&self) -> PackageRequest {
        PackageRequest {
            kver: self.kernel_version.clone(),
            ko_files: self.ko.clone(),
            ko_subdir: self.subdir.clone(),
            module_tree: self.module_tree.clone(),
            module_names: self.modules.clone(),
            firmware: self.firmware.clone(),
            firmware_dir: self.firmware_dir.clone(),
            dir_name: self.dir_name.clone(),
            labels: self.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
            source_date_epoch: self.source_date_epoch,
            architecture: self.arch.clone(),
        }
    }
}

/// What a command prints on stdout and the process's exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Printed on stdout (a newline is added).
    pub stdout: String,
    /// The exit code (0 unless the command documents another).
    pub code: u8,
}

impl From<String> for Output {
    fn from(stdout: String) -> Self {
        Self { stdout, code: 0 }
    }
}

/// Runs a parsed command line; returns what to print on stdout and the exit code.
pub async fn run(cli: Cli) -> Result<Output, Error> {
    let flags = &cli.cluster;
    match cli.command {
        Command::Package(args) => run_package(&args).await.map(Output::from),
        Command::Explain(args) => Ok(crate::explain::run(&args, flags).await?.into()),
        Command::Rollout(args) => Ok(crate::rollout::run(&args, flags).await?),
        Command::Status(args) => Ok(crate::status::run(&args, flags).await?.into()),
        Command::Completion(args) => Ok(completion(args.shell, &program_name()).into()),
        Command::SignFile(args) => run_sign_file(&args).map(Output::from),
        Command::Sign(args) => run_sign(&args).await.map(Output::from),
    }
}

/// The executable name kubectl looks for on `PATH` for `kubectl kmm`.
pub const PLUGIN_NAME: &str = "kubectl-kmm";

/// The name kmmctl runs under: [`PLUGIN_NAME`] when installed as a kubectl plugin (a link or
/// copy named so), else `kmmctl`.
pub fn program_name() -> String {
    let invoked = std::env::args_os().next().map(PathBuf::from);
    match invoked.as_deref().and_then(std::path::Path::file_name) {
        Some(name) if name == PLUGIN_NAME => PLUGIN_NAME.to_string(),
        _ => "kmmctl".to_string(),
    }
}

/// The clap command; as the plugin its usage lines and errors say `kubectl kmm`.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let cmd = Cli::command();
    if program_name() == PLUGIN_NAME {
        cmd.bin_name("kubectl kmm")
    } else {
        cmd
    }
}

/// The completion script of `shell` for the executable `bin`.
pub fn completion(shell: clap_complete::Shell, bin: &str) -> String {
    use clap::CommandFactory;
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), bin, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// `kmmctl sign-file`: returns the path written.
pub fn run_sign_file(args: &SignFileArgs) -> Result<String, Error> {
    let signer = crate::sign::Signer::from_files(&args.key, &args.cert)?;
    let out = crate::sign::sign_file(&signer, args.hash, &args.module, args.output.as_deref())?;
    tracing::info!("signed {} ({})", args.module.display(), args.hash);
    Ok(out.display().to_string())
}

/// `kmmctl sign`: returns the pushed manifest digest.
pub async fn run_sign(args: &SignArgs) -> Result<String, Error> {
    use crate::sign::image::{FilePatterns, SignImageRequest, sign_image};
    // Everything that can be checked locally fails before any registry traffic.
    let signer = crate::sign::Signer::from_files(&args.key, &args.cert)?;
    FilePatterns::new(&args.files)?;
    let from = registry::parse_reference(&args.from, "latest")?;
    let to = registry::parse_reference(&args.to, "latest")?;
    let auth = |reference: &oci_client::Reference| match &args.docker_config {
        Some(file) => registry::auth_from_file(file, reference),
        None => Ok(RegistryAuth::Anonymous),
    };
    let req = SignImageRequest {
        from_opts: RegistryOptions {
            insecure: args.from_insecure,
            skip_tls_verify: args.from_insecure_skip_tls_verify,
            auth: auth(&from)?,
        },
        to_opts: RegistryOptions {
            insecure: args.to_insecure,
            skip_tls_verify: args.to_insecure_skip_tls_verify,
            auth: auth(&to)?,
        },
        from,
        to,
        files: args.files.clone(),
        hash: args.hash,
    };
    let started = Instant::now();
    let signed = sign_image(&req, &signer).await?;
    tracing::info!(
        "pushed {}@{} with {} signed file(s) in {:.2}s",
        req.to.whole(),
        signed.digest,
        signed.files.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(signed.digest)
}

/// `kmmctl package`: returns the manifest digest.
pub async fn run_package(args: &PackageArgs) -> Result<String, Error> {
    let depmod = match &args.depmod {
        Some(p) => Depmod::with_program(p),
        None => Depmod::find().map_err(package::Error::from)?,
    };
    let started = Instant::now();
    // Parse the reference first: a typo should fail before the work is done.
    let reference = args
        .push
        .as_deref()
        .map(|r| registry::parse_reference(r, &args.kernel_version))
        .transpose()?;
    let packaged = package::package(&args.request(), &depmod)?;
    let image = &packaged.image;
    tracing::info!(
        "image {} built in {:.2}s",
        image.manifest_digest,
        started.elapsed().as_secs_f64()
    );
    if let Some(dir) = &args.oci_dir {
        let tag = args
            .tag
            .clone()
            .or_else(|| reference.as_ref().and_then(|r| r.tag().map(str::to_string)))
            .unwrap_or_else(|| args.kernel_version.clone());
        layout::write(dir, image, &tag)?;
        tracing::info!("wrote OCI layout {}:{tag}", dir.display());
    }
    if let Some(reference) = &reference {
        let auth = match (&args.username, &args.password, &args.auth_file) {
            (Some(u), Some(p), _) => RegistryAuth::Basic(u.clone(), p.clone()),
            (_, _, Some(file)) => registry::auth_from_file(file, reference)?,
            _ => RegistryAuth::Anonymous,
        };
        let opts = RegistryOptions {
            insecure: args.insecure,
            skip_tls_verify: args.insecure_skip_tls_verify,
            auth,
        };
        let pushed = Instant::now();
        let digest = registry::push(image, reference, &opts).await?;
        tracing::info!(
            "pushed {}@{digest} in {:.2}s (total {:.2}s)",
            reference.whole(),
            pushed.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        return Ok(digest);
    }
    Ok(image.manifest_digest.clone())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn kubectls_flags_are_accepted_anywhere_on_the_line() {
        for args in [
            &["status", "-n", "drivers", "--context", "prod", "gpu"][..],
            &["--context", "prod", "-n", "drivers", "status", "gpu"][..],
            &["status", "gpu", "--namespace=drivers", "--context=prod"][..],
        ] {
            let cli = Cli::try_parse_from(std::iter::once(&"kmmctl").chain(args)).unwrap();
            assert_eq!(
                cli.cluster.namespace.as_deref(),
                Some("drivers"),
                "{args:?}"
            );
            assert_eq!(cli.cluster.context.as_deref(), Some("prod"), "{args:?}");
            assert!(
                matches!(&cli.command, Command::Status(s) if s.module.as_deref() == Some("gpu"))
            );
        }
        let cli =
            Cli::try_parse_from(["kmmctl", "explain", "brd", "--kubeconfig", "/k", "-n", "x"])
                .unwrap();
        assert_eq!(cli.cluster.kubeconfig, Some(PathBuf::from("/k")));
        // -A and a Module name exclude each other, as for kubectl get.
        assert!(Cli::try_parse_from(["kmmctl", "status", "-A", "gpu"]).is_err());
    }

    #[test]
    fn completion_scripts_complete_the_binary_they_are_made_for() {
        let bash = completion(clap_complete::Shell::Bash, PLUGIN_NAME);
        assert!(bash.contains("kubectl-kmm"), "{bash}");
        assert!(bash.contains("status"), "{bash}");
        let zsh = completion(clap_complete::Shell::Zsh, "kmmctl");
        assert!(zsh.starts_with("#compdef kmmctl"), "{zsh}");
        let fish = completion(clap_complete::Shell::Fish, "kmmctl");
        assert!(fish.contains("explain"), "{fish}");
    }
}
