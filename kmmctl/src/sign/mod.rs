//! Kernel module signing, byte for byte as the kernel's `scripts/sign-file`
//! does it, and the same for the modules inside a kmod image.
//!
//! # The format
//! A signed module is (include/linux/module_signature.h, scripts/sign-file.c,
//! checked by kernel/module_signature.c `mod_check_sig()` and
//! kernel/module/signing.c `mod_verify_sig()`):
//!
//! ```text
//! +-------------------+------------------------+------------------------+-------------------------------+
//! | module (ELF) bytes | PKCS#7 (DER), sig_len B | struct module_signature | "~Module signature appended~\n" |
//! +-------------------+------------------------+------------------------+-------------------------------+
//!                                                 algo=0 hash=0 id_type=2
//!                                                 signer_len=0 key_id_len=0
//!                                                 __pad[3]=0, __be32 sig_len
//! ```
//!
//! The PKCS#7 blob is a CMS SignedData as sign-file creates it with
//! `CMS_NOCERTS | CMS_BINARY | CMS_DETACHED | CMS_NOATTR | CMS_NOSMIMECAP`:
//! detached (the module is not embedded), no certificates, no signed
//! attributes (the signature is over the module bytes directly), and the signer
//! identified by the certificate's issuer and serial number, which the kernel
//! matches against the keys in its `.builtin_trusted_keys` / `.secondary` /
//! `.platform` keyrings. `modinfo` shows that signer as `signer:` (the
//! certificate's CN), `sig_key:` (the serial) and `sig_hashalgo:`.
//!
//! # Differences from sign-file
//! * An already-signed module has its signature replaced, not stacked
//!   (sign-file appends a second one, which the kernel never looks at).
//! * Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`): the kernel checks
//!   the signature of the *decompressed* module, so [`sign_file`] decompresses
//!   and writes a signed plain `.ko` (by default next to the input, which is
//!   left alone; kmod loads either). The image flow only signs plain `.ko`
//!   files (`kmmctl package` always ships them decompressed).
//!
//! Keys: RSA or EC, PEM or DER (PKCS#1/SEC1 or PKCS#8, unencrypted; a PEM file
//! holding both key and certificate, like the kernel's `signing_key.pem`,
//! works). Certificates: PEM or DER X.509 (the kernel's `signing_key.x509` and
//! upstream KMM's `--from-file=cert=...der` secrets are DER).
//!
//! With an RSA key the output is byte-identical to Debian's build of
//! `scripts/sign-file` for sha256, sha384 and sha512 (checked by
//! `kmmctl/tests/sign_file.rs`); ECDSA signatures are randomised by nature.

pub mod image;
mod merged;
mod pkcs7;
pub mod trailer;

use std::path::{Path, PathBuf};

use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private};
use openssl::x509::X509;

pub use pkcs7::SignerSummary;
pub use trailer::{Appended, TrailerError};

/// Errors while signing modules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key or certificate file cannot be read.
    #[error("cannot read {what} {path}")]
    Read {
        /// "key" or "certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The private key does not parse (or is encrypted).
    #[error("{path}: not an unencrypted PEM or DER private key")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// OpenSSL's reasons.
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// The certificate does not parse.
    #[error("{path}: not a PEM or DER X.509 certificate")]
    BadCert {
        /// The file.
        path: PathBuf,
        /// OpenSSL's or the DER decoder's reasons.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The key is of a type the kernel cannot verify module signatures with.
    #[error("{path}: {kind} keys are not supported (RSA or EC only)")]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// OpenSSL's name of the key type.
        kind: String,
    },
    /// The private key does not belong to the certificate.
    #[error("private key {key} does not match the public key of certificate {cert}")]
    KeyMismatch {
        /// Key file.
        key: PathBuf,
        /// Certificate file.
        cert: PathBuf,
    },
    /// The module already ends in a signature the kernel would refuse.
    #[error("{module}: malformed appended signature")]
    Malformed {
        /// The module.
        module: String,
        /// What is wrong.
        #[source]
        source: TrailerError,
    },
    /// OpenSSL failed to sign.
    #[error("signing {module} failed")]
    Crypto {
        /// The module.
        module: String,
        /// Cause.
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// Encoding the CMS structure failed.
    #[error("encoding the PKCS#7 signature of {module} failed: {source}")]
    Encode {
        /// The module.
        module: String,
        /// Cause.
        source: der::Error,
    },
    /// The module file cannot be read or decompressed.
    #[error(transparent)]
    ReadModule(#[from] crate::decompress::Error),
    /// The signed module cannot be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Digest of the module signature (sign-file's first argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HashAlgorithm {
    /// SHA-256 (the kernel's default, `CONFIG_MODULE_SIG_SHA256`).
    #[default]
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlgorithm {
    /// The name `modinfo` prints as `sig_hashalgo`.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha384 => "sha384",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    fn message_digest(self) -> MessageDigest {
        match self {
            HashAlgorithm::Sha256 => MessageDigest::sha256(),
            HashAlgorithm::Sha384 => MessageDigest::sha384(),
            HashAlgorithm::Sha512 => MessageDigest::sha512(),
        }
    }
}

impl std::fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A private key and its certificate, checked to belong together.
pub struct Signer {
    key: PKey<Private>,
    kind: pkcs7::KeyKind,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Signer")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

fn is_pem(data: &[u8]) -> bool {
    data.windows(11).any(|w| w == b"-----BEGIN ")
}

impl Signer {
    /// Loads a key and a certificate, each PEM or DER.
    ///
    /// # Errors
    /// Unreadable or unparsable files, a key type other than RSA/EC, or a key
    /// that is not the certificate's.
    pub fn from_files(key: &Path, cert: &Path) -> Result<Self> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| Error::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        Self::from_bytes(&read("key", key)?, key, &read("certificate", cert)?, cert)
    }

    /// [`Signer::from_files`] on contents already read; the paths are for messages.
    ///
    /// # Errors
    /// As [`Signer::from_files`].
    pub fn from_bytes(key: &[u8], key_path: &Path, cert: &[u8], cert_path: &Path) -> Result<Self> {
        let pkey = if is_pem(key) {
            PKey::private_key_from_pem(key)
        } else {
            // d2i_AutoPrivateKey: PKCS#1 / SEC1; PKCS#8 as the fallback.
            PKey::private_key_from_der(key).or_else(|_| PKey::private_key_from_pkcs8(key))
        }
        .map_err(|source| Error::BadKey {
            path: key_path.to_path_buf(),
            source,
        })?;
        let kind = match pkey.id() {
            Id::RSA => pkcs7::KeyKind::Rsa,
            Id::EC => pkcs7::KeyKind::Ec,
            other => {
                return Err(Error::UnsupportedKey {
                    path: key_path.to_path_buf(),
                    kind: format!("{other:?}"),
                });
            }
        };
        let bad_cert = |source: Box<dyn std::error::Error + Send + Sync>| Error::BadCert {
            path: cert_path.to_path_buf(),
            source,
        };
        let x509 = if is_pem(cert) {
            X509::from_pem(cert)
        } else {
            X509::from_der(cert)
        }
        .map_err(|e| bad_cert(Box::new(e)))?;
        let public = x509.public_key().map_err(|e| bad_cert(Box::new(e)))?;
        if !public.public_eq(&pkey) {
            return Err(Error::KeyMismatch {
                key: key_path.to_path_buf(),
                cert: cert_path.to_path_buf(),
            });
        }
        let cert_der = x509.to_der().map_err(|e| bad_cert(Box::new(e)))?;
        // The CMS builder re-reads issuer and serial from the DER: check it decodes now.
        <x509_cert::Certificate as der::Decode>::from_der(&cert_der)
            .map_err(|e| bad_cert(Box::new(e)))?;
        Ok(Self {
            key: pkey,
            kind,
            cert_der,
        })
    }

    /// The detached PKCS#7 signature of `content`, as sign-file makes it.
    /// `name` is for messages.
    ///
    /// # Errors
    /// OpenSSL or DER encoding failures.
    pub fn pkcs7(&self, content: &[u8], hash: HashAlgorithm, name: &str) -> Result<Vec<u8>> {
        let crypto = |source| Error::Crypto {
            module: name.to_string(),
            source,
        };
        // RSA: PKCS#1 v1.5 over the DigestInfo (OpenSSL's default padding);
        // EC: a DER ECDSA-Sig-Value. Both are what CMS puts in SignerInfo.signature.
        let mut signer =
            openssl::sign::Signer::new(hash.message_digest(), &self.key).map_err(crypto)?;
        signer.update(content).map_err(crypto)?;
        let signature = signer.sign_to_vec().map_err(crypto)?;
        pkcs7::build(&self.cert_der, self.kind, hash, signature).map_err(|source| Error::Encode {
            module: name.to_string(),
            source,
        })
    }

    /// Signs a module: strips any signature it has, appends a new one.
    /// `name` is for messages.
    ///
    /// # Errors
    /// A malformed existing signature, or signing failures.
    pub fn sign_module(&self, module: &[u8], hash: HashAlgorithm, name: &str) -> Result<Vec<u8>> {
        let unsigned = trailer::strip(module).map_err(|source| Error::Malformed {
            module: name.to_string(),
            source,
        })?;
        let pkcs7 = self.pkcs7(unsigned, hash, name)?;
        trailer::append(unsigned, &pkcs7).map_err(|source| Error::Malformed {
            module: name.to_string(),
            source,
        })
    }
}

/// What is known about a module's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInfo {
    /// Where things are in the file.
    pub appended: Appended,
    /// The decoded PKCS#7 signer, if the blob decodes.
    pub signer: Option<SignerSummary>,
}

/// Whether and how a module is signed: `Ok(None)` when it has no appended
/// signature.
///
/// # Errors
/// A trailer the kernel would refuse.
pub fn inspect(module: &[u8]) -> Result<Option<SignatureInfo>, TrailerError> {
    Ok(trailer::parse(module)?.map(|appended| SignatureInfo {
        signer: pkcs7::summarize(&module[appended.signature.clone()]).ok(),
        appended,
    }))
}

/// Where [`sign_file`] writes by default: in place for a plain `.ko`, the
/// decompressed name (`foo.ko` for `foo.ko.xz`) next to a compressed one.
pub fn default_output(module: &Path) -> PathBuf {
    let name = module
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (stem, compression) = crate::decompress::split_suffix(&name);
    if compression == crate::decompress::Compression::None {
        module.to_path_buf()
    } else {
        module.with_file_name(stem)
    }
}

/// Signs a module file (`kmmctl sign-file`). Compressed modules are signed
/// decompressed (see the module docs). The output replaces its target
/// atomically and keeps the input's permissions. Returns the path written.
///
/// # Errors
/// Reading, signing or writing failures, each naming the file.
pub fn sign_file(
    signer: &Signer,
    hash: HashAlgorithm,
    module: &Path,
    output: Option<&Path>,
) -> Result<PathBuf> {
    let data = crate::decompress::read_module(module)?;
    let signed = signer.sign_module(&data, hash, &module.display().to_string())?;
    let out = output.map_or_else(|| default_output(module), Path::to_path_buf);
    let write_err = |source| Error::Write {
        path: out.clone(),
        source,
    };
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    std::io::Write::write_all(&mut tmp, &signed).map_err(write_err)?;
    let perms = std::fs::metadata(module)
        .map_err(|source| Error::Write {
            path: module.to_path_buf(),
            source,
        })?
        .permissions();
    tmp.as_file().set_permissions(perms).map_err(write_err)?;
    tmp.persist(&out).map_err(|e| write_err(e.error))?;
    Ok(out)
}

#[cfg(test)]
mod tests;
