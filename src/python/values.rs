//! What a variable holds, read from the target's objects for `dump --locals`: built-in values
//! as short bounded previews, other objects by type and address. Never pieces a value together.

use std::collections::HashMap;
use std::sync::Arc;

use super::layout::{ObjectFields, StackLayout};
use super::objects;
use super::thread_names::{IntSize, ObjectLayout};
use crate::target::memory::{check_pointer, u32_at, u64_at, Memory, ReadError};

/// Items of a container shown.
pub const PREVIEW_ITEMS: usize = 5;
/// Characters of a `str` shown, bytes of a `bytes`.
pub const PREVIEW_CHARS: u64 = 120;
/// Containers in containers shown with their items; deeper ones by type and length only.
pub const MAX_DEPTH: usize = 3;
/// 30-bit digits of an `int` read (about 900 decimal digits); a bigger one by size only.
pub const MAX_INT_DIGITS: u64 = 100;
/// Longest type name read (bytes); a longer one is cut there.
const MAX_TYPE_NAME: usize = 128;
/// Largest length believed of a string, a container or an int's digit count.
const MAX_LENGTH: u64 = 1 << 40;
/// Entries of a dict's table, and slots of a set's, looked through for its first items.
const DICT_ENTRIES_SCANNED: u64 = 64;
const SET_SLOTS_SCANNED: u64 = 256;
/// Largest dict table believed (entries).
const MAX_DICT_TABLE: u64 = 1 << 30;
/// Reads of a variable that keeps changing before it is shown as changed.
const ATTEMPTS: usize = 3;
/// Static type objects remembered (they live as long as the process).
const MAX_TYPES: usize = 4096;
/// `Py_TPFLAGS_HEAPTYPE`: a class made at run time, whatever its name says.
const HEAP_TYPE: u64 = 1 << 9;
const DIGIT_BITS: u32 = 30;

/// A container's kind, as Python names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    Tuple,
    List,
    Dict,
    Set,
    FrozenSet,
}

impl ContainerKind {
    pub fn type_name(self) -> &'static str {
        match self {
            ContainerKind::Tuple => "tuple",
            ContainerKind::List => "list",
            ContainerKind::Dict => "dict",
            ContainerKind::Set => "set",
            ContainerKind::FrozenSet => "frozenset",
        }
    }
}

/// A value as read from the target.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    /// An `int`: its sign, its 30-bit digits (least significant first; empty when it has
    /// more than [`MAX_INT_DIGITS`]) and its size in bits.
    Int {
        negative: bool,
        digits: Vec<u32>,
        bits: u64,
    },
    Float(f64),
    /// A `str`: its first [`PREVIEW_CHARS`] characters and its length in characters.
    Str {
        text: String,
        length: u64,
    },
    /// A `bytes`: its first [`PREVIEW_CHARS`] bytes and its length.
    Bytes {
        data: Vec<u8>,
        length: u64,
    },
    /// A tuple, list, set or frozenset: its length and its first items (None: too deep to
    /// read).
    Sequence {
        kind: ContainerKind,
        addr: u64,
        length: u64,
        items: Option<Vec<Value>>,
    },
    /// A dict: its length and its first items (None: too deep to read).
    Dict {
        addr: u64,
        length: u64,
        items: Option<Vec<(Value, Value)>>,
    },
    /// A container inside itself (Python's `[...]`).
    Recursive {
        kind: ContainerKind,
        addr: u64,
    },
    /// Any other object: its type's name and its address.
    Object {
        type_name: Arc<str>,
        addr: u64,
    },
    /// It changed while it was read: what was read is not shown.
    Changed,
    /// Not an object that could be read (a dangling pointer, a string in the legacy form).
    Unreadable {
        addr: u64,
    },
}

impl Value {
    /// The name of the value's type ("int", "list", "Account"); None where it was not read.
    pub fn type_name(&self) -> Option<&str> {
        Some(match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int { .. } => "int",
            Value::Float(_) => "float",
            Value::Str { .. } => "str",
            Value::Bytes { .. } => "bytes",
            Value::Sequence { kind, .. } | Value::Recursive { kind, .. } => kind.type_name(),
            Value::Dict { .. } => "dict",
            Value::Object { type_name, .. } => type_name,
            Value::Changed | Value::Unreadable { .. } => return None,
        })
    }

    /// An `int` from a machine integer (3.14's tagged ints in frame slots).
    pub fn int(value: i64) -> Value {
        let mut magnitude = value.unsigned_abs();
        let bits = u64::from(64 - magnitude.leading_zeros());
        let mut digits = Vec::new();
        while magnitude != 0 {
            digits.push((magnitude & ((1 << DIGIT_BITS) - 1)) as u32);
            magnitude >>= DIGIT_BITS;
        }
        Value::Int {
            negative: value < 0,
            digits,
            bits,
        }
    }

    /// The same value read twice (floats by their bits, so that a NaN equals itself).
    fn same(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::None, Value::None) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (
                Value::Int {
                    negative: a,
                    digits: da,
                    bits: ba,
                },
                Value::Int {
                    negative: b,
                    digits: db,
                    bits: bb,
                },
            ) => a == b && da == db && ba == bb,
            (
                Value::Str {
                    text: a,
                    length: la,
                },
                Value::Str {
                    text: b,
                    length: lb,
                },
            ) => a == b && la == lb,
            (
                Value::Bytes {
                    data: a,
                    length: la,
                },
                Value::Bytes {
                    data: b,
                    length: lb,
                },
            ) => a == b && la == lb,
            _ => false,
        }
    }
}

/// What a type object is, for reading its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Bool,
    Int,
    Float,
    Str,
    Bytes,
    Container(ContainerKind),
    Cell,
    /// The placeholder of a deleted set entry (`<dummy key> type`).
    SetDummy,
    Other,
}

#[derive(Debug, Clone)]
struct TypeInfo {
    kind: Kind,
    name: Arc<str>,
}

/// Reads values of one interpreter's objects, remembering its built-in types.
pub struct ValueReader {
    strings: StackLayout,
    fields: ObjectFields,
    objects: ObjectLayout,
    types: HashMap<u64, TypeInfo>,
    /// Objects read so far: what bounds the time one dump spends on variables.
    objects_read: usize,
}

/// Errors that end the whole read (the target exited, or may no longer be read): every
/// other one makes the value unreadable, not the frame.
fn fatal(error: &ReadError) -> bool {
    matches!(error, ReadError::Gone | ReadError::Denied)
}

impl ValueReader {
    /// None where the version's objects are not known.
    pub(super) fn new(strings: StackLayout, objects: ObjectLayout) -> Option<ValueReader> {
        Some(ValueReader {
            fields: strings.locals?.objects,
            strings,
            objects,
            types: HashMap::new(),
            objects_read: 0,
        })
    }

    /// Objects read since this reader was made (each one a few bounded reads).
    pub fn objects_read(&self) -> usize {
        self.objects_read
    }

    /// The value a pointer at `location` points to, or None if it is NULL (an unbound
    /// variable). `tagged`: the pointer is a `_PyStackRef` (3.14+ frame slots). If the
    /// pointer is not the same after the value was read, the variable changed meanwhile:
    /// read again, and shown as changed if it changes under every read.
    pub fn value_at(
        &mut self,
        memory: &dyn Memory,
        location: u64,
        tagged: bool,
    ) -> Result<Option<Value>, ReadError> {
        for _ in 0..ATTEMPTS {
            let bits = memory.read_u64(location)?;
            let object = match bits {
                _ if tagged && bits & 3 == 3 => return Ok(Some(Value::int(bits as i64 >> 2))),
                _ if tagged => bits & !3,
                _ => bits,
            };
            if object == 0 {
                return Ok(None);
            }
            let value = self.value(memory, object, 0, &mut Vec::new())?;
            if memory.read_u64(location)? == bits && !matches!(value, Value::Changed) {
                return Ok(Some(value));
            }
        }
        Ok(Some(Value::Changed))
    }

    /// Where a cell keeps its content, if `object` is a cell (a frame's cell and free
    /// variables hold one; an argument not yet moved into its cell holds the value itself).
    pub fn cell_content(
        &mut self,
        memory: &dyn Memory,
        object: u64,
    ) -> Result<Option<u64>, ReadError> {
        if object == 0 || check_pointer(object, 8).is_err() {
            return Ok(None);
        }
        match self.type_of(memory, object) {
            Ok((_, info)) if info.kind == Kind::Cell => Ok(Some(object + self.fields.cell_ref)),
            Ok(_) => Ok(None),
            Err(e) if fatal(&e) => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// The value of the object at `addr`, `depth` containers deep, inside the containers
    /// at `ancestors`.
    fn value(
        &mut self,
        memory: &dyn Memory,
        addr: u64,
        depth: usize,
        ancestors: &mut Vec<u64>,
    ) -> Result<Value, ReadError> {
        match self.read_value(memory, addr, depth, ancestors) {
            Ok(value) => Ok(value),
            Err(e) if fatal(&e) => Err(e),
            Err(_) => Ok(Value::Unreadable { addr }),
        }
    }

    fn read_value(
        &mut self,
        memory: &dyn Memory,
        addr: u64,
        depth: usize,
        ancestors: &mut Vec<u64>,
    ) -> Result<Value, ReadError> {
        check_pointer(addr, 8)?;
        self.objects_read += 1;
        let (ty, info) = self.type_of(memory, addr)?;
        let value = match info.kind {
            Kind::None => Value::None,
            Kind::Bool => match self.twice(|| self.int(memory, addr))? {
                Value::Int { digits, .. } => Value::Bool(digits.iter().any(|&d| d != 0)),
                other => other,
            },
            Kind::Int => self.twice(|| self.int(memory, addr))?,
            Kind::Float => self.twice(|| {
                let bits = memory.read_u64(addr + self.fields.float_value)?;
                Ok(Value::Float(f64::from_bits(bits)))
            })?,
            Kind::Str => self.twice(|| self.str(memory, addr))?,
            Kind::Bytes => self.twice(|| self.bytes(memory, addr))?,
            Kind::Container(kind) if ancestors.contains(&addr) => Value::Recursive { kind, addr },
            Kind::Container(kind) => {
                ancestors.push(addr);
                let value = self.container(memory, kind, addr, depth, ancestors);
                ancestors.pop();
                value?
            }
            Kind::Cell | Kind::SetDummy | Kind::Other => Value::Object {
                type_name: info.name.clone(),
                addr,
            },
        };
        // Freed and made into another object while it was read.
        if memory.read_u64(addr + self.strings.ob_type)? != ty {
            return Ok(Value::Changed);
        }
        Ok(value)
    }

    /// A value of an immutable object read twice: the same both times, or changed (its
    /// memory freed and reused meanwhile).
    fn twice(&self, read: impl Fn() -> Result<Value, ReadError>) -> Result<Value, ReadError> {
        let first = read()?;
        let second = read()?;
        Ok(if first.same(&second) {
            first
        } else {
            Value::Changed
        })
    }

    /// The type of the object at `addr`: its address and what it is.
    fn type_of(&mut self, memory: &dyn Memory, addr: u64) -> Result<(u64, TypeInfo), ReadError> {
        let ty = memory.read_pointer(addr + self.strings.ob_type, 8)?;
        if let Some(info) = self.types.get(&ty) {
            return Ok((ty, info.clone()));
        }
        let size = self.strings.tp_name.max(self.fields.type_flags) + 8;
        let block = memory.read_bytes(ty, size as usize)?;
        let bad = || ReadError::BadPointer { addr: ty };
        let flags = u64_at(&block, self.fields.type_flags).ok_or_else(bad)?;
        let name_at = u64_at(&block, self.strings.tp_name).ok_or_else(bad)?;
        let name = type_name(memory, name_at)?;
        let heap = flags & HEAP_TYPE != 0;
        let kind = match name.as_str() {
            _ if heap => Kind::Other,
            "NoneType" => Kind::None,
            "bool" => Kind::Bool,
            "int" => Kind::Int,
            "float" => Kind::Float,
            "str" => Kind::Str,
            "bytes" => Kind::Bytes,
            "tuple" => Kind::Container(ContainerKind::Tuple),
            "list" => Kind::Container(ContainerKind::List),
            "dict" => Kind::Container(ContainerKind::Dict),
            "set" => Kind::Container(ContainerKind::Set),
            "frozenset" => Kind::Container(ContainerKind::FrozenSet),
            "cell" => Kind::Cell,
            "<dummy key> type" => Kind::SetDummy,
            _ => Kind::Other,
        };
        let info = TypeInfo {
            kind,
            name: name.into(),
        };
        // A class made at run time may be freed and its memory reused: not remembered.
        if !heap && self.types.len() < MAX_TYPES {
            self.types.insert(ty, info.clone());
        }
        Ok((ty, info))
    }

    fn int(&self, memory: &dyn Memory, addr: u64) -> Result<Value, ReadError> {
        let bad = || ReadError::BadPointer { addr };
        let (negative, ndigits) = match self.objects.int_size {
            IntSize::SignedCount(at) => {
                let size = memory.read_u64(addr + at)? as i64;
                (size < 0, size.unsigned_abs())
            }
            // 3.12+ `lv_tag`: the digit count << 3 | the sign (0 positive, 1 zero,
            // 2 negative).
            IntSize::Tag(at) => {
                let tag = memory.read_u64(addr + at)?;
                match tag & 3 {
                    3 => return Err(bad()),
                    sign => (sign == 2, tag >> 3),
                }
            }
        };
        if ndigits > MAX_LENGTH {
            return Err(bad());
        }
        let start = addr + self.objects.int_digits;
        if ndigits > MAX_INT_DIGITS {
            let top = memory.read_u32(start + 4 * (ndigits - 1))?;
            return Ok(Value::Int {
                negative,
                digits: Vec::new(),
                bits: (ndigits - 1) * u64::from(DIGIT_BITS) + u64::from(32 - top.leading_zeros()),
            });
        }
        let block = memory.read_bytes(start, 4 * ndigits as usize)?;
        let digits: Vec<u32> = block
            .chunks_exact(4)
            .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
            .collect();
        if digits.iter().any(|&d| d >> DIGIT_BITS != 0) || digits.last() == Some(&0) {
            return Err(bad());
        }
        let bits = digits.last().map_or(0, |&top| {
            (digits.len() as u64 - 1) * u64::from(DIGIT_BITS) + u64::from(32 - top.leading_zeros())
        });
        Ok(Value::Int {
            negative: negative && !digits.is_empty(),
            digits,
            bits,
        })
    }

    /// A compact `str`'s first characters and length (legacy strings, made by old C APIs
    /// before 3.12, are left unread).
    fn str(&self, memory: &dyn Memory, addr: u64) -> Result<Value, ReadError> {
        let fields = &self.strings.unicode;
        let header = memory.read_bytes(addr, (fields.state + 4) as usize)?;
        let bad = || ReadError::BadPointer { addr };
        let length = u64_at(&header, fields.length).ok_or_else(bad)?;
        let state = u32_at(&header, fields.state).ok_or_else(bad)?;
        let bit = u32::from(fields.kind_bit);
        let (kind, compact, ascii) = (
            state >> bit & 7,
            state >> (bit + 3) & 1 == 1,
            state >> (bit + 4) & 1 == 1,
        );
        if !compact {
            return Ok(Value::Object {
                type_name: "str".into(),
                addr,
            });
        }
        if length > MAX_LENGTH || (ascii && kind != 1) {
            return Err(bad());
        }
        let start = if ascii {
            fields.ascii_data
        } else {
            fields.compact_data
        };
        let shown = length.min(PREVIEW_CHARS);
        let data = memory.read_bytes(addr + start, (shown * u64::from(kind)) as usize)?;
        if ascii && !data.is_ascii() {
            return Err(bad());
        }
        let text = objects::decode(kind, &data).ok_or_else(bad)?;
        Ok(Value::Str { text, length })
    }

    fn bytes(&self, memory: &dyn Memory, addr: u64) -> Result<Value, ReadError> {
        let length = memory.read_u64(addr + self.strings.bytes_size)?;
        if length > MAX_LENGTH {
            return Err(ReadError::BadPointer { addr });
        }
        let data = memory.read_bytes(
            addr + self.strings.bytes_data,
            length.min(PREVIEW_CHARS) as usize,
        )?;
        Ok(Value::Bytes { data, length })
    }

    /// A container: its length and its first items, with a check that what was read of it
    /// is still there afterwards (else it changed meanwhile).
    fn container(
        &mut self,
        memory: &dyn Memory,
        kind: ContainerKind,
        addr: u64,
        depth: usize,
        ancestors: &mut Vec<u64>,
    ) -> Result<Value, ReadError> {
        let deep = depth >= MAX_DEPTH;
        let before = self.members(memory, kind, addr, deep)?;
        let mut items = Vec::new();
        for &object in &before.objects {
            items.push(self.value(memory, object, depth + 1, ancestors)?);
        }
        if self.members(memory, kind, addr, deep)? != before {
            return Ok(Value::Changed);
        }
        let length = before.length;
        Ok(match kind {
            ContainerKind::Dict => Value::Dict {
                addr,
                length,
                items: (!deep).then(|| {
                    let mut pairs = Vec::new();
                    let mut items = items.into_iter();
                    while let (Some(key), Some(value)) = (items.next(), items.next()) {
                        pairs.push((key, value));
                    }
                    pairs
                }),
            },
            _ => Value::Sequence {
                kind,
                addr,
                length,
                items: (!deep).then_some(items),
            },
        })
    }

    /// What a container holds: its length and its first items' objects (a dict's as key,
    /// value, key, value...), none when `header_only`.
    fn members(
        &mut self,
        memory: &dyn Memory,
        kind: ContainerKind,
        addr: u64,
        header_only: bool,
    ) -> Result<Members, ReadError> {
        let bad = || ReadError::BadPointer { addr };
        let f = &self.fields;
        let take = if header_only { 0 } else { PREVIEW_ITEMS };
        let (length, objects) = match kind {
            ContainerKind::Tuple | ContainerKind::List => {
                let length = memory.read_u64(addr + f.var_size)?;
                if length > MAX_LENGTH {
                    return Err(bad());
                }
                let items = match kind {
                    ContainerKind::Tuple => addr + f.tuple_items,
                    _ => memory.read_u64(addr + f.list_items)?,
                };
                let shown = length.min(take as u64);
                let objects = if shown == 0 {
                    Vec::new()
                } else {
                    check_pointer(items, 8)?;
                    let block = memory.read_bytes(items, 8 * shown as usize)?;
                    block
                        .chunks_exact(8)
                        .map(|p| u64_at(p, 0).unwrap_or(0))
                        .collect()
                };
                (length, objects)
            }
            ContainerKind::Dict => {
                let first = if header_only { 0 } else { DICT_ENTRIES_SCANNED };
                let (used, slots) =
                    self.objects
                        .dict_first_slots(memory, addr, MAX_DICT_TABLE, first)?;
                let objects = slots
                    .live()
                    .into_iter()
                    .take(take)
                    .flat_map(|(key, value)| [key, value])
                    .collect();
                (used, objects)
            }
            ContainerKind::Set | ContainerKind::FrozenSet => {
                let header = memory.read_bytes(addr, (f.set_table + 8) as usize)?;
                let length = u64_at(&header, f.set_used).ok_or_else(bad)?;
                let mask = u64_at(&header, f.set_mask).ok_or_else(bad)?;
                let table = u64_at(&header, f.set_table).ok_or_else(bad)?;
                if length > MAX_LENGTH || mask >= MAX_LENGTH || !(mask + 1).is_power_of_two() {
                    return Err(bad());
                }
                let mut objects = Vec::new();
                if take > 0 && length > 0 {
                    check_pointer(table, 8)?;
                    // Entries are {key, hash}; an empty one has no key, a deleted one the
                    // dummy key.
                    let slots = (mask + 1).min(SET_SLOTS_SCANNED);
                    let block = memory.read_bytes(table, 16 * slots as usize)?;
                    for entry in block.chunks_exact(16) {
                        let key = u64_at(entry, 0).unwrap_or(0);
                        if key == 0 || self.is_set_dummy(memory, key) {
                            continue;
                        }
                        objects.push(key);
                        if objects.len() == take {
                            break;
                        }
                    }
                }
                (length, objects)
            }
        };
        Ok(Members { length, objects })
    }

    fn is_set_dummy(&mut self, memory: &dyn Memory, key: u64) -> bool {
        matches!(self.type_of(memory, key), Ok((_, info)) if info.kind == Kind::SetDummy)
    }
}

/// What a container held when read: compared before and after its items are read.
#[derive(Debug, PartialEq, Eq)]
struct Members {
    length: u64,
    objects: Vec<u64>,
}

/// A type's `tp_name`, at most [`MAX_TYPE_NAME`] bytes (cut with "..." past that), invalid
/// UTF-8 as U+FFFD.
fn type_name(memory: &dyn Memory, addr: u64) -> Result<String, ReadError> {
    check_pointer(addr, 1)?;
    let mut bytes = Vec::new();
    let mut at = addr;
    while bytes.len() < MAX_TYPE_NAME {
        // In small pieces: a short name may end just before an unmapped page.
        let chunk = memory.read_bytes(at, 16.min(MAX_TYPE_NAME - bytes.len()))?;
        if let Some(end) = chunk.iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&chunk[..end]);
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        bytes.extend_from_slice(&chunk);
        at += chunk.len() as u64;
    }
    Ok(format!("{}...", String::from_utf8_lossy(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::layout::table_for;
    use crate::python::thread_names::object_layout;
    use crate::python::version::Version;
    use crate::target::memory::MemoryImage;
    use std::cell::Cell;

    const HEAP: u64 = 0x10_0000;

    /// Objects laid out as 3.12 lays them out, in one heap.
    struct Heap {
        strings: StackLayout,
        bytes: Vec<u8>,
        types: HashMap<&'static str, u64>,
    }

    impl Heap {
        fn new() -> Heap {
            let strings = table_for(&Version::new(3, 12, 1)).unwrap().stack.unwrap();
            let mut heap = Heap {
                strings,
                bytes: Vec::new(),
                types: HashMap::new(),
            };
            for name in [
                "NoneType", "int", "float", "str", "bytes", "tuple", "list", "set",
            ] {
                let ty = heap.type_object(name, false);
                heap.types.insert(name, ty);
            }
            heap
        }

        fn alloc(&mut self, object: &[u8]) -> u64 {
            self.bytes.resize(self.bytes.len().next_multiple_of(16), 0);
            let addr = HEAP + self.bytes.len() as u64;
            self.bytes.extend_from_slice(object);
            addr
        }

        fn put(&mut self, addr: u64, value: u64) {
            let at = (addr - HEAP) as usize;
            self.bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }

        fn type_object(&mut self, name: &str, heap_type: bool) -> u64 {
            let mut text = name.as_bytes().to_vec();
            text.push(0);
            let name_at = self.alloc(&text);
            let ty = self.alloc(&[0; 256]);
            self.put(ty + self.strings.tp_name, name_at);
            let flags = if heap_type { HEAP_TYPE } else { 0 };
            self.put(ty + 168, flags);
            ty
        }

        /// An object of built-in type `name` with `body` after its 16-byte header.
        fn object(&mut self, name: &str, body: &[u8]) -> u64 {
            let ty = self.types[name];
            self.object_of(ty, body)
        }

        fn object_of(&mut self, ty: u64, body: &[u8]) -> u64 {
            let mut object = vec![0u8; 16];
            object[8..16].copy_from_slice(&ty.to_le_bytes());
            object.extend_from_slice(body);
            self.alloc(&object)
        }

        /// A 3.12 int: `lv_tag` (digit count << 3 | sign), then 30-bit digits.
        fn int(&mut self, negative: bool, digits: &[u32]) -> u64 {
            let sign = match (digits.is_empty(), negative) {
                (true, _) => 1,
                (false, true) => 2,
                (false, false) => 0,
            };
            let mut body = ((digits.len() as u64) << 3 | sign).to_le_bytes().to_vec();
            for d in digits {
                body.extend_from_slice(&d.to_le_bytes());
            }
            body.resize(body.len().max(16), 0);
            self.object("int", &body)
        }

        fn str(&mut self, text: &str) -> u64 {
            let mut object = crate::python::objects::str_object(&self.strings, text);
            object[8..16].copy_from_slice(&self.types["str"].to_le_bytes());
            self.alloc(&object)
        }

        /// A tuple or list of `length` whose first items are `items`.
        fn sequence(&mut self, name: &str, length: u64, items: &[u64]) -> u64 {
            let mut array = Vec::new();
            for item in items {
                array.extend_from_slice(&item.to_le_bytes());
            }
            if name == "tuple" {
                let mut body = length.to_le_bytes().to_vec();
                body.extend_from_slice(&array);
                return self.object("tuple", &body);
            }
            let at = self.alloc(&array);
            let mut body = length.to_le_bytes().to_vec();
            body.extend_from_slice(&at.to_le_bytes());
            body.extend_from_slice(&length.to_le_bytes());
            self.object("list", &body)
        }

        fn image(&self) -> MemoryImage {
            let mut image = MemoryImage::new();
            image.add(HEAP, self.bytes.clone());
            image
        }

        fn reader(&self) -> ValueReader {
            let objects = object_layout(&Version::new(3, 12, 1), false).unwrap();
            ValueReader::new(self.strings, objects).unwrap()
        }
    }

    fn read(heap: &Heap, object: u64) -> Value {
        let mut slot = Heap {
            strings: heap.strings,
            bytes: heap.bytes.clone(),
            types: heap.types.clone(),
        };
        let location = slot.alloc(&object.to_le_bytes());
        slot.reader()
            .value_at(&slot.image(), location, false)
            .unwrap()
            .unwrap()
    }

    fn shown(heap: &Heap, object: u64) -> String {
        format!("{:?}", read(heap, object))
    }

    #[test]
    fn scalars_read_back() {
        let mut heap = Heap::new();
        let none = heap.object("NoneType", &[]);
        let zero = heap.int(false, &[]);
        let minus = heap.int(true, &[42]);
        let big = heap.int(false, &[0, 0, 0, 1 << 10]);
        let float = heap.object("float", &2.5f64.to_le_bytes());
        let text = heap.str("données");
        assert!(matches!(read(&heap, none), Value::None));
        assert!(matches!(read(&heap, zero), Value::Int { ref digits, .. } if digits.is_empty()));
        assert!(matches!(
            read(&heap, minus),
            Value::Int { negative: true, ref digits, bits: 6 } if digits == &[42]
        ));
        assert!(matches!(read(&heap, big), Value::Int { bits: 101, .. }));
        assert!(matches!(read(&heap, float), Value::Float(x) if x == 2.5));
        assert!(
            matches!(read(&heap, text), Value::Str { ref text, length: 7 } if text == "données")
        );
    }

    #[test]
    fn long_values_are_read_only_as_far_as_they_are_shown() {
        let mut heap = Heap::new();
        // A 10,000-character str of which the image holds only the shown characters, and
        // a list of a million items of which it holds five: reading further would fault.
        let mut object =
            crate::python::objects::str_object(&heap.strings, &"x".repeat(PREVIEW_CHARS as usize));
        object[8..16].copy_from_slice(&heap.types["str"].to_le_bytes());
        object[16..24].copy_from_slice(&10_000u64.to_le_bytes());
        let long = heap.alloc(&object);
        let item = heap.int(false, &[7]);
        let list = heap.sequence("list", 1_000_000, &[item; PREVIEW_ITEMS]);
        match read(&heap, long) {
            Value::Str { text, length } => {
                assert_eq!((text.len() as u64, length), (PREVIEW_CHARS, 10_000));
            }
            other => panic!("{other:?}"),
        }
        match read(&heap, list) {
            Value::Sequence {
                length,
                items: Some(items),
                ..
            } => assert_eq!((length, items.len()), (1_000_000, PREVIEW_ITEMS)),
            other => panic!("{other:?}"),
        }
        let huge = heap.int(false, &[1; MAX_INT_DIGITS as usize + 1]);
        assert!(
            matches!(read(&heap, huge), Value::Int { ref digits, bits: 3001, .. } if digits.is_empty())
        );
    }

    #[test]
    fn containers_inside_themselves_and_too_deep() {
        let mut heap = Heap::new();
        let list = heap.sequence("list", 1, &[0]);
        let array = heap.bytes[(list - HEAP + 24) as usize..][..8].to_vec();
        heap.put(u64::from_le_bytes(array.try_into().unwrap()), list);
        assert_eq!(
            shown(&heap, list),
            format!(
                "Sequence {{ kind: List, addr: {list}, length: 1, items: Some([Recursive {{ \
                 kind: List, addr: {list} }}]) }}"
            )
        );
        let mut inner = heap.int(false, &[1]);
        for _ in 0..=MAX_DEPTH {
            inner = heap.sequence("tuple", 1, &[inner]);
        }
        let mut value = read(&heap, inner);
        for _ in 0..MAX_DEPTH {
            value = match value {
                Value::Sequence {
                    items: Some(mut items),
                    ..
                } => items.remove(0),
                other => panic!("{other:?}"),
            };
        }
        assert!(matches!(
            value,
            Value::Sequence {
                items: None,
                length: 1,
                ..
            }
        ));
    }

    #[test]
    fn classes_named_like_built_ins_and_garbage_are_not_believed() {
        let mut heap = Heap::new();
        let impostor = heap.type_object("int", true);
        let fake = heap.object_of(impostor, &[0xff; 16]);
        assert!(
            matches!(read(&heap, fake), Value::Object { ref type_name, addr } if &**type_name == "int" && addr == fake)
        );
        let nowhere = heap.object_of(0x7000_0000, &[]);
        assert!(matches!(read(&heap, nowhere), Value::Unreadable { .. }));
        let absurd = heap.sequence("list", 1 << 50, &[]);
        assert!(matches!(read(&heap, absurd), Value::Unreadable { .. }));
        let bad_digit = heap.int(false, &[1 << 31]);
        assert!(matches!(read(&heap, bad_digit), Value::Unreadable { .. }));
    }

    #[test]
    fn a_wide_tree_costs_a_bounded_number_of_objects() {
        // Lists of PREVIEW_ITEMS lists, MAX_DEPTH + 2 levels deep, each of a million
        // items: only the previews are read, PREVIEW_ITEMS more objects per level down to
        // MAX_DEPTH, whatever the lengths say.
        let mut heap = Heap::new();
        let mut level = heap.int(false, &[1]);
        for _ in 0..MAX_DEPTH + 2 {
            level = heap.sequence("list", 1_000_000, &[level; PREVIEW_ITEMS]);
        }
        let location = heap.alloc(&level.to_le_bytes());
        let mut reader = heap.reader();
        reader.value_at(&heap.image(), location, false).unwrap();
        let bound: usize = (0..=MAX_DEPTH).map(|d| PREVIEW_ITEMS.pow(d as u32)).sum();
        assert_eq!(reader.objects_read(), bound);
    }

    #[test]
    fn garbage_memory_never_panics_and_reads_are_bounded() {
        // A heap of random words, a third of them pointers into the heap or at the built-in
        // types: objects whose fields say anything. Every word read as a variable must give
        // a value or an error, within the per-value bound on objects.
        let mut heap = Heap::new();
        let types: Vec<u64> = heap.types.values().copied().collect();
        let start = heap.alloc(&[0; 8]);
        let words = 4096u64;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut garbage = Vec::new();
        for _ in 0..words {
            let r = random();
            let word = match r % 6 {
                0 => start + (random() % words) * 8,
                1 => types[(random() % types.len() as u64) as usize],
                2 => random() % 64,
                _ => random(),
            };
            garbage.extend_from_slice(&word.to_le_bytes());
        }
        let region = heap.alloc(&garbage);
        let image = heap.image();
        let mut reader = heap.reader();
        let per_value: usize = (0..=MAX_DEPTH)
            .map(|d| (2 * PREVIEW_ITEMS).pow(d as u32))
            .sum();
        for i in 0..words {
            let before = reader.objects_read();
            let _ = reader.value_at(&image, region + 8 * i, i % 2 == 0);
            assert!(reader.objects_read() - before <= ATTEMPTS * per_value);
        }
    }

    /// Memory where the word at `location` is another pointer at every read.
    struct Flipping {
        image: MemoryImage,
        location: u64,
        choices: [u64; 2],
        reads: Cell<usize>,
    }

    impl Memory for Flipping {
        fn read_exact(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            if addr == self.location && buf.len() == 8 {
                let n = self.reads.get();
                self.reads.set(n + 1);
                buf.copy_from_slice(&self.choices[n % 2].to_le_bytes());
                return Ok(());
            }
            self.image.read_exact(addr, buf)
        }
    }

    #[test]
    fn a_variable_that_changes_under_every_read_is_shown_as_changed() {
        let mut heap = Heap::new();
        let (one, two) = (heap.int(false, &[1]), heap.int(false, &[2]));
        let location = heap.alloc(&[0; 8]);
        let memory = Flipping {
            image: heap.image(),
            location,
            choices: [one, two],
            reads: Cell::new(0),
        };
        let value = heap.reader().value_at(&memory, location, false).unwrap();
        assert!(matches!(value, Some(Value::Changed)));
        assert_eq!(memory.reads.get(), 2 * ATTEMPTS);
    }

    #[test]
    fn tagged_slots_hold_pointers_and_small_ints() {
        let mut heap = Heap::new();
        let float = heap.object("float", &1.5f64.to_le_bytes());
        let deferred = heap.alloc(&(float | 1).to_le_bytes());
        let tagged_int = heap.alloc(&((-5i64 << 2) as u64 | 3).to_le_bytes());
        let null = heap.alloc(&1u64.to_le_bytes());
        let image = heap.image();
        let mut reader = heap.reader();
        let value = |reader: &mut ValueReader, at| reader.value_at(&image, at, true).unwrap();
        assert!(matches!(value(&mut reader, deferred), Some(Value::Float(x)) if x == 1.5));
        assert!(
            matches!(value(&mut reader, tagged_int), Some(Value::Int { negative: true, ref digits, .. }) if digits == &[5])
        );
        assert!(value(&mut reader, null).is_none());
    }
}
