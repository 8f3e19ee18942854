//! The detached CMS SignedData that `scripts/sign-file` produces with
//! `CMS_NOCERTS | CMS_BINARY | CMS_DETACHED | CMS_NOATTR | CMS_NOSMIMECAP`:
//! no certificates, no signed attributes (the signature is over the module
//! bytes themselves), the signer identified by issuer and serial number.
//!
//! The structure is built from the typed RFC 5652 structs of the `cms` crate
//! and DER-encoded by `der`; the signature value itself comes from OpenSSL.
//! (The openssl crate's `CmsContentInfo::sign` would build the same bytes but
//! always uses the key's default digest, so sha384/sha512 would be impossible.)

use cms::cert::IssuerAndSerialNumber;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5911, rfc5912};
use der::asn1::{Any, OctetString, SetOfVec};
use der::{Decode, Encode};
use x509_cert::spki::AlgorithmIdentifierOwned;

use super::HashAlgorithm;

/// Key types the kernel can verify module signatures with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    Ec,
}

impl HashAlgorithm {
    fn digest_oid(self) -> ObjectIdentifier {
        match self {
            HashAlgorithm::Sha256 => rfc5912::ID_SHA_256,
            HashAlgorithm::Sha384 => rfc5912::ID_SHA_384,
            HashAlgorithm::Sha512 => rfc5912::ID_SHA_512,
        }
    }

    /// The algorithm named by a digest OID, if it is one of ours.
    pub(crate) fn from_oid(oid: &ObjectIdentifier) -> Option<Self> {
        [Self::Sha256, Self::Sha384, Self::Sha512]
            .into_iter()
            .find(|h| &h.digest_oid() == oid)
    }
}

/// DER `ContentInfo` holding the SignedData for `signature` (made over the
/// module with `hash`) by the certificate `cert_der`.
pub(crate) fn build(
    cert_der: &[u8],
    kind: KeyKind,
    hash: HashAlgorithm,
    signature: Vec<u8>,
) -> Result<Vec<u8>, der::Error> {
    let cert = x509_cert::Certificate::from_der(cert_der)?;
    // SHA-2 digest AlgorithmIdentifiers carry no parameters (OpenSSL omits them too).
    let digest_alg = AlgorithmIdentifierOwned {
        oid: hash.digest_oid(),
        parameters: None,
    };
    // As OpenSSL's CMS code writes them: rsaEncryption with NULL parameters
    // (the hash is in digestAlgorithm), ecdsa-with-SHAxxx without parameters.
    let signature_algorithm = match kind {
        KeyKind::Rsa => AlgorithmIdentifierOwned {
            oid: rfc5912::RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        KeyKind::Ec => AlgorithmIdentifierOwned {
            oid: match hash {
                HashAlgorithm::Sha256 => rfc5912::ECDSA_WITH_SHA_256,
                HashAlgorithm::Sha384 => rfc5912::ECDSA_WITH_SHA_384,
                HashAlgorithm::Sha512 => rfc5912::ECDSA_WITH_SHA_512,
            },
            parameters: None,
        },
    };
    let signer = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: cert.tbs_certificate.issuer,
            serial_number: cert.tbs_certificate.serial_number,
        }),
        digest_alg: digest_alg.clone(),
        signed_attrs: None,
        signature_algorithm,
        signature: OctetString::new(signature)?,
        unsigned_attrs: None,
    };
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![digest_alg])?,
        // Detached: the content type only, the module is not embedded.
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: rfc5911::ID_DATA,
            econtent: None,
        },
        certificates: None,
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer])?),
    };
    ContentInfo {
        content_type: rfc5911::ID_SIGNED_DATA,
        content: Any::encode_from(&signed)?,
    }
    .to_der()
}

/// What a module's PKCS#7 blob says about its signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerSummary {
    /// The digest algorithm, if it is sha256/384/512.
    pub hash: Option<HashAlgorithm>,
    /// Issuer name of the signing certificate (RFC 4514 string).
    pub issuer: String,
    /// Serial number of the signing certificate, hex.
    pub serial: String,
    /// Whether certificates are embedded (sign-file never embeds any).
    pub has_certificates: bool,
    /// Whether the signer has signed attributes (sign-file adds none).
    pub has_signed_attributes: bool,
    /// Whether the content is embedded (sign-file signatures are detached).
    pub has_content: bool,
}

/// Decodes a module's PKCS#7 blob (no signature check: that needs the content
/// and the certificate, see OpenSSL's `cms -verify`).
pub(crate) fn summarize(blob: &[u8]) -> Result<SignerSummary, der::Error> {
    let info = ContentInfo::from_der(blob)?;
    if info.content_type != rfc5911::ID_SIGNED_DATA {
        return Err(der::Tag::Sequence.value_error());
    }
    let signed: SignedData = info.content.decode_as()?;
    let signer = signed
        .signer_infos
        .0
        .iter()
        .next()
        .ok_or_else(|| der::Tag::Set.value_error())?;
    let (issuer, serial) = match &signer.sid {
        SignerIdentifier::IssuerAndSerialNumber(isn) => (
            isn.issuer.to_string(),
            hex::encode(isn.serial_number.as_bytes()),
        ),
        SignerIdentifier::SubjectKeyIdentifier(ski) => {
            (String::new(), hex::encode(ski.0.as_bytes()))
        }
    };
    Ok(SignerSummary {
        hash: HashAlgorithm::from_oid(&signer.digest_alg.oid),
        issuer,
        serial,
        has_certificates: signed.certificates.is_some(),
        has_signed_attributes: signer.signed_attrs.is_some(),
        has_content: signed.encap_content_info.econtent.is_some(),
    })
}
