//! What the executor takes from outside, behind traits so it runs in-process in
//! tests: images ([`Images`], the local cache pulling from registries) and pull
//! secrets ([`PullSecrets`]).

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

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
    /// cache is over its size limit.
    fn collect<'a>(&'a self, keep: &'a [String], only_over_limit: bool) -> BoxFuture<'a, ()>;
}

impl Images for ImageCache {
    fn pull<'a>(
        &'a self,
        image: &'a str,
        opts: &'a PullOptions,
    ) -> BoxFuture<'a, Result<PulledImage, ImageError>> {
        Box::pin(ImageCache::pull(self, image, opts))
    }

    fn collect<'a>(&'a self, keep: &'a [String], only_over_limit: bool) -> BoxFuture<'a, ()> {
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

/// Reads the Secret from the API server in the Module's namespace.
pub struct ApiPullSecrets(pub Client);

impl PullSecrets for ApiPullSecrets {
    fn docker_config<'a>(
        &'a self,
        module: &'a ModuleKey,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<DockerConfig, String>> {
        Box::pin(async move {
            let secrets: Api<Secret> = Api::namespaced(self.0.clone(), &module.namespace);
            let s = secrets.get(secret).await.map_err(|e| e.to_string())?;
            let data = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            DockerConfig::from_secret(s.type_.as_deref(), &data).map_err(|e| e.to_string())
        })
    }
}
