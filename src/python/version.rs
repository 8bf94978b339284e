//! The exact CPython version of the target: `Py_Version` on 3.11+, else the version buffer
//! that `Py_GetVersion` fills at start-up (in .bss), else the library's file name.

use std::fmt;

use regex::bytes::Regex;

use crate::target::elf::{self, ElfFile};
use crate::target::memory::Memory;

/// Every CPython minor version gilscope is verified on, oldest first. Each has a layout
/// (a table in layout.rs, or from 3.13 the interpreter's own `_Py_DebugOffsets`), a stack
/// layout and, but for 2.7, the object tables that Python thread names need:
/// docs/ADDING_A_VERSION.md names every table to extend, and python/mod.rs's tests fail when
/// one is missing.
pub const VERIFIED: &[(u8, u8)] = &[
    (2, 7),
    (3, 6),
    (3, 7),
    (3, 8),
    (3, 9),
    (3, 10),
    (3, 11),
    (3, 12),
    (3, 13),
    (3, 14),
    (3, 15),
];

/// [`VERIFIED`] as help texts, errors and docs name it.
pub const SUPPORTED: &str = "2.7 and 3.6-3.15";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
    pub micro: u8,
    /// 0xA alpha, 0xB beta, 0xC release candidate, 0xF final (as in PY_VERSION_HEX).
    pub level: u8,
    pub serial: u8,
    /// false when only major.minor could be found (the micro is then 0).
    pub exact: bool,
}

impl Version {
    pub fn new(major: u8, minor: u8, micro: u8) -> Version {
        Version {
            major,
            minor,
            micro,
            level: 0xF,
            serial: 0,
            exact: true,
        }
    }

    /// Decode PY_VERSION_HEX (as stored in `Py_Version` and `_Py_DebugOffsets.version`).
    pub fn from_hex(hex: u64) -> Option<Version> {
        let v = Version {
            major: ((hex >> 24) & 0xff) as u8,
            minor: ((hex >> 16) & 0xff) as u8,
            micro: ((hex >> 8) & 0xff) as u8,
            level: ((hex >> 4) & 0xf) as u8,
            serial: (hex & 0xf) as u8,
            exact: true,
        };
        let plausible = (2..=3).contains(&v.major)
            && v.minor < 100
            && matches!(v.level, 0xA | 0xB | 0xC | 0xF)
            && hex >> 32 == 0;
        plausible.then_some(v)
    }

    pub fn at_least(&self, major: u8, minor: u8) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.exact {
            return write!(f, "{}.{}", self.major, self.minor);
        }
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)?;
        match self.level {
            0xA => write!(f, "a{}", self.serial),
            0xB => write!(f, "b{}", self.serial),
            0xC => write!(f, "rc{}", self.serial),
            _ => Ok(()),
        }
    }
}

/// Largest .bss region scanned for the version buffer.
const MAX_BSS_SCAN: u64 = 16 << 20;
const BSS_CHUNK: u64 = 1 << 20;

/// Find the version of the interpreter in `binary`, reading the target where needed.
pub fn detect(binary: &ElfFile, memory: &dyn Memory) -> Option<Version> {
    if let Some(addr) = binary.address_of("Py_Version") {
        if let Some(v) = memory
            .read_u32(addr)
            .ok()
            .and_then(|hex| Version::from_hex(hex as u64))
        {
            return Some(v);
        }
    }
    let hint = version_from_file_name(elf::file_name(&binary.path));
    if let Some(v) = version_from_bss(binary, memory) {
        // A name like libpython3.8.so is authoritative for major.minor; a scan that disagrees
        // found some other library's string.
        if hint.is_none_or(|h| (h.major, h.minor) == (v.major, v.minor)) {
            return Some(v);
        }
    }
    hint
}

/// "python3.12", "libpython3.8.so.1.0", "libpython3.6m.so" -> 3.12, 3.8, 3.6 (not exact).
pub fn version_from_file_name(name: &str) -> Option<Version> {
    let re = Regex::new(r"python([23])\.(\d{1,2})").ok()?;
    let caps = re.captures(name.as_bytes())?;
    let major = std::str::from_utf8(caps.get(1)?.as_bytes())
        .ok()?
        .parse()
        .ok()?;
    let minor = std::str::from_utf8(caps.get(2)?.as_bytes())
        .ok()?
        .parse()
        .ok()?;
    Some(Version {
        exact: false,
        ..Version::new(major, minor, 0)
    })
}

/// Py_GetVersion() writes "3.8.18 (default, <date>) [compiler]" into a static buffer during
/// start-up; that buffer is in the interpreter's .bss, stripped or not.
fn version_from_bss(binary: &ElfFile, memory: &dyn Memory) -> Option<Version> {
    let (start, size) = bss_range(binary)?;
    version_in(memory, start, size)
}

/// Where the interpreter's .bss lies in the target (start, length), for [`version_in`].
pub fn bss_range(binary: &ElfFile) -> Option<(u64, u64)> {
    let bss = binary.section(".bss")?;
    Some((
        bss.addr.wrapping_add(binary.load_bias),
        bss.size.min(MAX_BSS_SCAN),
    ))
}

/// The version buffer Py_GetVersion() writes, looked for in the target's .bss.
pub fn version_in(memory: &dyn Memory, start: u64, size: u64) -> Option<Version> {
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(BSS_CHUNK + 64);
        let Some(at) = start.checked_add(offset) else {
            break;
        };
        if let Ok(chunk) = memory.read_bytes(at, len as usize) {
            if let Some(v) = parse_version_buffer(&chunk) {
                return Some(v);
            }
        }
        offset += BSS_CHUNK;
    }
    None
}

/// Find a "X.Y.Z[a1] (" version buffer that starts after a NUL (or at the start).
pub fn parse_version_buffer(bytes: &[u8]) -> Option<Version> {
    let re = Regex::new(r"(?-u)(?:^|\x00)([23])\.(\d{1,2})\.(\d{1,2})(?:(a|b|rc)(\d{1,2}))?\+? \(")
        .ok()?;
    let caps = re.captures(bytes)?;
    let num = |i: usize| -> Option<u8> {
        std::str::from_utf8(caps.get(i)?.as_bytes())
            .ok()?
            .parse()
            .ok()
    };
    let level = match caps.get(4).map(|m| m.as_bytes()) {
        Some(b"a") => 0xA,
        Some(b"b") => 0xB,
        Some(b"rc") => 0xC,
        _ => 0xF,
    };
    Some(Version {
        level,
        serial: if level == 0xF { 0 } else { num(5)? },
        ..Version::new(num(1)?, num(2)?, num(3)?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_py_version_hex() {
        assert_eq!(Version::from_hex(0x030C01F0).unwrap().to_string(), "3.12.1");
        assert_eq!(
            Version::from_hex(0x030F00A2).unwrap().to_string(),
            "3.15.0a2"
        );
        assert!(Version::from_hex(0xdead_beef).is_none());
        assert!(Version::from_hex(0x1_030C01F0).is_none());
    }

    #[test]
    fn finds_the_version_buffer_among_other_bytes() {
        let mut bss = vec![0u8; 64];
        bss.extend_from_slice(b"3.10.13 (main, May  9 2026, 07:34:36) [GCC 12.2.0]\x00");
        let v = parse_version_buffer(&bss).unwrap();
        assert_eq!((v.major, v.minor, v.micro), (3, 10, 13));
        assert!(parse_version_buffer(b"x13.10.13 (main").is_none());
        let rc = parse_version_buffer(b"3.13.0rc2+ (heads").unwrap();
        assert_eq!(rc.to_string(), "3.13.0rc2");
    }

    #[test]
    fn reads_major_minor_from_library_names() {
        assert_eq!(
            version_from_file_name("libpython3.6m.so.1.0").map(|v| (v.major, v.minor)),
            Some((3, 6))
        );
        assert_eq!(
            version_from_file_name("python3.12").map(|v| (v.major, v.minor)),
            Some((3, 12))
        );
        assert!(version_from_file_name("uwsgi").is_none());
    }
}
