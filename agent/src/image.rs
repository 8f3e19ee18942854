//! Pulling kmod OCI images (oci-client) into a content-addressed local cache.
