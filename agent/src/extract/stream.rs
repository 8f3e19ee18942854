//! Turning a layer blob into a tar byte stream: media types, compression
//! sniffing, and a reader that enforces the size budget and remembers where
//! an error came from (the decompressor or the source) for a clear message.

use std::io::{self, BufRead, BufReader, Read};

use flate2::bufread::MultiGzDecoder;

use super::ExtractError;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (also multi-member gzip as written by pigz).
    Gzip,
    /// Look at the first bytes: gzip magic means gzip, anything else plain tar.
    Auto,
}

/// Media types of tar layers (OCI and Docker v2); the `+gzip` / `.gzip` ones are gzip.
const PLAIN: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
];
const GZIP: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];
const ZSTD: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

impl Compression {
    /// Maps a layer media type from a manifest. Unknown types are refused
    /// rather than guessed, so an artifact that is not a filesystem layer
    /// (a signature, an SBOM) is never unpacked over the image.
    pub fn from_media_type(media_type: &str) -> Result<Self, ExtractError> {
        if PLAIN.contains(&media_type) {
            Ok(Self::None)
        } else if GZIP.contains(&media_type) {
            Ok(Self::Gzip)
        } else if ZSTD.contains(&media_type) {
            Err(ExtractError::UnsupportedCompression { kind: "zstd" })
        } else {
            Err(ExtractError::UnsupportedMediaType {
                media_type: media_type.to_owned(),
            })
        }
    }
}

/// Opens the decompressed tar stream. Returns it and whether it is gzip.
pub(crate) fn open<'a>(
    reader: impl Read + 'a,
    compression: Compression,
) -> Result<(Box<dyn Read + 'a>, bool), ExtractError> {
    let mut buffered = BufReader::with_capacity(64 * 1024, reader);
    let gzip = match compression {
        Compression::None => false,
        Compression::Gzip => true,
        Compression::Auto => {
            let head = buffered
                .fill_buf()
                .map_err(|source| ExtractError::Read { source })?;
            sniff(head)?
        }
    };
    if gzip {
        Ok((Box::new(MultiGzDecoder::new(buffered)), true))
    } else {
        Ok((Box::new(buffered), false))
    }
}

fn sniff(head: &[u8]) -> Result<bool, ExtractError> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(true)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(ExtractError::UnsupportedCompression { kind: "zstd" })
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Err(ExtractError::UnsupportedCompression { kind: "xz" })
    } else if head.starts_with(b"BZh") {
        Err(ExtractError::UnsupportedCompression { kind: "bzip2" })
    } else {
        Ok(false)
    }
}

/// Counts decompressed bytes against a budget and records errors from the
/// inner stream, so the caller can tell "gzip stream truncated" from a tar
/// format error when the tar reader hands back a bare `io::Error`.
pub(crate) struct Tap<'a> {
    inner: Box<dyn Read + 'a>,
    /// Bytes read so far.
    pub(crate) read: u64,
    budget: u64,
    /// The budget was exceeded.
    pub(crate) over_budget: bool,
    /// The last error the inner stream returned.
    pub(crate) inner_error: Option<io::Error>,
}

impl<'a> Tap<'a> {
    pub(crate) fn new(inner: Box<dyn Read + 'a>, budget: u64) -> Self {
        Self {
            inner,
            read: 0,
            budget,
            over_budget: false,
            inner_error: None,
        }
    }
}

impl Read for Tap<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read >= self.budget {
            // One byte past the budget is enough to know it is exceeded.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe) {
                Ok(0) => Ok(0),
                Ok(_) => {
                    self.over_budget = true;
                    Err(io::Error::other("uncompressed size limit exceeded"))
                }
                Err(e) => Err(self.remember(e)),
            };
        }
        let room = usize::try_from(self.budget - self.read).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        match self.inner.read(&mut buf[..want]) {
            Ok(n) => {
                self.read += n as u64;
                Ok(n)
            }
            Err(e) => Err(self.remember(e)),
        }
    }
}

impl Tap<'_> {
    fn remember(&mut self, e: io::Error) -> io::Error {
        let copy = io::Error::new(e.kind(), e.to_string());
        self.inner_error = Some(e);
        copy
    }

    /// Turns an error seen by the tar reader into the most precise variant.
    pub(crate) fn classify(&mut self, err: io::Error, gzip: bool, max_total: u64) -> ExtractError {
        if self.over_budget {
            return ExtractError::TooLarge { max: max_total };
        }
        if let Some(inner) = self.inner_error.take() {
            return match (gzip, inner.kind()) {
                (true, io::ErrorKind::UnexpectedEof) => ExtractError::GzipTruncated,
                (true, _) => ExtractError::GzipCorrupt {
                    message: inner.to_string(),
                },
                (false, _) => ExtractError::Read { source: inner },
            };
        }
        // The tar crate reports some short reads as `Other("unexpected EOF ...")`.
        if err.kind() == io::ErrorKind::UnexpectedEof || err.to_string().contains("unexpected EOF")
        {
            ExtractError::TarTruncated
        } else {
            ExtractError::TarCorrupt {
                message: err.to_string(),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn media_types_map_to_compression() {
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip").unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip")
                .unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar").unwrap(),
            Compression::None
        );
        assert!(matches!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Err(ExtractError::UnsupportedCompression { kind: "zstd" })
        ));
        let err = Compression::from_media_type("application/vnd.dev.cosign.simplesigning.v1+json")
            .unwrap_err();
        assert!(
            err.to_string().contains("unsupported layer media type"),
            "{err}"
        );
    }

    #[test]
    fn sniffing_detects_gzip_and_refuses_other_compressors() {
        assert!(sniff(&[0x1f, 0x8b, 8, 0]).unwrap());
        assert!(!sniff(b"opt/\0\0\0").unwrap());
        assert!(!sniff(b"").unwrap());
        assert!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]).is_err());
        assert!(sniff(b"BZh91AY").is_err());
    }

    #[test]
    fn tap_stops_at_the_budget() {
        let data = [7u8; 100];
        let mut tap = Tap::new(Box::new(&data[..]), 10);
        let mut out = Vec::new();
        let err = tap.read_to_end(&mut out).unwrap_err();
        assert!(tap.over_budget, "{err}");
        assert_eq!(out.len(), 10);
        let mut exact = Tap::new(Box::new(&data[..]), 100);
        assert_eq!(exact.read_to_end(&mut Vec::new()).unwrap(), 100);
    }
}
