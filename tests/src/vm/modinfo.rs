//! A module's `.modinfo` section (`key=value\0` strings), read and rewritten in
//! place, so a test can make a `.ko` that the kernel tells apart from the in-tree
//! one of the same name by `/sys/module/<name>/srcversion` (upstream #1083).
//!
//! Debian's in-tree modules without `MODULE_VERSION` (brd among them) carry no
//! `srcversion` at all (`CONFIG_MODULE_SRCVERSION_ALL` is off); for those the
//! kernel creates no `srcversion` file in sysfs.

use std::ops::Range;

use anyhow::{Context, Result, bail, ensure};

use super::stage::strip_signature;

fn read_u16(b: &[u8], at: usize) -> Result<u16> {
    let bytes = b.get(at..at + 2).context("ELF truncated")?;
    Ok(u16::from_le_bytes(bytes.try_into()?))
}

fn read_u32(b: &[u8], at: usize) -> Result<u32> {
    let bytes = b.get(at..at + 4).context("ELF truncated")?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

fn read_u64(b: &[u8], at: usize) -> Result<usize> {
    let bytes = b.get(at..at + 8).context("ELF truncated")?;
    Ok(usize::try_from(u64::from_le_bytes(bytes.try_into()?))?)
}

/// Byte range of the `.modinfo` section in a little-endian ELF64 module.
///
/// # Errors
/// Not an ELF64 LE file, or no `.modinfo` section.
pub fn modinfo_range(ko: &[u8]) -> Result<Range<usize>> {
    ensure!(
        ko.get(..6) == Some(b"\x7fELF\x02\x01"),
        "not a little-endian ELF64 module"
    );
    let shoff = read_u64(ko, 0x28)?;
    let shentsize = usize::from(read_u16(ko, 0x3a)?);
    let shnum = usize::from(read_u16(ko, 0x3c)?);
    let shstrndx = usize::from(read_u16(ko, 0x3e)?);
    let section = |i: usize| -> Result<(u32, Range<usize>)> {
        let h = shoff + i * shentsize;
        let offset = read_u64(ko, h + 0x18)?;
        let size = read_u64(ko, h + 0x20)?;
        ensure!(
            offset + size <= ko.len(),
            "section {i} lies outside the file"
        );
        Ok((read_u32(ko, h)?, offset..offset + size))
    };
    let (_, names) = section(shstrndx)?;
    for i in 0..shnum {
        let (name_at, range) = section(i)?;
        let name = ko
            .get(names.start + name_at as usize..names.end)
            .and_then(|s| s.split(|&c| c == 0).next())
            .context("section name outside .shstrtab")?;
        if name == b".modinfo" {
            return Ok(range);
        }
    }
    bail!("no .modinfo section")
}

/// The `key=value` strings of `.modinfo`, in file order.
///
/// # Errors
/// See [`modinfo_range`]; non-UTF-8 entries.
pub fn modinfo(ko: &[u8]) -> Result<Vec<String>> {
    let range = modinfo_range(ko)?;
    ko[range]
        .split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| Ok(std::str::from_utf8(s)?.to_owned()))
        .collect()
}

/// The module's `srcversion`, if it has one.
///
/// # Errors
/// See [`modinfo`].
pub fn srcversion(ko: &[u8]) -> Result<Option<String>> {
    Ok(modinfo(ko)?
        .into_iter()
        .find_map(|e| e.strip_prefix("srcversion=").map(str::to_owned)))
}

/// Entries a rebuilt module can do without, dropped (in this order) when the new
/// `srcversion` does not fit: aliases only serve udev's lookups, and an
/// out-of-tree build has no `intree` tag (the kernel then taints it `O`).
const DROPPABLE: [&str; 2] = ["alias=", "intree="];

/// A copy of `ko` whose `srcversion` is `value` (24 upper-case hex digits, as
/// modpost writes it): replaced in place when the module has one, added
/// otherwise (dropping [`DROPPABLE`] entries if needed, the section keeps its
/// size). The signature is cut off: the kernel refuses a module whose signature
/// does not match even without `sig_enforce`, and loads an unsigned one
/// (tainting it `E`).
///
/// # Errors
/// A malformed `value`, see [`modinfo_range`], or no room in `.modinfo`.
pub fn with_srcversion(ko: &[u8], value: &str) -> Result<Vec<u8>> {
    ensure!(
        value.len() == 24
            && value
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)),
        "srcversion '{value}' is not 24 upper-case hex digits"
    );
    let mut out = strip_signature(ko).unwrap_or_else(|| ko.to_vec());
    let range = modinfo_range(&out)?;
    let new_entry = format!("srcversion={value}");
    let mut entries: Vec<String> = modinfo(&out)?
        .into_iter()
        .filter(|e| !e.starts_with("srcversion="))
        .collect();
    entries.push(new_entry);
    let size = |entries: &[String]| entries.iter().map(|e| e.len() + 1).sum::<usize>();
    for prefix in DROPPABLE {
        if size(&entries) <= range.len() {
            break;
        }
        entries.retain(|e| !e.starts_with(prefix));
    }
    ensure!(
        size(&entries) <= range.len(),
        ".modinfo ({} bytes) has no room for srcversion",
        range.len()
    );
    let mut section = Vec::with_capacity(range.len());
    for e in &entries {
        section.extend_from_slice(e.as_bytes());
        section.push(0);
    }
    // the kernel and libkmod skip the NUL padding between strings
    section.resize(range.len(), 0);
    out[range].copy_from_slice(&section);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    /// A minimal ELF64 LE file: section 0 null, 1 `.shstrtab`, 2 `.modinfo` = `modinfo`.
    fn elf(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let strtab_at = f.len();
        f.extend_from_slice(shstrtab);
        let modinfo_at = f.len();
        f.extend_from_slice(modinfo);
        let shoff = f.len();
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        for (name, at, len) in [
            (0u32, 0usize, 0usize),
            (1, strtab_at, shstrtab.len()),
            (11, modinfo_at, modinfo.len()),
        ] {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(at as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(len as u64).to_le_bytes());
            f.extend_from_slice(&h);
        }
        f
    }

    const NEW: &str = "0123456789ABCDEF01234567";

    #[test]
    fn an_existing_srcversion_is_replaced_in_place() {
        let ko = elf(b"license=GPL\0srcversion=AAAAAAAAAAAAAAAAAAAAAAAA\0name=m\0");
        let out = with_srcversion(&ko, NEW).unwrap();
        assert_eq!(out.len(), ko.len());
        assert_eq!(srcversion(&out).unwrap().as_deref(), Some(NEW));
        assert_eq!(
            modinfo(&out).unwrap(),
            ["license=GPL", "name=m", &format!("srcversion={NEW}")]
        );
    }

    #[test]
    fn a_missing_srcversion_takes_the_room_of_aliases_then_intree() {
        let ko = elf(
            b"alias=rd\0alias=block-major-1-*\0license=GPL\0intree=Y\0name=brd\0vermagic=6.1\0",
        );
        assert_eq!(srcversion(&ko).unwrap(), None);
        let out = with_srcversion(&ko, NEW).unwrap();
        assert_eq!(out.len(), ko.len());
        assert_eq!(
            modinfo(&out).unwrap(),
            [
                "license=GPL",
                "name=brd",
                "vermagic=6.1",
                &format!("srcversion={NEW}")
            ]
        );
    }

    #[test]
    fn no_room_and_bad_values_are_errors() {
        let ko = elf(b"license=GPL\0");
        assert!(with_srcversion(&ko, NEW).is_err());
        let ko = elf(b"srcversion=AAAAAAAAAAAAAAAAAAAAAAAA\0");
        assert!(with_srcversion(&ko, "0123").is_err());
        assert!(with_srcversion(&ko, "0123456789abcdef01234567").is_err());
        assert!(with_srcversion(b"not an elf", NEW).is_err());
    }
}
