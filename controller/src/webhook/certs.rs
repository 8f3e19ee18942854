//! Serving certificates: loaded from a directory (`tls.crt`, `tls.key`, e.g.
//! a cert-manager Secret mount) or self-managed: a fresh CA and a serving
//! certificate signed by it, whose CA PEM goes into the webhook
//! configuration's `caBundle`.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed to generate a key or sign a certificate.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file could not be read or parsed.
    #[error("reading {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// PEM-encoded serving material; `ca_pem` is what clients must trust.
#[derive(Clone)]
pub struct ServingCert {
    /// The CA certificate (PEM) for the `caBundle`; `None` when loaded from a
    /// directory (whoever issued it manages the bundle).
    pub ca_pem: Option<String>,
    /// Serving certificate chain (PEM).
    pub cert_pem: String,
    /// Serving key (PEM, PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("ServingCert")
            .field("self_managed", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// A new CA and a serving certificate for `hosts` (DNS names or IP addresses).
    ///
    /// # Errors
    /// If rcgen fails.
    pub fn self_signed(hosts: &[String]) -> Result<Self, CertError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kmm-webhook-ca");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            hosts.first().map_or("kmm-webhook", String::as_str),
        );
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem: Some(ca_cert.pem()),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads `tls.crt` and `tls.key` from `dir`.
    ///
    /// # Errors
    /// If either file is missing or unreadable.
    pub fn from_dir(dir: &Path) -> Result<Self, CertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| CertError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        };
        Ok(Self {
            ca_pem: None,
            cert_pem: read("tls.crt")?,
            key_pem: read("tls.key")?,
        })
    }

    /// The chain and key in rustls' types.
    ///
    /// # Errors
    /// If the PEM does not parse or holds no certificate or key.
    pub fn rustls_material(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
        let bad = |what: &str, message: String| CertError::Read {
            path: what.to_string(),
            message,
        };
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("serving certificate", e.to_string()))?;
        if chain.is_empty() {
            return Err(bad("serving certificate", "no CERTIFICATE block".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| bad("serving key", e.to_string()))?;
        Ok((chain, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_material_parses() {
        let c =
            ServingCert::self_signed(&["127.0.0.1".into(), "kmm-webhook.kmm-system.svc".into()])
                .unwrap();
        assert!(c.ca_pem.as_deref().unwrap().contains("BEGIN CERTIFICATE"));
        let (chain, _key) = c.rustls_material().unwrap();
        assert_eq!(chain.len(), 1);
        assert!(format!("{c:?}").contains("self_managed: true"));
        assert!(!format!("{c:?}").contains("PRIVATE"));
    }

    #[test]
    fn from_dir_reports_missing_files() {
        let dir = std::env::temp_dir().join("kmm-webhook-certs-missing");
        let err = ServingCert::from_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("tls.crt"), "{err}");
    }
}
