//! The pull itself: pull policy, digest resolution, platform choice, blob
//! download with verification, and unpacking into the cache.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oci_client::Reference;

use crate::extract::{Compression, ExtractError, Layer, Limits, scan_image, unpack_image};

use super::bounded::{self, DEFAULT_MAX_MANIFEST_BYTES};
use super::cache::{ImageCache, RefEntry};
use super::manifest::{Descriptor, Manifest, Platform, check_digest, sha256_digest};
use super::source::{ImageSource, OciSource, RegistryTls};
use super::{DockerConfig, ImageError};

/// Kubernetes' `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the digest every time; download and unpack only what changed.
    Always,
    /// Use the cached image for the reference if there is one.
    IfNotPresent,
    /// Only the local cache; never contact the registry.
    Never,
}

impl PullPolicy {
    /// Parses the Module field; empty means "not set" (`None`).
    pub fn parse(value: &str) -> Result<Option<Self>, ImageError> {
        match value {
            "" => Ok(None),
            "Always" => Ok(Some(Self::Always)),
            "IfNotPresent" => Ok(Some(Self::IfNotPresent)),
            "Never" => Ok(Some(Self::Never)),
            other => Err(ImageError::InvalidPullPolicy {
                value: other.to_owned(),
            }),
        }
    }

    /// Kubernetes' default: `Always` for a `:latest` tag or no tag at all,
    /// otherwise `IfNotPresent` (a bare `@digest` reference too).
    pub fn default_for(reference: &Reference) -> Self {
        if reference.tag() == Some("latest") {
            Self::Always
        } else {
            Self::IfNotPresent
        }
    }
}

/// Default [`PullOptions::deadline`]: a kmod image of a few hundred MB over
/// a slow link, with room to spare; a trickling registry fails after it.
pub const DEFAULT_PULL_DEADLINE: Duration = Duration::from_secs(600);
/// Default [`PullOptions::manifest_deadline`]: a manifest is a few KiB.
pub const DEFAULT_MANIFEST_DEADLINE: Duration = Duration::from_secs(60);
/// Default [`PullOptions::max_image_bytes`] (2 GiB of layers).
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 2 << 30;

/// How to pull one image.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The policy; `None` applies [`PullPolicy::default_for`].
    pub policy: Option<PullPolicy>,
    /// Credentials from the Module's `imageRepoSecret` (empty: anonymous).
    pub credentials: DockerConfig,
    /// `registryTLS` of the Module.
    pub tls: RegistryTls,
    /// Platform to pick from a multi-arch index; `None` is the running one.
    pub platform: Option<Platform>,
    /// Extraction limits for the whole image.
    pub limits: Limits,
    /// The whole pull (manifests, blobs, unpacking) ends by then, with
    /// [`ImageError::DeadlineExceeded`] and nothing of it kept
    /// (`Duration::MAX`: no deadline).
    pub deadline: Duration,
    /// Each manifest request (tag resolution, manifest, index) ends by then.
    pub manifest_deadline: Duration,
    /// Most bytes of one manifest or index, enforced while reading.
    pub max_manifest_bytes: u64,
    /// Most bytes of layer blobs one image may declare (compressed, as
    /// downloaded); checked before any download.
    pub max_image_bytes: u64,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            policy: None,
            credentials: DockerConfig::default(),
            tls: RegistryTls::default(),
            platform: None,
            limits: Limits::default(),
            deadline: DEFAULT_PULL_DEADLINE,
            manifest_deadline: DEFAULT_MANIFEST_DEADLINE,
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
        }
    }
}

/// One pull in progress: its options, when it must end, bytes received.
struct Run<'a> {
    options: &'a PullOptions,
    whole: String,
    /// `None`: a deadline too far away to represent (e.g. `Duration::MAX`).
    ends_at: Option<Instant>,
    received: AtomicU64,
}

impl Run<'_> {
    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    fn deadline_error(&self) -> ImageError {
        ImageError::deadline(
            format!("pull of {}", self.whole),
            self.options.deadline,
            self.received(),
        )
    }

    /// One manifest request, bounded by [`PullOptions::manifest_deadline`].
    async fn manifest_request<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, ImageError>>,
    ) -> Result<T, ImageError> {
        let limit = self.options.manifest_deadline;
        tokio::time::timeout(limit, request)
            .await
            .unwrap_or_else(|_| {
                Err(ImageError::deadline(
                    format!("manifest fetch of {}", self.whole),
                    limit,
                    self.received(),
                ))
            })
    }
}

/// A pulled image, ready to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The normalised reference.
    pub reference: String,
    /// The platform manifest digest (the unpacked tree's key).
    pub digest: String,
    /// What the reference resolved to (an index digest for multi-arch images).
    pub resolved_digest: String,
    /// The image root (`<root>/opt/lib/modules/...`).
    pub root: PathBuf,
    /// Blob bytes downloaded by this pull (manifests not counted).
    pub bytes_downloaded: u64,
    /// Blobs downloaded by this pull.
    pub blobs_downloaded: u32,
    /// The tree was unpacked by this pull (not found already unpacked).
    pub unpacked: bool,
    /// The registry was not contacted at all.
    pub from_cache: bool,
    /// Time spent unpacking layers (zero when found unpacked), the extract
    /// phase of a load.
    pub unpack_time: Duration,
}

impl ImageCache {
    /// Pulls `reference` from its registry with oci-client.
    ///
    /// # Errors
    /// See [`ImageError`]; a failed pull never leaves a partial tree and never
    /// replaces a good one.
    pub async fn pull(
        &self,
        reference: &str,
        options: &PullOptions,
    ) -> Result<PulledImage, ImageError> {
        let parsed = parse_reference(reference)?;
        let source = OciSource::new(
            parsed.registry(),
            options.tls,
            options.credentials.auth_for(&parsed),
        )
        .with_max_manifest_bytes(options.max_manifest_bytes);
        self.pull_with(&source, reference, options).await
    }

    /// [`ImageCache::pull`] with any [`ImageSource`].
    pub async fn pull_with(
        &self,
        source: &impl ImageSource,
        reference: &str,
        options: &PullOptions,
    ) -> Result<PulledImage, ImageError> {
        let parsed = parse_reference(reference)?;
        let run = Run {
            options,
            whole: parsed.whole(),
            ends_at: Instant::now().checked_add(options.deadline),
            received: AtomicU64::new(0),
        };
        // Dropping the pull at the deadline drops its temp files with it;
        // an unpack in progress sees `ends_at` and removes its staging tree.
        match tokio::time::timeout(options.deadline, self.pull_in(source, &parsed, &run)).await {
            Ok(result) => result,
            Err(_) => Err(run.deadline_error()),
        }
    }

    async fn pull_in(
        &self,
        source: &impl ImageSource,
        parsed: &Reference,
        run: &Run<'_>,
    ) -> Result<PulledImage, ImageError> {
        let whole = parsed.whole();
        let policy = run
            .options
            .policy
            .unwrap_or_else(|| PullPolicy::default_for(parsed));
        let _shared = self.pull_guard().await;
        let cached = self.lookup(&whole).await?;
        let usable = match &cached {
            Some(entry) if self.is_unpacked(&entry.manifest)? => Some(entry.clone()),
            _ => None,
        };
        match policy {
            PullPolicy::Never => {
                return match usable {
                    Some(entry) => Ok(self.done(&whole, &entry, 0, 0, false, true)?),
                    None => self.offline_unpack(&whole, cached, run).await,
                };
            }
            PullPolicy::IfNotPresent => {
                if let Some(entry) = usable {
                    return self.done(&whole, &entry, 0, 0, false, true);
                }
            }
            PullPolicy::Always => {}
        }
        let resolved = run.manifest_request(source.resolve(parsed)).await?;
        check_digest(&resolved)?;
        if let Some(entry) = &usable
            && entry.digest == resolved
        {
            tracing::debug!(reference = %whole, digest = %resolved, "digest unchanged");
            return self.done(&whole, entry, 0, 0, false, false);
        }
        self.fetch(source, parsed, &resolved, run).await
    }

    /// Downloads what is missing for `resolved` and unpacks it.
    async fn fetch(
        &self,
        source: &impl ImageSource,
        parsed: &Reference,
        resolved: &str,
        run: &Run<'_>,
    ) -> Result<PulledImage, ImageError> {
        let options = run.options;
        let whole = parsed.whole();
        let top = self.manifest(source, parsed, resolved, None, run).await?;
        let (manifest_digest, layers) = match top {
            Manifest::Image { layers } => (resolved.to_owned(), layers),
            Manifest::Index { manifests } => {
                let platform = options.platform.clone().unwrap_or_else(Platform::current);
                let chosen = Manifest::select(&manifests, &platform, &whole)?;
                check_digest(&chosen)?;
                let size = manifests
                    .iter()
                    .find(|d| d.digest == chosen)
                    .map(|d| d.size);
                match self.manifest(source, parsed, &chosen, size, run).await? {
                    Manifest::Image { layers } => (chosen, layers),
                    Manifest::Index { .. } => {
                        return Err(ImageError::InvalidManifest {
                            reference: whole,
                            reason: format!("index entry {chosen} is itself an index"),
                        });
                    }
                }
            }
        };
        let entry = RefEntry {
            digest: resolved.to_owned(),
            manifest: manifest_digest.clone(),
            pulled_at: now(),
        };
        if self.is_unpacked(&manifest_digest)? {
            self.record(&whole, entry.clone()).await?;
            return self.done(&whole, &entry, 0, 0, false, false);
        }
        // Refuse unusable or oversized layers before downloading anything.
        let compressions = compressions(&layers)?;
        let sizes = declared_sizes(&layers, &whole, options.max_image_bytes)?;
        let mut bytes = 0u64;
        let mut blobs = 0u32;
        for (layer, declared) in layers.iter().zip(sizes) {
            if self.has_blob(&layer.digest)? {
                continue;
            }
            let body = source.fetch_blob(parsed, &layer.digest).await?;
            let what = || format!("blob {}", layer.digest);
            if let Some(announced) = body.announced_len.filter(|n| *n != declared) {
                return Err(ImageError::SizeMismatch {
                    what: what(),
                    expected: declared,
                    actual: announced,
                });
            }
            let registry = parsed.registry().to_owned();
            let reference = whole.clone();
            let digest = layer.digest.clone();
            let n = self
                .store_stream(
                    &layer.digest,
                    body.chunks,
                    declared,
                    &run.received,
                    move |e| stream_error(e, &registry, &reference, &digest),
                )
                .await?;
            tracing::debug!(digest = %layer.digest, bytes = n, "blob downloaded");
            bytes += n;
            blobs += 1;
        }
        let started = Instant::now();
        self.unpack(&manifest_digest, &layers, compressions, run)
            .await?;
        let unpack_time = started.elapsed();
        self.record(&whole, entry.clone()).await?;
        let pulled = self.done(&whole, &entry, bytes, blobs, true, false)?;
        Ok(PulledImage {
            unpack_time,
            ..pulled
        })
    }

    /// A manifest by digest: from the cache, else from the source (capped,
    /// verified against its digest and the declared size, then cached).
    async fn manifest(
        &self,
        source: &impl ImageSource,
        parsed: &Reference,
        digest: &str,
        declared: Option<i64>,
        run: &Run<'_>,
    ) -> Result<Manifest, ImageError> {
        let whole = parsed.whole();
        if self.has_blob(digest)? {
            return Manifest::parse(&self.read_blob(digest)?, &whole);
        }
        let max = run.options.max_manifest_bytes;
        let declared = declared
            .map(|n| {
                u64::try_from(n).map_err(|_| ImageError::InvalidManifest {
                    reference: whole.clone(),
                    reason: format!("entry {digest} has a negative size {n}"),
                })
            })
            .transpose()?;
        if let Some(n) = declared.filter(|n| *n > max) {
            return Err(ImageError::ManifestTooLarge {
                reference: whole,
                limit: max,
                announced: Some(n),
            });
        }
        // By digest, so a tag moved since `resolve` cannot mix two images.
        let by_digest = parsed.clone_with_digest(digest.to_owned());
        let bytes = run
            .manifest_request(async {
                let body = source.fetch_manifest(&by_digest).await?;
                bounded::read_manifest(body, max, parsed, Some(&run.received)).await
            })
            .await?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("manifest of {whole}"),
                expected: digest.to_owned(),
                actual,
            });
        }
        if let Some(n) = declared.filter(|n| *n != bytes.len() as u64) {
            return Err(ImageError::SizeMismatch {
                what: format!("manifest {digest}"),
                expected: n,
                actual: bytes.len() as u64,
            });
        }
        let manifest = Manifest::parse(&bytes, &whole)?;
        self.put_blob(digest, &bytes)?;
        Ok(manifest)
    }

    /// `Never` with no unpacked tree: unpack from cached blobs if they are all there.
    async fn offline_unpack(
        &self,
        whole: &str,
        cached: Option<RefEntry>,
        run: &Run<'_>,
    ) -> Result<PulledImage, ImageError> {
        let not_cached = || ImageError::NotCached {
            reference: whole.to_owned(),
        };
        let entry = cached.ok_or_else(not_cached)?;
        if !self.has_blob(&entry.manifest)? {
            return Err(not_cached());
        }
        let Manifest::Image { layers } = Manifest::parse(&self.read_blob(&entry.manifest)?, whole)?
        else {
            return Err(not_cached());
        };
        for layer in &layers {
            if !self.has_blob(&layer.digest)? {
                return Err(not_cached());
            }
        }
        let compressions = compressions(&layers)?;
        let started = Instant::now();
        self.unpack(&entry.manifest, &layers, compressions, run)
            .await?;
        let unpack_time = started.elapsed();
        let pulled = self.done(whole, &entry, 0, 0, true, true)?;
        Ok(PulledImage {
            unpack_time,
            ..pulled
        })
    }

    #[tracing::instrument(name = "extract", skip_all, fields(manifest = %manifest_digest))]
    async fn unpack(
        &self,
        manifest_digest: &str,
        layers: &[Descriptor],
        compressions: Vec<Compression>,
        run: &Run<'_>,
    ) -> Result<(), ImageError> {
        let dest = self.unpacked_path(manifest_digest)?;
        let mut paths = Vec::with_capacity(layers.len());
        for layer in layers {
            paths.push((layer.digest.clone(), self.blob_path(&layer.digest)?));
        }
        let limits = Limits {
            deadline: run.ends_at,
            ..run.options.limits.clone()
        };
        // Blocking work on a blocking thread: it never stalls the runtime.
        let task = tokio::task::spawn_blocking(move || {
            let open = || -> Result<Vec<Layer<'static>>, ImageError> {
                let mut opened = Vec::with_capacity(paths.len());
                for ((digest, path), compression) in paths.iter().zip(&compressions) {
                    let file = std::fs::File::open(path).map_err(|e| ImageError::cache(path, e))?;
                    opened.push(Layer {
                        name: digest.clone(),
                        compression: *compression,
                        reader: Box::new(file),
                    });
                }
                Ok(opened)
            };
            // Counting first costs one decompression; it refuses a layer of
            // far too many entries in seconds instead of after writing them.
            scan_image(open()?, &limits).map_err(layer_error)?;
            unpack_image(open()?, &dest, &limits).map_err(layer_error)
        });
        let stats = match task.await {
            Ok(Err(ImageError::Layer { source, .. }))
                if matches!(source.root_cause(), ExtractError::DeadlineExceeded) =>
            {
                return Err(run.deadline_error());
            }
            Ok(result) => result?,
            Err(e) => return Err(ImageError::cache(self.dir(), std::io::Error::other(e))),
        };
        tracing::debug!(
            manifest = manifest_digest,
            files = stats.files,
            bytes = stats.file_bytes,
            skipped = stats.skipped_count,
            "image unpacked"
        );
        for skipped in &stats.skipped {
            tracing::info!(manifest = manifest_digest, path = %skipped.path, reason = %skipped.reason, "layer entry skipped");
        }
        Ok(())
    }

    fn done(
        &self,
        whole: &str,
        entry: &RefEntry,
        bytes_downloaded: u64,
        blobs_downloaded: u32,
        unpacked: bool,
        from_cache: bool,
    ) -> Result<PulledImage, ImageError> {
        Ok(PulledImage {
            reference: whole.to_owned(),
            digest: entry.manifest.clone(),
            resolved_digest: entry.digest.clone(),
            root: self.unpacked_path(&entry.manifest)?,
            bytes_downloaded,
            blobs_downloaded,
            unpacked,
            from_cache,
            unpack_time: Duration::ZERO,
        })
    }
}

/// Parses an image reference (`registry/repo:tag`, `@sha256:...`).
pub fn parse_reference(reference: &str) -> Result<Reference, ImageError> {
    super::reference::parse(reference).map_err(|e| ImageError::InvalidReference {
        reference: reference.to_owned(),
        reason: e.to_string(),
    })
}

fn compressions(layers: &[Descriptor]) -> Result<Vec<Compression>, ImageError> {
    layers
        .iter()
        .map(|l| {
            check_digest(&l.digest)?;
            Compression::from_media_type(&l.media_type).map_err(|source| ImageError::Layer {
                digest: l.digest.clone(),
                source,
            })
        })
        .collect()
}

/// An error while a blob streams in (the connection, not the content).
fn stream_error(err: std::io::Error, registry: &str, reference: &str, digest: &str) -> ImageError {
    ImageError::Registry {
        registry: registry.to_owned(),
        reference: reference.to_owned(),
        message: format!("reading blob {digest}: {err}"),
    }
}

/// The layers' declared sizes; refuses negative ones and a total over `max`.
fn declared_sizes(layers: &[Descriptor], whole: &str, max: u64) -> Result<Vec<u64>, ImageError> {
    let mut total = 0u64;
    let mut sizes = Vec::with_capacity(layers.len());
    for layer in layers {
        let size = u64::try_from(layer.size).map_err(|_| ImageError::InvalidManifest {
            reference: whole.to_owned(),
            reason: format!("layer {} has a negative size {}", layer.digest, layer.size),
        })?;
        total = total.saturating_add(size);
        sizes.push(size);
    }
    if total > max {
        return Err(ImageError::ImageTooLarge {
            reference: whole.to_owned(),
            size: total,
            limit: max,
        });
    }
    Ok(sizes)
}

/// `InLayer { name: digest, source }` → `Layer { digest, source }`.
fn layer_error(err: ExtractError) -> ImageError {
    match err {
        ExtractError::InLayer { name, source, .. } => ImageError::Layer {
            digest: name,
            source: *source,
        },
        other => ImageError::Layer {
            digest: "<image>".to_owned(),
            source: other,
        },
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn default_policy_follows_kubernetes() {
        let p = |s: &str| PullPolicy::default_for(&parse_reference(s).unwrap());
        assert_eq!(p("reg:5000/ns/kmod"), PullPolicy::Always);
        assert_eq!(p("reg:5000/ns/kmod:latest"), PullPolicy::Always);
        assert_eq!(p("reg:5000/ns/kmod:6.1.0"), PullPolicy::IfNotPresent);
        let digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        assert_eq!(
            p(&format!("reg:5000/ns/kmod@{digest}")),
            PullPolicy::IfNotPresent
        );
    }

    #[test]
    fn policy_parsing() {
        assert_eq!(PullPolicy::parse("").unwrap(), None);
        assert_eq!(PullPolicy::parse("Never").unwrap(), Some(PullPolicy::Never));
        let err = PullPolicy::parse("always").unwrap_err();
        assert!(
            err.to_string().contains("invalid imagePullPolicy 'always'"),
            "{err}"
        );
    }
}
