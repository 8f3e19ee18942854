//! The trailer the kernel looks for at the end of a signed module:
//! `struct module_signature` (include/linux/module_signature.h) followed by
//! the magic string, parsed the way `mod_check_sig()` (kernel/module_signature.c)
//! checks it.

use std::ops::Range;

/// `MODULE_SIG_STRING`: the last bytes of every signed module.
pub const MAGIC: &[u8] = b"~Module signature appended~\n";
/// `PKEY_ID_PKCS7`: the only `id_type` the kernel accepts.
pub const PKEY_ID_PKCS7: u8 = 2;
/// `sizeof(struct module_signature)`.
pub const INFO_LEN: usize = 12;
/// Everything after the PKCS#7 blob: the struct plus the magic (40 bytes).
pub const TRAILER_LEN: usize = INFO_LEN + MAGIC.len();

/// `struct module_signature`, as found in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleSignature {
    /// Public-key crypto algorithm (0 for PKCS#7: it is inside the blob).
    pub algo: u8,
    /// Digest algorithm (0 for PKCS#7).
    pub hash: u8,
    /// Key identifier type ([`PKEY_ID_PKCS7`]).
    pub id_type: u8,
    /// Length of the signer's name (0 for PKCS#7).
    pub signer_len: u8,
    /// Length of the key identifier (0 for PKCS#7).
    pub key_id_len: u8,
    /// Length of the signature blob, stored big-endian.
    pub sig_len: u32,
}

impl ModuleSignature {
    /// What `scripts/sign-file` writes for a PKCS#7 signature of `sig_len` bytes.
    pub fn pkcs7(sig_len: u32) -> Self {
        Self {
            algo: 0,
            hash: 0,
            id_type: PKEY_ID_PKCS7,
            signer_len: 0,
            key_id_len: 0,
            sig_len,
        }
    }

    /// The 12 bytes of the struct: five `u8`, `__pad[3]`, `__be32 sig_len`.
    pub fn to_bytes(&self) -> [u8; INFO_LEN] {
        let len = self.sig_len.to_be_bytes();
        [
            self.algo,
            self.hash,
            self.id_type,
            self.signer_len,
            self.key_id_len,
            0,
            0,
            0,
            len[0],
            len[1],
            len[2],
            len[3],
        ]
    }

    fn from_bytes(b: &[u8; INFO_LEN]) -> Self {
        Self {
            algo: b[0],
            hash: b[1],
            id_type: b[2],
            signer_len: b[3],
            key_id_len: b[4],
            sig_len: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
}

/// Why a module that ends in [`MAGIC`] is not a well-formed signed module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrailerError {
    /// The file is too short to hold the struct after the magic.
    #[error("file ends in the signature magic but is too short for struct module_signature")]
    Truncated,
    /// `sig_len` points before the start of the file.
    #[error("signature length {sig_len} is larger than the file")]
    SigLenTooLarge {
        /// The declared length.
        sig_len: u32,
    },
    /// Not a PKCS#7 signature, or non-zero fields the kernel rejects with EBADMSG.
    #[error(
        "struct module_signature is not a PKCS#7 one (id_type {id_type}, algo {algo}, hash {hash}, signer_len {signer_len}, key_id_len {key_id_len})"
    )]
    NotPkcs7 {
        /// `id_type`.
        id_type: u8,
        /// `algo`.
        algo: u8,
        /// `hash`.
        hash: u8,
        /// `signer_len`.
        signer_len: u8,
        /// `key_id_len`.
        key_id_len: u8,
    },
}

/// An appended signature found in a module file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The struct as found.
    pub info: ModuleSignature,
    /// Length of the module proper (what the signature covers).
    pub module_len: usize,
    /// Byte range of the PKCS#7 blob in the file.
    pub signature: Range<usize>,
}

/// Finds the appended signature: `Ok(None)` for an unsigned module (no
/// magic), an error for a trailer the kernel would refuse.
///
/// # Errors
/// [`TrailerError`] when the file ends in the magic but the struct is
/// truncated, inconsistent or not PKCS#7.
pub fn parse(file: &[u8]) -> Result<Option<Appended>, TrailerError> {
    let Some(body) = file.strip_suffix(MAGIC) else {
        return Ok(None);
    };
    let info_start = body
        .len()
        .checked_sub(INFO_LEN)
        .ok_or(TrailerError::Truncated)?;
    let mut raw = [0u8; INFO_LEN];
    raw.copy_from_slice(&body[info_start..]);
    let info = ModuleSignature::from_bytes(&raw);
    if info.id_type != PKEY_ID_PKCS7
        || info.algo != 0
        || info.hash != 0
        || info.signer_len != 0
        || info.key_id_len != 0
    {
        return Err(TrailerError::NotPkcs7 {
            id_type: info.id_type,
            algo: info.algo,
            hash: info.hash,
            signer_len: info.signer_len,
            key_id_len: info.key_id_len,
        });
    }
    let module_len =
        info_start
            .checked_sub(info.sig_len as usize)
            .ok_or(TrailerError::SigLenTooLarge {
                sig_len: info.sig_len,
            })?;
    Ok(Some(Appended {
        info,
        module_len,
        signature: module_len..info_start,
    }))
}

/// The module without its appended signature (the whole file if unsigned).
///
/// # Errors
/// As [`parse`].
pub fn strip(file: &[u8]) -> Result<&[u8], TrailerError> {
    Ok(match parse(file)? {
        Some(a) => &file[..a.module_len],
        None => file,
    })
}

/// `module` + `pkcs7` + `struct module_signature` + magic, as sign-file writes it.
pub fn append(module: &[u8], pkcs7: &[u8]) -> Result<Vec<u8>, TrailerError> {
    let sig_len = u32::try_from(pkcs7.len())
        .map_err(|_| TrailerError::SigLenTooLarge { sig_len: u32::MAX })?;
    let mut out = Vec::with_capacity(module.len() + pkcs7.len() + TRAILER_LEN);
    out.extend_from_slice(module);
    out.extend_from_slice(pkcs7);
    out.extend_from_slice(&ModuleSignature::pkcs7(sig_len).to_bytes());
    out.extend_from_slice(MAGIC);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_layout_is_byte_exact() {
        let signed = append(b"\x7fELFbody", &[0xAA; 0x0102]).unwrap();
        let tail = &signed[signed.len() - TRAILER_LEN..];
        // algo, hash, id_type=2, signer_len, key_id_len, pad[3], be32 sig_len
        assert_eq!(&tail[..12], &[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x02]);
        assert_eq!(&tail[12..], b"~Module signature appended~\n");
        assert_eq!(TRAILER_LEN, 40);
        let a = parse(&signed).unwrap().unwrap();
        assert_eq!(a.module_len, 8);
        assert_eq!(a.signature, 8..8 + 0x102);
        assert_eq!(a.info, ModuleSignature::pkcs7(0x102));
        assert_eq!(strip(&signed).unwrap(), b"\x7fELFbody");
    }

    #[test]
    fn unsigned_module_has_no_trailer() {
        assert_eq!(parse(b"\x7fELF plain").unwrap(), None);
        assert_eq!(strip(b"\x7fELF plain").unwrap(), b"\x7fELF plain");
    }

    #[test]
    fn inconsistent_trailers_are_refused() {
        assert_eq!(parse(MAGIC), Err(TrailerError::Truncated));
        let mut too_long = b"xy".to_vec();
        too_long.extend_from_slice(&ModuleSignature::pkcs7(3).to_bytes());
        too_long.extend_from_slice(MAGIC);
        assert_eq!(
            parse(&too_long),
            Err(TrailerError::SigLenTooLarge { sig_len: 3 })
        );
        let mut not_pkcs7 = b"sig".to_vec();
        let mut info = ModuleSignature::pkcs7(3);
        info.id_type = 1; // PKEY_ID_X509
        not_pkcs7.extend_from_slice(&info.to_bytes());
        not_pkcs7.extend_from_slice(MAGIC);
        assert!(matches!(
            parse(&not_pkcs7),
            Err(TrailerError::NotPkcs7 { id_type: 1, .. })
        ));
    }
}
