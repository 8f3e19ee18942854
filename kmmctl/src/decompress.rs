//! Reading module files, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz`
//! (pure-Rust decoders: lzma-rs, ruzstd, flate2), so the image always ships
//! plain `.ko` files that any kmod can load.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Errors while reading a module file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The compressed data is corrupt.
    #[error("cannot decompress {path}: {message}")]
    Decompress {
        /// The file.
        path: PathBuf,
        /// Decoder message.
        message: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a module file is compressed, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain `.ko`.
    None,
    /// `.ko.xz`.
    Xz,
    /// `.ko.zst`.
    Zstd,
    /// `.ko.gz`.
    Gzip,
}

/// Splits `foo.ko.xz` into (`foo.ko`, Xz). Names without a known compression
/// suffix are returned unchanged with [`Compression::None`].
pub fn split_suffix(name: &str) -> (&str, Compression) {
    for (suffix, c) in [
        (".xz", Compression::Xz),
        (".zst", Compression::Zstd),
        (".gz", Compression::Gzip),
    ] {
        if let Some(stem) = name.strip_suffix(suffix) {
            return (stem, c);
        }
    }
    (name, Compression::None)
}

/// Reads a module file, decompressing it according to its suffix.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let read_err = |source| Error::Read {
        path: path.to_path_buf(),
        source,
    };
    let (_, compression) = split_suffix(&name);
    if compression == Compression::None {
        return std::fs::read(path).map_err(read_err);
    }
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let decode_err = |message: String| Error::Decompress {
        path: path.to_path_buf(),
        message,
    };
    match compression {
        Compression::Xz => {
            lzma_rs::xz_decompress(&mut reader, &mut out).map_err(|e| decode_err(e.to_string()))?
        }
        Compression::Zstd => {
            let mut dec = ruzstd::decoding::StreamingDecoder::new(reader)
                .map_err(|e| decode_err(e.to_string()))?;
            dec.read_to_end(&mut out)
                .map_err(|e| decode_err(e.to_string()))?;
        }
        Compression::Gzip => {
            flate2::read::GzDecoder::new(reader)
                .read_to_end(&mut out)
                .map_err(|e| decode_err(e.to_string()))?;
        }
        Compression::None => {}
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_module_is_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.ko.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"\x7fELF fake module").unwrap();
        std::fs::write(&path, enc.finish().unwrap()).unwrap();
        assert_eq!(read_module(&path).unwrap(), b"\x7fELF fake module");
    }

    #[test]
    fn xz_module_is_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.ko.xz");
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut &b"\x7fELF xz module"[..], &mut xz).unwrap();
        std::fs::write(&path, xz).unwrap();
        assert_eq!(read_module(&path).unwrap(), b"\x7fELF xz module");
    }

    #[test]
    fn zstd_module_is_decompressed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.ko.zst");
        let zst = ruzstd::encoding::compress_to_vec(
            &b"\x7fELF zstd module"[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        std::fs::write(&path, zst).unwrap();
        assert_eq!(read_module(&path).unwrap(), b"\x7fELF zstd module");
    }

    #[test]
    fn corrupt_zstd_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.ko.zst");
        std::fs::write(&path, b"not zstd").unwrap();
        let err = read_module(&path).unwrap_err();
        assert!(err.to_string().contains("bad.ko.zst"), "{err}");
    }

    #[test]
    fn suffixes() {
        assert_eq!(split_suffix("a.ko.xz"), ("a.ko", Compression::Xz));
        assert_eq!(split_suffix("a.ko.zst"), ("a.ko", Compression::Zstd));
        assert_eq!(split_suffix("a.ko"), ("a.ko", Compression::None));
    }
}
