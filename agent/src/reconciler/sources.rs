//! What the executor takes from outside, behind traits so it runs in-process in
//! tests: images ([`Images`], the local cache pulling from registries) and pull
//! secrets ([`PullSecrets`], over [`crate::credentials`]).

use futures::future::BoxFuture;

use crate::image::{DockerConfig, ImageCache, ImageError, PullOptions, PulledImage};
use crate::state::ModuleKey;

/// Where images come from.
pub trait Images: Send + Sync {
    /// Pulls (or finds in the cache) `image`, unpacked.
    fn pull<'a>(
        &'a self,
        image: &'a str,
        opts: &'a PullOptions,
    ) -> BoxFuture<'a, Result<PulledImage, ImageError>>;

    /// Removes unpacked images not in `keep`; with `only_over_limit`, only when the
    /// cache is over its size limit. Returns the bytes the cache holds after, if known.
    fn collect<'a>(
        &'a self,
        keep: &'a [String],
        only_over_limit: bool,
    ) -> BoxFuture<'a, Option<u64>>;
}

impl Images for ImageCache {
    fn pull<'a>(
        &'a self,
        image: &'a str,
        opts: &'a PullOptions,
    ) -> BoxFuture<'a, Result<PulledImage, ImageError>> {
        Box::pin(ImageCache::pull(self, image, opts))
    }

    fn collect<'a>(
        &'a self,
        keep: &'a [String],
        only_over_limit: bool,
    ) -> BoxFuture<'a, Option<u64>> {
        Box::pin(async move {
            let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
            let result = if only_over_limit {
                self.enforce_limit(&keep).await
            } else {
                self.gc(&keep).await.map(Some)
            };
            match result {
                Ok(Some(report)) => tracing::info!(?report, "removed unused images from the cache"),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "image cache cleanup failed"),
            }
            self.usage()
                .inspect_err(|e| tracing::warn!(error = %e, "cannot measure the image cache"))
                .ok()
        })
    }
}

/// Where a Module's `imageRepoSecret` comes from.
pub trait PullSecrets: Send + Sync {
    /// The docker config of secret `secret` named by Module `module`.
    fn docker_config<'a>(
        &'a self,
        module: &'a ModuleKey,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<DockerConfig, String>>;
}

/// The configured source (the API server, or the controller on the agent's behalf).
impl PullSecrets for crate::credentials::AnyPullSecrets {
    fn docker_config<'a>(
        &'a self,
        module: &'a ModuleKey,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<DockerConfig, String>> {
        Box::pin(async move {
            crate::credentials::PullSecrets::docker_config(
                self,
                &module.namespace,
                secret,
                &module.name,
            )
            .await
            .map_err(|e| e.to_string())
        })
    }
}
