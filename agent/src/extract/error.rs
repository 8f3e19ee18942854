//! Errors of layer extraction, worded for a Module status.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Why a layer (or a whole image) could not be extracted.
///
/// Paths in messages are the entry names as they appear in the layer, so a
/// user can find the offending entry with `tar tvf`.
#[derive(Debug, Error)]
pub enum ExtractError {
    /// An entry name has a `..` component (or otherwise leaves the root).
    #[error("layer entry '{path}' escapes the image root")]
    PathEscape {
        /// The entry name as found in the layer.
        path: String,
    },
    /// An entry would be written through a symlink extracted earlier.
    #[error(
        "layer entry '{path}' would be written through the symlink '{link}' (refused: it could escape the image root)"
    )]
    ThroughSymlink {
        /// The entry name.
        path: String,
        /// The symlink found on the way.
        link: String,
    },
    /// An entry's parent exists but is not a directory.
    #[error("layer entry '{path}': '{parent}' exists and is not a directory")]
    NotADirectory {
        /// The entry name.
        path: String,
        /// The parent that is in the way.
        parent: String,
    },
    /// A symlink's target resolves outside the image root.
    #[error("symlink '{path}' -> '{target}' points outside the image root")]
    SymlinkEscape {
        /// The symlink's entry name.
        path: String,
        /// Its target as found in the layer.
        target: String,
    },
    /// A hard link names a target outside the image root.
    #[error("hard link '{path}' -> '{target}' escapes the image root")]
    HardLinkEscape {
        /// The hard link's entry name.
        path: String,
        /// Its target as found in the layer.
        target: String,
    },
    /// A hard link's target is not an already-extracted regular file.
    #[error("hard link '{path}' -> '{target}': {reason}")]
    HardLinkTarget {
        /// The hard link's entry name.
        path: String,
        /// Its target as found in the layer.
        target: String,
        /// What is wrong with the target.
        reason: &'static str,
    },
    /// An entry name (or link target) is malformed: empty, NUL, too long.
    #[error("layer entry '{path}' has an invalid name: {reason}")]
    InvalidName {
        /// The entry name (possibly shortened).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More entries than [`super::Limits::max_entries`].
    #[error("image has more than {max} entries (limit)")]
    TooManyEntries {
        /// The limit.
        max: u64,
    },
    /// More uncompressed bytes than [`super::Limits::max_total_bytes`].
    #[error("image is larger than {max} bytes uncompressed (limit)")]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// A single file larger than [`super::Limits::max_file_bytes`].
    #[error("layer entry '{path}' is {size} bytes, more than the {max}-byte limit for one file")]
    FileTooLarge {
        /// The entry name.
        path: String,
        /// Its size from the tar header.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// [`super::Limits::deadline`] passed before the image was extracted.
    #[error("extraction stopped: the pull's deadline passed")]
    DeadlineExceeded,
    /// The gzip stream ended early.
    #[error("gzip stream truncated")]
    GzipTruncated,
    /// The gzip stream is not valid gzip (bad header, bad deflate data, bad CRC).
    #[error("corrupt gzip stream: {message}")]
    GzipCorrupt {
        /// The decoder's message.
        message: String,
    },
    /// The (decompressed) tar stream ended in the middle of an entry.
    #[error("tar stream truncated")]
    TarTruncated,
    /// The tar stream is malformed.
    #[error("malformed tar stream: {message}")]
    TarCorrupt {
        /// The tar reader's message.
        message: String,
    },
    /// The layer's media type is not a tar layer this agent can read.
    #[error("unsupported layer media type '{media_type}'")]
    UnsupportedMediaType {
        /// The media type from the manifest.
        media_type: String,
    },
    /// The layer is compressed with something other than gzip.
    #[error("{kind}-compressed layers are not supported (use gzip or plain tar)")]
    UnsupportedCompression {
        /// The compression that was detected.
        kind: &'static str,
    },
    /// A filesystem operation failed.
    #[error("cannot write '{}': {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Reading the layer itself failed (not a format error).
    #[error("cannot read layer: {source}")]
    Read {
        /// The I/O error from the source reader.
        #[source]
        source: io::Error,
    },
    /// An error inside one layer of a multi-layer image.
    #[error("layer {index} ({name}): {source}")]
    InLayer {
        /// Zero-based position of the layer in the manifest.
        index: usize,
        /// A name for the layer, usually its digest.
        name: String,
        /// What went wrong in it.
        #[source]
        source: Box<ExtractError>,
    },
}

impl ExtractError {
    /// A short, stable label for metrics (`kmm_agent_..._failures{kind=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::PathEscape { .. }
            | Self::ThroughSymlink { .. }
            | Self::SymlinkEscape { .. }
            | Self::HardLinkEscape { .. } => "escape",
            Self::NotADirectory { .. } | Self::HardLinkTarget { .. } | Self::InvalidName { .. } => {
                "invalid_entry"
            }
            Self::TooManyEntries { .. } | Self::TooLarge { .. } | Self::FileTooLarge { .. } => {
                "limit"
            }
            Self::DeadlineExceeded => "deadline",
            Self::GzipTruncated | Self::GzipCorrupt { .. } => "gzip",
            Self::TarTruncated | Self::TarCorrupt { .. } => "tar",
            Self::UnsupportedMediaType { .. } | Self::UnsupportedCompression { .. } => {
                "unsupported"
            }
            Self::Io { .. } | Self::Read { .. } => "io",
            Self::InLayer { source, .. } => source.metric_label(),
        }
    }

    /// The innermost error, skipping [`ExtractError::InLayer`] wrappers.
    pub fn root_cause(&self) -> &ExtractError {
        match self {
            Self::InLayer { source, .. } => source.root_cause(),
            other => other,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
