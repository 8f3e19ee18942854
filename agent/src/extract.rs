//! Safe extraction of kmod image layers (tar, optionally gzip) into a directory.
