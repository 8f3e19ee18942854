//! Reading registry bodies with a byte cap enforced while reading: nothing
//! past the cap is ever buffered, and an announced length over the cap is
//! refused before the first byte.

use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use oci_client::Reference;

use super::ImageError;
use super::source::{BlobStream, Body};

/// Default cap on one manifest or index: containerd's and distribution's
/// limit (4 MiB); a kmod image manifest is a few KiB.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Reads a manifest (or index) body of at most `max` bytes, adding what
/// arrives to `progress`.
pub(crate) async fn read_manifest(
    body: Body,
    max: u64,
    reference: &Reference,
    progress: Option<&AtomicU64>,
) -> Result<Vec<u8>, ImageError> {
    let too_large = |announced: Option<u64>| ImageError::ManifestTooLarge {
        reference: reference.whole(),
        limit: max,
        announced,
    };
    if let Some(n) = body.announced_len.filter(|n| *n > max) {
        return Err(too_large(Some(n)));
    }
    let mut out =
        Vec::with_capacity(usize::try_from(body.announced_len.unwrap_or(0).min(max)).unwrap_or(0));
    let mut chunks = body.chunks;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ImageError::Registry {
            registry: reference.registry().to_owned(),
            reference: reference.whole(),
            message: format!("reading the manifest: {e}"),
        })?;
        if let Some(p) = progress {
            p.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        if (out.len() + chunk.len()) as u64 > max {
            return Err(too_large(None));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The first `max` bytes of a body, for an error message; read errors end it.
pub(crate) async fn read_to_limit(mut chunks: BlobStream, max: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = chunks.next().await {
        let room = usize::try_from(max).unwrap_or(usize::MAX) - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() as u64 >= max {
            break;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn chunked(parts: Vec<Vec<u8>>, announced: Option<u64>) -> Body {
        Body {
            announced_len: announced,
            chunks: futures::stream::iter(parts.into_iter().map(Ok)).boxed(),
        }
    }

    fn reference() -> Reference {
        "127.0.0.1:1/r:t".parse().unwrap()
    }

    #[tokio::test]
    async fn a_body_at_the_cap_is_read_and_one_byte_more_is_refused() {
        let at = chunked(vec![vec![b'a'; 6], vec![b'b'; 4]], None);
        let progress = AtomicU64::new(0);
        let bytes = read_manifest(at, 10, &reference(), Some(&progress))
            .await
            .unwrap();
        assert_eq!(bytes.len(), 10);
        assert_eq!(progress.load(Ordering::Relaxed), 10);
        let over = chunked(vec![vec![b'a'; 6], vec![b'b'; 5]], None);
        let err = read_manifest(over, 10, &reference(), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImageError::ManifestTooLarge { limit: 10, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_announced_length_over_the_cap_is_refused_before_reading() {
        let body = Body {
            announced_len: Some(1_500_000_000),
            chunks: futures::stream::iter(std::iter::from_fn(
                || -> Option<std::io::Result<Vec<u8>>> { panic!("the body must not be read") },
            ))
            .boxed(),
        };
        let err = read_manifest(body, 4 << 20, &reference(), None)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest of 127.0.0.1:1/r:t is 1500000000 bytes, more than the 4194304-byte limit"
        );
    }

    #[tokio::test]
    async fn error_bodies_are_cut() {
        let body = chunked(vec![vec![b'x'; 3000], vec![b'y'; 3000]], None);
        assert_eq!(read_to_limit(body.chunks, 4096).await.len(), 4096);
    }
}
