//! A module file's `.modinfo` section (what `modinfo` prints), read from the
//! ELF file without libkmod: the `kmod` crate does not wrap `kmod_module_get_info`.
//!
//! Input is untrusted (it comes from an image): every read is bounds-checked
//! and a malformed file is `None`, never a panic. Self-contained (std only) so
//! the fuzz target can compile it.

/// `.modinfo` of an ELF module (32/64-bit, either byte order); `None` if `elf`
/// is not ELF (e.g. a compressed `.ko.xz`) or has no such section.
pub fn modinfo_section(elf: &[u8]) -> Option<&[u8]> {
    let h = Header::parse(elf)?;
    let strtab = h.section(elf, h.shstrndx(elf)?)?;
    let names = elf.get(range(strtab.offset, strtab.size)?)?;
    // The count is the file's word (up to 2^64 with extended numbering): stop
    // at the first header past the end of the file, not at the count.
    let mut headers = (0..h.shnum(elf)?).map_while(|i| h.section(elf, i));
    headers.find_map(|s| {
        let name = names.get(usize::try_from(s.name).ok()?..)?;
        let name = name.split(|b| *b == 0).next()?;
        (name == b".modinfo")
            .then(|| elf.get(range(s.offset, s.size)?))
            .flatten()
    })
}

/// The first value of `key` in a `.modinfo` section (`key=value\0` records).
pub fn field<'a>(modinfo: &'a [u8], key: &str) -> Option<&'a str> {
    modinfo.split(|b| *b == 0).find_map(|record| {
        let value = record.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        std::str::from_utf8(value).ok()
    })
}

/// `srcversion` of an ELF module file's contents, if it has one.
pub fn srcversion(elf: &[u8]) -> Option<String> {
    field(modinfo_section(elf)?, "srcversion").map(str::to_owned)
}

fn range(offset: u64, size: u64) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(offset).ok()?;
    Some(start..start.checked_add(usize::try_from(size).ok()?)?)
}

struct Header {
    wide: bool,
    big_endian: bool,
    shoff: u64,
    shentsize: u64,
    shnum: u16,
    shstrndx: u16,
}

struct Section {
    name: u32,
    link: u32,
    offset: u64,
    size: u64,
}

impl Header {
    fn parse(elf: &[u8]) -> Option<Self> {
        if elf.get(..4)? != b"\x7fELF" {
            return None;
        }
        let wide = match elf.get(4)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        let big_endian = match elf.get(5)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        let mut h = Self {
            wide,
            big_endian,
            shoff: 0,
            shentsize: 0,
            shnum: 0,
            shstrndx: 0,
        };
        let (shoff, rest) = if wide {
            (h.u64(elf, 0x28)?, 0x3a)
        } else {
            (u64::from(h.u32(elf, 0x20)?), 0x2e)
        };
        h.shoff = shoff;
        h.shentsize = u64::from(h.u16(elf, rest)?);
        h.shnum = h.u16(elf, rest + 2)?;
        h.shstrndx = h.u16(elf, rest + 4)?;
        let min = if wide { 0x40 } else { 0x28 };
        (h.shentsize >= min).then_some(h)
    }

    /// Number of sections (extended numbering: in section 0's `sh_size`).
    fn shnum(&self, elf: &[u8]) -> Option<u64> {
        match self.shnum {
            0 if self.shoff != 0 => Some(self.section(elf, 0)?.size),
            n => Some(u64::from(n)),
        }
    }

    /// Index of the section-name table (`SHN_XINDEX`: in section 0's `sh_link`).
    fn shstrndx(&self, elf: &[u8]) -> Option<u64> {
        match self.shstrndx {
            0xffff => Some(u64::from(self.section(elf, 0)?.link)),
            n => Some(u64::from(n)),
        }
    }

    fn section(&self, elf: &[u8], index: u64) -> Option<Section> {
        let at =
            usize::try_from(self.shoff.checked_add(index.checked_mul(self.shentsize)?)?).ok()?;
        Some(if self.wide {
            Section {
                name: self.u32(elf, at)?,
                link: self.u32(elf, at.checked_add(0x28)?)?,
                offset: self.u64(elf, at.checked_add(0x18)?)?,
                size: self.u64(elf, at.checked_add(0x20)?)?,
            }
        } else {
            Section {
                name: self.u32(elf, at)?,
                link: self.u32(elf, at.checked_add(0x18)?)?,
                offset: u64::from(self.u32(elf, at.checked_add(0x10)?)?),
                size: u64::from(self.u32(elf, at.checked_add(0x14)?)?),
            }
        })
    }

    fn bytes<const N: usize>(elf: &[u8], at: usize) -> Option<[u8; N]> {
        elf.get(at..at.checked_add(N)?)?.try_into().ok()
    }

    fn u16(&self, elf: &[u8], at: usize) -> Option<u16> {
        let b = Self::bytes(elf, at)?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32(&self, elf: &[u8], at: usize) -> Option<u32> {
        let b = Self::bytes(elf, at)?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn u64(&self, elf: &[u8], at: usize) -> Option<u64> {
        let b = Self::bytes(elf, at)?;
        Some(if self.big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;
    use crate::kernel::fake_elf;

    #[test]
    fn srcversion_comes_from_the_modinfo_section_only() {
        let elf = fake_elf(&[
            (".text", b"srcversion=NOTTHIS\0"),
            (
                ".modinfo",
                b"license=GPL\0\0srcversion=C49398E125FFAC361463008\0name=configfs\0",
            ),
        ]);
        assert_eq!(srcversion(&elf).as_deref(), Some("C49398E125FFAC361463008"));
        assert_eq!(
            field(modinfo_section(&elf).unwrap(), "name"),
            Some("configfs")
        );
        let none = fake_elf(&[(".modinfo", b"license=GPL\0")]);
        assert_eq!(srcversion(&none), None);
    }

    #[test]
    fn malformed_files_are_none_not_a_panic() {
        let elf = fake_elf(&[(".modinfo", b"srcversion=ABC\0")]);
        for cut in 0..elf.len() {
            let _ = srcversion(&elf[..cut]);
        }
        assert_eq!(srcversion(b"\xfd7zXZ\0 compressed"), None);
        let mut huge = elf.clone();
        huge[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(srcversion(&huge), None);
    }

    /// Extended numbering puts the section count in section 0's 64-bit
    /// `sh_size`: a hostile file claims 2^64 sections in a few hundred bytes.
    /// Found by the `moddep` fuzz target (it spun past libFuzzer's timeout).
    #[test]
    fn a_huge_extended_section_count_ends_at_the_end_of_the_file() {
        let mut elf = fake_elf(&[(".text", b"x")]);
        let shoff =
            usize::try_from(u64::from_le_bytes(elf[0x28..0x30].try_into().unwrap())).unwrap();
        elf[0x3c..0x3e].copy_from_slice(&0u16.to_le_bytes());
        elf[shoff + 0x20..shoff + 0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(srcversion(&elf)));
        let found = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(found, Ok(None), "still walking section headers after 10 s");
    }
}
