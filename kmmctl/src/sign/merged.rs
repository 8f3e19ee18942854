//! The merged file view of an image's layers, as a container runtime (or the
//! agent's extractor) would see it: later layers win, OCI whiteouts
//! (`.wh.<name>`, `.wh..wh..opq`) hide what lower layers put there, and a
//! non-directory replaces a directory with everything below it.

use std::collections::BTreeMap;
use std::io::{self, Read};

/// An entry visible in the merged view.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Index of the layer that provides it.
    pub layer: usize,
    /// Its tar header from that layer (mode, owner, mtime, type).
    pub header: tar::Header,
    /// Hard link target (normalised), for `EntryType::Link`.
    pub link: Option<String>,
}

impl Node {
    pub(crate) fn is_dir(&self) -> bool {
        self.header.entry_type().is_dir()
    }

    pub(crate) fn is_file(&self) -> bool {
        let t = self.header.entry_type();
        t.is_file() || t == tar::EntryType::Continuous
    }
}

/// Paths (relative, no leading `/`, no trailing `/`) to what is visible.
#[derive(Debug, Default)]
pub(crate) struct Merged {
    pub entries: BTreeMap<String, Node>,
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// A layer blob as an uncompressed tar stream, by its magic bytes (gzip,
/// zstd or plain tar), whatever the media type claims.
pub(crate) fn open_layer(blob: &[u8]) -> io::Result<Box<dyn Read + '_>> {
    if blob.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::GzDecoder::new(blob)))
    } else if blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let dec = ruzstd::decoding::StreamingDecoder::new(blob)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(Box::new(dec))
    } else {
        Ok(Box::new(blob))
    }
}

/// `./a//b/` → `a/b`; `None` for the root itself or a name with `..`.
pub(crate) fn normalize(raw: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(raw);
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Merged {
    /// Applies the layer blobs in order.
    pub(crate) fn build<'a>(blobs: impl IntoIterator<Item = &'a [u8]>) -> io::Result<Self> {
        let mut merged = Self::default();
        for (index, blob) in blobs.into_iter().enumerate() {
            merged.apply(index, open_layer(blob)?)?;
        }
        Ok(merged)
    }

    fn apply(&mut self, layer: usize, tar: impl Read) -> io::Result<()> {
        let mut archive = tar::Archive::new(tar);
        for entry in archive.entries()? {
            let entry = entry?;
            let Some(path) = normalize(&entry.path_bytes()) else {
                continue;
            };
            let (parent, name) = match path.rsplit_once('/') {
                Some((p, n)) => (Some(p), n),
                None => (None, path.as_str()),
            };
            if name == OPAQUE {
                let prefix = parent.map(|p| format!("{p}/")).unwrap_or_default();
                self.remove_lower(layer, |k| k.starts_with(&prefix));
                continue;
            }
            if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                let target = match parent {
                    Some(p) => format!("{p}/{hidden}"),
                    None => hidden.to_string(),
                };
                let below = format!("{target}/");
                self.remove_lower(layer, |k| k == target || k.starts_with(&below));
                continue;
            }
            let header = entry.header().clone();
            let link = if header.entry_type() == tar::EntryType::Link {
                entry.link_name_bytes().and_then(|l| normalize(&l))
            } else {
                None
            };
            let node = Node {
                layer,
                header,
                link,
            };
            if !node.is_dir() {
                // A file over a directory hides the directory's lower content.
                let below = format!("{path}/");
                self.remove_lower(layer, |k| k.starts_with(&below));
            }
            self.entries.insert(path, node);
        }
        Ok(())
    }

    fn remove_lower(&mut self, layer: usize, hit: impl Fn(&str) -> bool) {
        self.entries.retain(|k, n| n.layer >= layer || !hit(k));
    }

    /// Contents of the regular files `wanted` (paths as in `entries`), read
    /// from the layers that provide them.
    pub(crate) fn read_files(
        &self,
        blobs: &[&[u8]],
        wanted: &[&str],
    ) -> io::Result<BTreeMap<String, Vec<u8>>> {
        let mut by_layer: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
        for path in wanted {
            if let Some(node) = self.entries.get(*path) {
                by_layer.entry(node.layer).or_default().push(path);
            }
        }
        let mut out = BTreeMap::new();
        for (layer, paths) in by_layer {
            let blob = blobs.get(layer).copied().unwrap_or_default();
            let mut archive = tar::Archive::new(open_layer(blob)?);
            for entry in archive.entries()? {
                let mut entry = entry?;
                let Some(path) = normalize(&entry.path_bytes()) else {
                    continue;
                };
                if matches!(
                    entry.header().entry_type(),
                    tar::EntryType::Regular | tar::EntryType::Continuous
                ) && paths.contains(&path.as_str())
                {
                    let mut data = Vec::with_capacity(entry.size() as usize);
                    entry.read_to_end(&mut data)?;
                    // The last entry of a name in a layer is the one that counts.
                    out.insert(path, data);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, name, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, name, io::empty()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn later_layers_win_and_whiteouts_hide_lower_content() {
        let l0 = layer(&[
            ("opt/", None),
            ("opt/a.ko", Some(b"a0")),
            ("opt/gone.ko", Some(b"g")),
            ("opt/dir/", None),
            ("opt/dir/x.ko", Some(b"x")),
            ("opt/opq/", None),
            ("opt/opq/old.ko", Some(b"o")),
            ("opt/f/", None),
            ("opt/f/under.ko", Some(b"u")),
        ]);
        let l1 = layer(&[
            ("./opt/a.ko", Some(b"a1")),
            ("opt/.wh.gone.ko", Some(b"")),
            ("opt/.wh.dir", Some(b"")),
            ("opt/opq/.wh..wh..opq", Some(b"")),
            ("opt/opq/new.ko", Some(b"n")),
            ("opt/f", Some(b"now a file")),
        ]);
        // gzip for the second layer: both encodings are read.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &l1).unwrap();
        let l1 = gz.finish().unwrap();
        let m = Merged::build([l0.as_slice(), l1.as_slice()]).unwrap();
        let names: Vec<&str> = m.entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            ["opt", "opt/a.ko", "opt/f", "opt/opq", "opt/opq/new.ko"]
        );
        assert_eq!(m.entries["opt/a.ko"].layer, 1);
        let files = m
            .read_files(&[&l0, &l1], &["opt/a.ko", "opt/opq/new.ko"])
            .unwrap();
        assert_eq!(files["opt/a.ko"], b"a1");
        assert_eq!(files["opt/opq/new.ko"], b"n");
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(normalize(b"./opt//lib/").as_deref(), Some("opt/lib"));
        assert_eq!(normalize(b"/opt").as_deref(), Some("opt"));
        assert_eq!(normalize(b"./"), None);
        assert_eq!(normalize(b"opt/../etc"), None);
    }
}
