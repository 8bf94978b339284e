//! Reading Python objects out of the target: `str`, `bytes` and type names. Every size is
//! bounded and every header checked; a moving target yields an error, never a wrong value.

use super::layout::{StackLayout, TextKind};
use crate::target::memory::{check_pointer, u32_at, u64_at, Memory, ReadError};

/// Longest string read whole (characters): a longer name is cut here and marked
/// ([`truncated`]), so that its frame (and the stack it is in) is still shown.
pub const MAX_STR_CHARS: u64 = 4096;
/// Longest string believed at all: a longer length is garbage (a string being freed, a
/// wrong pointer), not a name.
const MAX_PLAUSIBLE_CHARS: u64 = 1 << 30;

/// The first [`MAX_STR_CHARS`] characters of a string of `length`, and a marker saying how
/// many more there were.
fn truncated(mut head: String, length: u64) -> String {
    if length > MAX_STR_CHARS {
        head.push_str(&format!("...[{} more characters]", length - MAX_STR_CHARS));
    }
    head
}
/// Longest `bytes` read: a line table of a very large function.
pub const MAX_BYTES: u64 = 1 << 20;

/// A code point of a `str`. A lone surrogate (what `os.fsdecode` makes of bytes that are not
/// UTF-8, so common in `co_filename`) has no Rust `char`: it becomes U+FFFD. Past U+10FFFF
/// is no code point at all: the object is not a string (None).
fn code_point(value: u32) -> Option<char> {
    match value {
        0xD800..=0xDFFF => Some(char::REPLACEMENT_CHARACTER),
        _ => char::from_u32(value),
    }
}

/// The `kind` of a compact string: bytes per character. Each unit is one code point (a
/// UCS-2 string holds no surrogate pairs, only surrogates).
pub(super) fn decode(kind: u32, data: &[u8]) -> Option<String> {
    match kind {
        1 => Some(data.iter().map(|&b| b as char).collect()),
        2 => data
            .chunks_exact(2)
            .map(|c| code_point(u16::from_le_bytes([c[0], c[1]]) as u32))
            .collect(),
        4 => data
            .chunks_exact(4)
            .map(|c| code_point(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// A `str` object's text. Only compact strings (every identifier and literal) are read;
/// the legacy representation of strings built by old C APIs is reported as unreadable.
pub fn read_str(memory: &dyn Memory, addr: u64, layout: &StackLayout) -> Result<String, ReadError> {
    check_pointer(addr, 8)?;
    let fields = &layout.unicode;
    let header = memory.read_bytes(addr, (fields.state + 4) as usize)?;
    let length = u64_at(&header, fields.length).ok_or(ReadError::BadPointer { addr })?;
    let state = u32_at(&header, fields.state).ok_or(ReadError::BadPointer { addr })?;
    let bit = u32::from(fields.kind_bit);
    let (kind, compact, ascii) = (
        state >> bit & 7,
        state >> (bit + 3) & 1 == 1,
        state >> (bit + 4) & 1 == 1,
    );
    if !compact || length > MAX_PLAUSIBLE_CHARS || (ascii && kind != 1) {
        return Err(ReadError::BadPointer { addr });
    }
    let start = if ascii {
        fields.ascii_data
    } else {
        fields.compact_data
    };
    let read = length.min(MAX_STR_CHARS);
    let data = memory.read_bytes(addr + start, (read * kind as u64) as usize)?;
    if ascii && !data.is_ascii() {
        return Err(ReadError::BadPointer { addr });
    }
    let head = decode(kind, &data).ok_or(ReadError::BadPointer { addr })?;
    Ok(truncated(head, length))
}

/// A name from a code object (`co_name`, `co_filename`), in whatever kind of object the
/// version keeps names: a `str`, or on 2.7 a byte string, decoded as UTF-8 (invalid bytes
/// become U+FFFD, as lone surrogates of a 3.x name do).
pub fn read_name(
    memory: &dyn Memory,
    addr: u64,
    layout: &StackLayout,
) -> Result<String, ReadError> {
    match layout.text {
        TextKind::Unicode => read_str(memory, addr, layout),
        TextKind::Bytes => {
            check_pointer(addr, 8)?;
            let size = memory.read_u64(addr + layout.bytes_size)?;
            if size > MAX_PLAUSIBLE_CHARS {
                return Err(ReadError::BadPointer { addr });
            }
            let read = size.min(MAX_STR_CHARS);
            let bytes = memory.read_bytes(addr + layout.bytes_data, read as usize)?;
            Ok(truncated(
                String::from_utf8_lossy(&bytes).into_owned(),
                size,
            ))
        }
    }
}

/// A `bytes` object's contents, up to `MAX_BYTES`.
pub fn read_bytes_object(
    memory: &dyn Memory,
    addr: u64,
    layout: &StackLayout,
) -> Result<Vec<u8>, ReadError> {
    check_pointer(addr, 8)?;
    let size = memory.read_u64(addr + layout.bytes_size)?;
    if size > MAX_BYTES {
        return Err(ReadError::BadPointer { addr });
    }
    memory.read_bytes(addr + layout.bytes_data, size as usize)
}

/// The `tp_name` of an object's type (a C string, bounded).
pub fn type_name(
    memory: &dyn Memory,
    object: u64,
    layout: &StackLayout,
) -> Result<String, ReadError> {
    let ty = memory.read_pointer(object + layout.ob_type, 8)?;
    let name = memory.read_pointer(ty + layout.tp_name, 1)?;
    read_c_string(memory, name, 64)
}

/// A NUL-terminated string of at most `max` bytes.
pub fn read_c_string(memory: &dyn Memory, addr: u64, max: usize) -> Result<String, ReadError> {
    let mut bytes = Vec::new();
    // Read in small pieces: a short string may end just before an unmapped page.
    let mut at = addr;
    while bytes.len() < max {
        let chunk = memory.read_bytes(at, 16.min(max - bytes.len()))?;
        if let Some(end) = chunk.iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&chunk[..end]);
            return String::from_utf8(bytes).map_err(|_| ReadError::BadPointer { addr });
        }
        bytes.extend_from_slice(&chunk);
        at += chunk.len() as u64;
    }
    Err(ReadError::BadPointer { addr })
}

/// A compact `str` object as CPython lays it out, for tests that build target memory.
#[cfg(test)]
pub(crate) fn str_object(layout: &StackLayout, text: &str) -> Vec<u8> {
    let chars: Vec<char> = text.chars().collect();
    let max = chars.iter().map(|&c| c as u32).max().unwrap_or(0);
    let (kind, ascii) = match max {
        0..=0x7f => (1u32, true),
        0x80..=0xff => (1, false),
        0x100..=0xffff => (2, false),
        _ => (4, false),
    };
    let u = layout.unicode;
    let start = if ascii { u.ascii_data } else { u.compact_data } as usize;
    let mut object = vec![0u8; start];
    object[u.length as usize..u.length as usize + 8]
        .copy_from_slice(&(chars.len() as u64).to_le_bytes());
    let bit = u32::from(u.kind_bit);
    let state = (kind << bit) | (1 << (bit + 3)) | ((ascii as u32) << (bit + 4));
    object[u.state as usize..u.state as usize + 4].copy_from_slice(&state.to_le_bytes());
    for c in chars {
        let v = c as u32;
        object.extend_from_slice(&v.to_le_bytes()[..kind as usize]);
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::layout::table_for;
    use crate::python::version::Version;
    use crate::target::memory::MemoryImage;

    #[test]
    fn strings_of_every_kind_read_back() {
        for minor in [6, 11, 12] {
            let layout = table_for(&Version::new(3, minor, 0))
                .unwrap()
                .stack
                .unwrap();
            for text in ["spin", "café", "数据处理", "🐍 snake", ""] {
                let mut image = MemoryImage::new();
                image.add(0x10000, str_object(&layout, text));
                assert_eq!(
                    read_str(&image, 0x10000, &layout).unwrap(),
                    text,
                    "3.{minor}"
                );
            }
        }
    }

    /// "spin", interned, as the free-threaded 3.14.4 build lays it out (gdb `ptype /o
    /// PyASCIIObject`): a 32-byte object header, length at 32, `unsigned char interned` at
    /// 48, then kind (bits 0-2 of byte 49), compact (bit 3) and ascii (bit 4); the text at 56.
    #[test]
    fn free_threaded_3_14_strings_keep_kind_after_a_whole_interned_byte() {
        let mut layout = table_for(&Version::new(3, 12, 0)).unwrap().stack.unwrap();
        layout.unicode = crate::python::layout::UnicodeFields {
            length: 32,
            state: 48,
            kind_bit: 8,
            ascii_data: 56,
            compact_data: 72,
        };
        let mut object = vec![0u8; 56];
        object[32] = 4;
        object[48] = 1;
        object[49] = 1 | 1 << 3 | 1 << 4;
        object.extend_from_slice(b"spin\0");
        let mut image = MemoryImage::new();
        image.add(0x10000, object);
        assert_eq!(read_str(&image, 0x10000, &layout).unwrap(), "spin");
        for text in ["café", "数据处理", "🐍 snake"] {
            let mut image = MemoryImage::new();
            image.add(0x10000, str_object(&layout, text));
            assert_eq!(read_str(&image, 0x10000, &layout).unwrap(), text);
        }
    }

    #[test]
    fn lone_surrogates_read_as_replacement_characters() {
        let layout = table_for(&Version::new(3, 12, 0)).unwrap().stack.unwrap();
        // os.fsdecode(b"/tmp/\xff-\xe9.py"): kind 2, two lone low surrogates; then a kind 4
        // string with a surrogate pair's halves, which stay two code points.
        for (units, kind, expected) in [
            (
                vec![0x2fu32, 0xdcff, 0x2d, 0xdce9, 0x2e],
                2u32,
                "/\u{fffd}-\u{fffd}.",
            ),
            (vec![0x1f40d, 0xd83d, 0xde00], 4, "🐍\u{fffd}\u{fffd}"),
        ] {
            let mut object = str_object(&layout, "");
            let u = layout.unicode;
            object[u.length as usize..u.length as usize + 8]
                .copy_from_slice(&(units.len() as u64).to_le_bytes());
            let state = (kind << 2) | (1 << 5);
            object[u.state as usize..u.state as usize + 4].copy_from_slice(&state.to_le_bytes());
            object.resize(u.compact_data as usize, 0);
            for unit in units {
                object.extend_from_slice(&unit.to_le_bytes()[..kind as usize]);
            }
            let mut image = MemoryImage::new();
            image.add(0x10000, object);
            assert_eq!(read_str(&image, 0x10000, &layout).unwrap(), expected);
        }
    }

    #[test]
    fn python_2_names_are_byte_strings() {
        let layout = table_for(&Version::new(2, 7, 18)).unwrap().stack.unwrap();
        let string = |bytes: &[u8]| {
            let mut object = vec![0u8; 36];
            object[16..24].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            object.extend_from_slice(bytes);
            object.push(0);
            object
        };
        let mut image = MemoryImage::new();
        image.add(0x10000, string(b"/srv/app/legacy.py"));
        image.add(0x20000, string(b"caf\xc3\xa9-\xff"));
        let mut huge = string(b"x");
        huge[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        image.add(0x30000, huge);
        assert_eq!(
            read_name(&image, 0x10000, &layout).unwrap(),
            "/srv/app/legacy.py"
        );
        assert_eq!(
            read_name(&image, 0x20000, &layout).unwrap(),
            "café-\u{fffd}"
        );
        assert!(read_name(&image, 0x30000, &layout).is_err());
    }

    #[test]
    fn a_name_longer_than_the_limit_is_cut_and_marked() {
        let long = "x".repeat(10_000);
        let expected = format!("{}...[5904 more characters]", "x".repeat(4096));
        let layout = table_for(&Version::new(3, 12, 0)).unwrap().stack.unwrap();
        let mut image = MemoryImage::new();
        image.add(0x10000, str_object(&layout, &long));
        assert_eq!(read_str(&image, 0x10000, &layout).unwrap(), expected);
        // Wide characters are cut at the same count, not the same bytes.
        let wide = "数".repeat(5_000);
        let mut image = MemoryImage::new();
        image.add(0x10000, str_object(&layout, &wide));
        let read = read_str(&image, 0x10000, &layout).unwrap();
        assert!(read.starts_with(&"数".repeat(4096)));
        assert!(read.ends_with("...[904 more characters]"), "{read:.40}");
        // Python 2 byte strings alike.
        let layout = table_for(&Version::new(2, 7, 18)).unwrap().stack.unwrap();
        let mut object = vec![0u8; 36];
        object[16..24].copy_from_slice(&10_000u64.to_le_bytes());
        object.extend_from_slice(long.as_bytes());
        let mut image = MemoryImage::new();
        image.add(0x10000, object);
        assert_eq!(read_name(&image, 0x10000, &layout).unwrap(), expected);
    }

    #[test]
    fn implausible_strings_are_errors() {
        let layout = table_for(&Version::new(3, 12, 0)).unwrap().stack.unwrap();
        let mut object = str_object(&layout, "spin");
        object[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let mut image = MemoryImage::new();
        image.add(0x10000, object);
        assert!(read_str(&image, 0x10000, &layout).is_err());
        assert!(read_str(&image, 0x10003, &layout).is_err());
    }
}
