//! Python-level thread names (`threading.current_thread().name`), read from the target's
//! `threading._active` dict by walking dicts and instance attributes, and `sys.path`, by the
//! same walk. It reads objects only.

use std::collections::{HashMap, HashSet};

use super::layout::{Layout, StackLayout};
use super::objects::{read_str, type_name};
use super::version::Version;
use crate::target::memory::{check_pointer, u64_at, Memory, ReadError, MAX_READ};

/// Most entries believed in `sys.modules`.
const MAX_MODULES: u64 = 100_000;
/// Most entries believed in a module's or an instance's `__dict__`.
const MAX_NAMESPACE: u64 = 100_000;
/// Most threads believed in `threading._active`.
const MAX_THREADS: u64 = 16_384;
/// Most `sys.path` entries read.
const MAX_SYS_PATH: u64 = 256;
/// Largest hash table believed (entries): a bigger size is garbage.
const MAX_TABLE: u64 = 1 << 24;
/// The instance attribute `Thread.name` returns.
const NAME_ATTRIBUTE: &str = "_name";
/// `threading.get_ident()` is a `pthread_t`: three 30-bit digits hold any of them.
const MAX_INT_DIGITS: u64 = 3;
const DIGIT_BITS: u32 = 30;

/// How a dict's keys object (`PyDictKeysObject`) sizes its index table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TableSize {
    /// 3.6-3.10: `Py_ssize_t dk_size`; the index width follows from the size, and every entry
    /// is {hash, key, value}.
    Slots { size: u64 },
    /// 3.11+: `dk_log2_size`, `dk_log2_index_bytes` and `dk_kind` (bytes); entries of unicode
    /// and split keys (kind != 0) are {key, value}, general ones {hash, key, value}.
    Log2 {
        log2_size: u64,
        log2_index_bytes: u64,
        kind: u64,
    },
}

/// Field offsets of `PyDictKeysObject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeysFields {
    size: TableSize,
    nentries: u64,
    indices: u64,
}

/// Where a split dict's or an instance's values (`PyDictValues`) keep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ValuesFields {
    /// Offset of `values[0]` from the `PyDictValues` pointer.
    start: u64,
    /// 3.13+: `uint8_t capacity`, the length of the array.
    capacity: Option<u64>,
    /// 3.13+: `uint8_t valid`, 0 once the instance's dict has taken the values over.
    valid: Option<u64>,
}

/// Where an instance keeps its attributes (`_PyObject_GenericGetAttrWithDict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InstanceDict {
    /// 3.6-3.10: a dict pointer at `tp_dictoffset` from the object.
    DictOffset,
    /// 3.11, types with `Py_TPFLAGS_MANAGED_DICT`: a values pointer `values_before` bytes before
    /// the object (null once a dict exists) and the dict `dict_before` bytes before it.
    ValuesOrDict {
        flag: u64,
        values_before: u64,
        dict_before: u64,
    },
    /// 3.12, types with `Py_TPFLAGS_MANAGED_DICT`: one word `before` bytes before the object,
    /// the values pointer minus one (odd) or the dict.
    TaggedWord { flag: u64, before: u64 },
    /// 3.13+: values inline at `tp_basicsize` (types with `Py_TPFLAGS_INLINE_VALUES`) while
    /// they are valid; else the dict `dict_before` bytes before the object (`MANAGED_DICT`).
    Inline {
        inline_flag: u64,
        managed_flag: u64,
        dict_before: u64,
    },
}

/// How an `int` (`PyLongObject`) stores its number of 30-bit digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IntSize {
    /// Before 3.12: signed `ob_size`, the digit count with the sign.
    SignedCount(u64),
    /// 3.12+: `lv_tag`, digit count << 3 | sign (0 positive, 1 zero, 2 negative).
    Tag(u64),
}

/// Everything the walk from `sys.modules` to a thread's name needs, for one layout family.
/// Checked with gdb `ptype /o` against the pyenv builds 3.6.15-3.13.0 and Debian's 3.14.10
/// and 3.15.2 debug files, and against the internal headers of each (pycore_dict.h,
/// pycore_object.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ObjectLayout {
    family: &'static str,
    /// The family of this layout's free-threaded counterpart, where the version has one.
    free_threaded_family: Option<&'static str>,
    dict_used: u64,
    dict_keys: u64,
    dict_values: u64,
    keys: KeysFields,
    values: ValuesFields,
    module_dict: u64,
    type_basicsize: u64,
    type_flags: u64,
    type_dictoffset: u64,
    /// `PyHeapTypeObject.ht_cached_keys`: the shared keys of instances' values (3.11+).
    type_cached_keys: Option<u64>,
    instance: InstanceDict,
    pub(super) int_size: IntSize,
    /// The first 30-bit digit of an `int`.
    pub(super) int_digits: u64,
    /// `PyListObject`: `ob_size` (its length) and `ob_item` (the array of items).
    pub(super) list_size: u64,
    pub(super) list_items: u64,
}

const PY_TPFLAGS_INLINE_VALUES: u64 = 1 << 2;
const PY_TPFLAGS_MANAGED_DICT: u64 = 1 << 4;

const LAYOUT_3_6: ObjectLayout = ObjectLayout {
    family: "3.6-3.10",
    free_threaded_family: None,
    dict_used: 16,
    dict_keys: 32,
    dict_values: 40,
    keys: KeysFields {
        size: TableSize::Slots { size: 8 },
        nentries: 32,
        indices: 40,
    },
    values: ValuesFields {
        start: 0,
        capacity: None,
        valid: None,
    },
    module_dict: 16,
    type_basicsize: 32,
    type_flags: 168,
    type_dictoffset: 288,
    type_cached_keys: None,
    instance: InstanceDict::DictOffset,
    int_size: IntSize::SignedCount(16),
    int_digits: 24,
    list_size: 16,
    list_items: 24,
};

const LAYOUT_3_11: ObjectLayout = ObjectLayout {
    family: "3.11",
    keys: KeysFields {
        size: TableSize::Log2 {
            log2_size: 8,
            log2_index_bytes: 9,
            kind: 10,
        },
        nentries: 24,
        indices: 32,
    },
    type_cached_keys: Some(872),
    instance: InstanceDict::ValuesOrDict {
        flag: PY_TPFLAGS_MANAGED_DICT,
        values_before: 32,
        dict_before: 24,
    },
    ..LAYOUT_3_6
};

const LAYOUT_3_12: ObjectLayout = ObjectLayout {
    family: "3.12",
    type_cached_keys: Some(880),
    instance: InstanceDict::TaggedWord {
        flag: PY_TPFLAGS_MANAGED_DICT,
        before: 24,
    },
    int_size: IntSize::Tag(16),
    ..LAYOUT_3_11
};

const LAYOUT_3_13: ObjectLayout = ObjectLayout {
    family: "3.13-3.14",
    free_threaded_family: Some("3.13-3.14 free-threaded"),
    values: ValuesFields {
        start: 8,
        capacity: Some(0),
        valid: Some(3),
    },
    instance: InstanceDict::Inline {
        inline_flag: PY_TPFLAGS_INLINE_VALUES,
        managed_flag: PY_TPFLAGS_MANAGED_DICT,
        dict_before: 24,
    },
    ..LAYOUT_3_12
};

/// 3.15 added a field to `PyTypeObject` (416 -> 424 bytes), moving `ht_cached_keys`.
const LAYOUT_3_15: ObjectLayout = ObjectLayout {
    family: "3.15",
    free_threaded_family: Some("3.15 free-threaded"),
    type_cached_keys: Some(888),
    ..LAYOUT_3_13
};

pub(super) fn object_layout(version: &Version, free_threaded: bool) -> Option<ObjectLayout> {
    let default = match (version.major, version.minor) {
        (3, 6..=10) => LAYOUT_3_6,
        (3, 11) => LAYOUT_3_11,
        (3, 12) => LAYOUT_3_12,
        (3, 13 | 14) => LAYOUT_3_13,
        (3, 15) => LAYOUT_3_15,
        _ => return None,
    };
    if free_threaded {
        free_threaded_layout(default)
    } else {
        Some(default)
    }
}

/// How much longer a free-threaded build's object header is: `ob_tid`, `ob_flags`,
/// `ob_mutex`, `ob_gc_bits`, `ob_ref_local` and `ob_ref_shared` (24 bytes) take the place of
/// `ob_refcnt` (8) before `ob_type`, so every field of an object lies 16 bytes further in.
const FREE_THREADED_HEADER_EXTRA: u64 = 16;

/// The default layout of a version moved to a free-threaded build's objects (3.13+ only):
/// fields of objects (dicts, modules, types, ints) move by the longer header; the keys and
/// values tables are not objects and do not move; with no GC header before an object, its
/// managed dict is the word right before it (`MANAGED_DICT_OFFSET` is -1 word, not -3).
/// Checked with gdb `ptype /o` on a 3.13.5 `--disable-gil` build and against the 3.14
/// headers (pycore_object.h, cpython/object.h: `unique_id` is after `ht_cached_keys`).
fn free_threaded_layout(default: ObjectLayout) -> Option<ObjectLayout> {
    let InstanceDict::Inline {
        inline_flag,
        managed_flag,
        ..
    } = default.instance
    else {
        return None;
    };
    let family = default.free_threaded_family?;
    let shift = |offset: u64| offset + FREE_THREADED_HEADER_EXTRA;
    Some(ObjectLayout {
        family,
        dict_used: shift(default.dict_used),
        dict_keys: shift(default.dict_keys),
        dict_values: shift(default.dict_values),
        module_dict: shift(default.module_dict),
        type_basicsize: shift(default.type_basicsize),
        type_flags: shift(default.type_flags),
        type_dictoffset: shift(default.type_dictoffset),
        type_cached_keys: default.type_cached_keys.map(shift),
        instance: InstanceDict::Inline {
            inline_flag,
            managed_flag,
            dict_before: 8,
        },
        int_size: match default.int_size {
            IntSize::SignedCount(at) => IntSize::SignedCount(shift(at)),
            IntSize::Tag(at) => IntSize::Tag(shift(at)),
        },
        int_digits: shift(default.int_digits),
        list_size: shift(default.list_size),
        list_items: shift(default.list_items),
        ..default
    })
}

/// Reading dicts: the thread names' walk, and the values `dump --locals` shows.
impl ObjectLayout {
    /// The entries of the dict at `dict`, split or combined.
    fn dict_slots(&self, memory: &dyn Memory, dict: u64, max: u64) -> Result<Slots, ReadError> {
        let (used, slots) = self.dict_first_slots(memory, dict, max, u64::MAX)?;
        if used > slots.keys.len() as u64 {
            return Err(ReadError::BadPointer { addr: dict });
        }
        Ok(slots)
    }

    /// The dict at `dict`: its length (`ma_used`) and its first `first` entries (of at most
    /// `max`), live or not, in insertion order.
    pub(super) fn dict_first_slots(
        &self,
        memory: &dyn Memory,
        dict: u64,
        max: u64,
        first: u64,
    ) -> Result<(u64, Slots), ReadError> {
        check_pointer(dict, 8)?;
        let end = self.dict_used.max(self.dict_keys).max(self.dict_values) + 8;
        let header = memory.read_bytes(dict, end as usize)?;
        let field = |at| u64_at(&header, at).ok_or(ReadError::BadPointer { addr: dict });
        let used = field(self.dict_used)?;
        let keys = field(self.dict_keys)?;
        let values = field(self.dict_values)?;
        let slots = self.first_slots(memory, keys, (values != 0).then_some(values), max, first)?;
        Ok((used, slots))
    }

    /// Read the shape of the keys object at `keys`.
    fn table(&self, memory: &dyn Memory, keys: u64, max: u64) -> Result<Table, ReadError> {
        check_pointer(keys, 8)?;
        let fields = self.keys;
        let header = memory.read_bytes(keys, fields.indices as usize)?;
        let bad = ReadError::BadPointer { addr: keys };
        let nentries = u64_at(&header, fields.nentries).ok_or(bad.clone())?;
        let general = (24, 8, 16);
        let (size, index_bytes, (entry_size, key_at, value_at)) = match fields.size {
            TableSize::Slots { size } => {
                let size = u64_at(&header, size).ok_or(bad.clone())?;
                if !size.is_power_of_two() || size > MAX_TABLE {
                    return Err(bad);
                }
                let width = match size {
                    0..=0xff => 1,
                    0x100..=0xffff => 2,
                    0x1_0000..=0xffff_ffff => 4,
                    _ => 8,
                };
                (size, size * width, general)
            }
            TableSize::Log2 {
                log2_size,
                log2_index_bytes,
                kind,
            } => {
                let log2_size = byte_at(&header, log2_size).ok_or(bad.clone())?;
                let log2_index_bytes = byte_at(&header, log2_index_bytes).ok_or(bad.clone())?;
                let entry = match byte_at(&header, kind).ok_or(bad.clone())? {
                    0 => general,
                    1 | 2 => (16, 0, 8),
                    _ => return Err(bad),
                };
                let size = 1u64 << log2_size.min(63);
                if size > MAX_TABLE || !(log2_size..=log2_size + 3).contains(&log2_index_bytes) {
                    return Err(bad);
                }
                (size, 1 << log2_index_bytes, entry)
            }
        };
        if nentries > size {
            return Err(bad);
        }
        if nentries > max {
            return Err(ReadError::TooLarge {
                addr: keys,
                len: nentries as usize,
            });
        }
        Ok(Table {
            nentries,
            entries: keys + fields.indices + index_bytes,
            entry_size,
            key_at,
            value_at,
        })
    }

    /// The entries of the keys object at `keys`; values from its entries, or from the
    /// `PyDictValues` at `values` for split tables and instances.
    fn slots(
        &self,
        memory: &dyn Memory,
        keys: u64,
        values: Option<u64>,
        max: u64,
    ) -> Result<Slots, ReadError> {
        self.first_slots(memory, keys, values, max, u64::MAX)
    }

    /// Like [`ObjectLayout::slots`], reading only the first `first` entries.
    fn first_slots(
        &self,
        memory: &dyn Memory,
        keys: u64,
        values: Option<u64>,
        max: u64,
        first: u64,
    ) -> Result<Slots, ReadError> {
        let mut table = self.table(memory, keys, max)?;
        table.nentries = table.nentries.min(first);
        let entries = read_array(memory, table.entries, table.nentries, table.entry_size)?;
        let column = |at: u64| -> Vec<u64> {
            entries
                .chunks_exact(table.entry_size as usize)
                .map(|entry| u64_at(entry, at).unwrap_or(0))
                .collect()
        };
        let keys_column = column(table.key_at);
        let values_column = match values {
            None => column(table.value_at),
            Some(values) => {
                check_pointer(values, 8)?;
                let fields = self.values;
                let mut count = table.nentries;
                if let Some(capacity) = fields.capacity {
                    let header = memory.read_bytes(values, fields.start as usize)?;
                    let capacity =
                        byte_at(&header, capacity).ok_or(ReadError::BadPointer { addr: values })?;
                    count = count.min(capacity);
                }
                let array = read_array(memory, values + fields.start, count, 8)?;
                let mut column: Vec<u64> = array
                    .chunks_exact(8)
                    .map(|v| u64_at(v, 0).unwrap_or(0))
                    .collect();
                column.resize(keys_column.len(), 0);
                column
            }
        };
        Ok(Slots {
            table: keys,
            keys: keys_column,
            values: values_column,
        })
    }
}

/// A key string found before. Keys of module and instance dicts are interned, so one seen
/// at this address is most likely the same string again: compare addresses, and read its
/// text once per `read` to be sure, instead of reading every key's text.
#[derive(Debug, Default, Clone, Copy)]
struct KnownKey {
    addr: Option<u64>,
    confirmed: bool,
}

/// How far a scan of `sys.modules` for `threading` got without finding it: keys are only
/// ever appended to a keys object, so while it is the same one only new entries need a look.
#[derive(Debug, Default, Clone, Copy)]
struct ScannedUpTo {
    keys: u64,
    entries: u64,
}

/// The key and value of each entry of a dict or an instance's values, by entry index;
/// 0 where the entry is empty or deleted.
#[derive(Debug, Default)]
pub(super) struct Slots {
    /// The `PyDictKeysObject` the keys come from.
    table: u64,
    pub(super) keys: Vec<u64>,
    pub(super) values: Vec<u64>,
}

impl Slots {
    /// (key, value) of the entries in use.
    pub(super) fn live(&self) -> Vec<(u64, u64)> {
        self.keys
            .iter()
            .zip(&self.values)
            .filter(|(&k, &v)| k != 0 && v != 0)
            .map(|(&k, &v)| (k, v))
            .collect()
    }
}

/// A hash table's shape read from its `PyDictKeysObject`.
#[derive(Debug, Clone, Copy)]
struct Table {
    nentries: u64,
    entries: u64,
    entry_size: u64,
    key_at: u64,
    value_at: u64,
}

/// Python-level thread names by `threading.get_ident()`.
pub struct ThreadNames {
    objects: ObjectLayout,
    strings: StackLayout,
    modules: u64,
    threading_key: KnownKey,
    active_key: KnownKey,
    name_key: KnownKey,
    modules_scanned: ScannedUpTo,
}

fn fatal(error: &ReadError) -> bool {
    matches!(error, ReadError::Gone | ReadError::Denied)
}

fn byte_at(block: &[u8], offset: u64) -> Option<u64> {
    block
        .get(usize::try_from(offset).ok()?)
        .map(|&b| u64::from(b))
}

impl ThreadNames {
    /// None where the version's objects are not known (then OS thread names are used).
    pub fn new(version: &Version, layout: &Layout) -> Option<ThreadNames> {
        Some(ThreadNames {
            objects: object_layout(version, layout.free_threaded)?,
            strings: layout.stack?,
            modules: layout.interp_modules?,
            threading_key: KnownKey::default(),
            active_key: KnownKey::default(),
            name_key: KnownKey::default(),
            modules_scanned: ScannedUpTo::default(),
        })
    }

    /// Which table of object offsets is in use ("3.11", ...), for messages.
    pub fn family(&self) -> &'static str {
        self.objects.family
    }

    /// Names of the threads `threading` knows, keyed by ident. Errors are expected (the target
    /// moves, or `threading` was never imported: then Ok(empty map)).
    pub fn read(
        &mut self,
        memory: &dyn Memory,
        interp: u64,
    ) -> Result<HashMap<u64, String>, ReadError> {
        for key in [
            &mut self.threading_key,
            &mut self.active_key,
            &mut self.name_key,
        ] {
            key.confirmed = false;
        }
        let mut names = HashMap::new();
        check_pointer(interp, 8)?;
        let modules = memory.read_u64(interp + self.modules)?;
        if modules == 0 {
            return Ok(names);
        }
        let Some(threading) = self.modules_entry(memory, modules)? else {
            return Ok(names);
        };
        // `sys.modules["threading"] = None` blocks the import; anything else is not walked.
        if !self.is_a(memory, threading, "module")? {
            return Ok(names);
        }
        let globals = memory.read_pointer(threading + self.objects.module_dict, 8)?;
        let slots = self.objects.dict_slots(memory, globals, MAX_NAMESPACE)?;
        let mut active_key = self.active_key;
        let active = self.find_key(memory, &slots, 0, "_active", &mut active_key)?;
        self.active_key = active_key;
        let Some(active) = active else {
            return Ok(names);
        };
        // Something else put under that name (a monkey-patching library) is not walked.
        if !self.is_a(memory, active, "dict")? {
            return Ok(names);
        }
        let threads = self.objects.dict_slots(memory, active, MAX_THREADS)?.live();
        let mut read = Vec::new();
        for &(key, thread) in &threads {
            // A thread being torn down can leave a half-cleared object: skip it, not the rest.
            match self.thread_name(memory, key, thread) {
                Ok(Some((ident, name))) => read.push((key, thread, ident, name)),
                Ok(None) => {}
                Err(e) if fatal(&e) => return Err(e),
                Err(_) => {}
            }
        }
        // A thread that ended while we read may have had its name freed and the memory reused
        // (seen under thread churn: a name of NULs). A Thread still in `_active` now was alive
        // all along, and so was its name.
        let still_active: HashSet<(u64, u64)> = self
            .objects
            .dict_slots(memory, active, MAX_THREADS)?
            .live()
            .into_iter()
            .collect();
        for (key, thread, ident, name) in read {
            if still_active.contains(&(key, thread)) {
                names.insert(ident, name);
            }
        }
        Ok(names)
    }

    /// The interpreter's `sys.path`: its `str` entries in order (anything else in the list is
    /// skipped). Empty before `sys` has a `path`, or where it is not a list.
    pub fn sys_path(&self, memory: &dyn Memory, interp: u64) -> Result<Vec<String>, ReadError> {
        check_pointer(interp, 8)?;
        let modules = memory.read_u64(interp + self.modules)?;
        if modules == 0 {
            return Ok(Vec::new());
        }
        let slots = self.objects.dict_slots(memory, modules, MAX_MODULES)?;
        let found = self.find_key(memory, &slots, 0, "sys", &mut KnownKey::default())?;
        let Some(sys) = found.filter(|&sys| self.is_a(memory, sys, "module").unwrap_or(false))
        else {
            return Ok(Vec::new());
        };
        let globals = memory.read_pointer(sys + self.objects.module_dict, 8)?;
        let slots = self.objects.dict_slots(memory, globals, MAX_NAMESPACE)?;
        let found = self.find_key(memory, &slots, 0, "path", &mut KnownKey::default())?;
        let Some(list) = found.filter(|&list| self.is_a(memory, list, "list").unwrap_or(false))
        else {
            return Ok(Vec::new());
        };
        let objects = &self.objects;
        let header = memory.read_bytes(list, objects.list_items as usize + 8)?;
        let bad = ReadError::BadPointer { addr: list };
        let length = u64_at(&header, objects.list_size).ok_or(bad.clone())?;
        let items = u64_at(&header, objects.list_items).ok_or(bad.clone())?;
        // A negative length (the high bit set) is garbage.
        if length > i64::MAX as u64 {
            return Err(bad);
        }
        let count = length.min(MAX_SYS_PATH);
        if count == 0 {
            return Ok(Vec::new());
        }
        check_pointer(items, 8)?;
        let array = read_array(memory, items, count, 8)?;
        let mut entries = Vec::new();
        for item in array.chunks_exact(8).filter_map(|c| u64_at(c, 0)) {
            match read_str(memory, item, &self.strings) {
                Ok(entry) => entries.push(entry),
                Err(e) if fatal(&e) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(entries)
    }

    /// Is `object` of the built-in type named `name`?
    fn is_a(&self, memory: &dyn Memory, object: u64, name: &str) -> Result<bool, ReadError> {
        check_pointer(object, 8)?;
        Ok(type_name(memory, object, &self.strings)? == name)
    }

    /// `sys.modules["threading"]`, scanning only entries added since the last miss.
    fn modules_entry(
        &mut self,
        memory: &dyn Memory,
        modules: u64,
    ) -> Result<Option<u64>, ReadError> {
        let slots = self.objects.dict_slots(memory, modules, MAX_MODULES)?;
        let from = if self.modules_scanned.keys == slots.table {
            self.modules_scanned.entries
        } else {
            0
        };
        let mut known = self.threading_key;
        let found = self.find_key(memory, &slots, from, "threading", &mut known)?;
        self.threading_key = known;
        self.modules_scanned = match found {
            Some(_) => ScannedUpTo::default(),
            None => ScannedUpTo {
                keys: slots.table,
                entries: slots.keys.len() as u64,
            },
        };
        Ok(found)
    }

    /// The ident and `_name` of one entry of `_active`.
    fn thread_name(
        &mut self,
        memory: &dyn Memory,
        key: u64,
        thread: u64,
    ) -> Result<Option<(u64, String)>, ReadError> {
        let ident = self.read_int(memory, key)?;
        let Some(name) = self.name_attribute(memory, thread)? else {
            return Ok(None);
        };
        Ok(Some((ident, read_str(memory, name, &self.strings)?)))
    }

    /// A non-negative `int` of at most `MAX_INT_DIGITS` digits.
    fn read_int(&self, memory: &dyn Memory, addr: u64) -> Result<u64, ReadError> {
        check_pointer(addr, 8)?;
        let objects = &self.objects;
        // Every int object is at least this long: its size and one digit, rounded up by the
        // allocator (28 -> 32 bytes, free-threaded 44 -> 48).
        let mut block = memory.read_bytes(addr, objects.int_digits as usize + 8)?;
        let bad = ReadError::BadPointer { addr };
        let ndigits = match objects.int_size {
            IntSize::SignedCount(at) => {
                let size = u64_at(&block, at).ok_or(bad.clone())? as i64;
                u64::try_from(size).map_err(|_| bad.clone())?
            }
            IntSize::Tag(at) => {
                let tag = u64_at(&block, at).ok_or(bad.clone())?;
                match tag & 3 {
                    0 => tag >> 3,
                    1 => 0,
                    _ => return Err(bad),
                }
            }
        };
        if ndigits > MAX_INT_DIGITS {
            return Err(bad);
        }
        let end = objects.int_digits + 4 * ndigits;
        if end > block.len() as u64 {
            block = memory.read_bytes(addr, end as usize)?;
        }
        let mut value: u64 = 0;
        for i in 0..ndigits {
            let at = usize::try_from(objects.int_digits + 4 * i).map_err(|_| bad.clone())?;
            let bytes = block.get(at..at + 4).ok_or(bad.clone())?;
            let digit = u64::from(u32::from_le_bytes(
                bytes.try_into().map_err(|_| bad.clone())?,
            ));
            let shift = DIGIT_BITS * i as u32;
            if digit >> DIGIT_BITS != 0 || (shift > 0 && digit >> (64 - shift) != 0) {
                return Err(bad);
            }
            value |= digit << shift;
        }
        Ok(value)
    }

    /// The value of the instance attribute `_name` of `object`, None if unset.
    fn name_attribute(
        &mut self,
        memory: &dyn Memory,
        object: u64,
    ) -> Result<Option<u64>, ReadError> {
        check_pointer(object, 8)?;
        let objects = self.objects;
        let ty = memory.read_pointer(object + self.strings.ob_type, 8)?;
        let type_size = [
            objects.type_basicsize,
            objects.type_flags,
            objects.type_dictoffset,
            objects.type_cached_keys.unwrap_or(0),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 8;
        let block = memory.read_bytes(ty, type_size as usize)?;
        let field = |at: u64| u64_at(&block, at).ok_or(ReadError::BadPointer { addr: ty });
        let flags = field(objects.type_flags)?;
        let before = |distance: u64| {
            object
                .checked_sub(distance)
                .ok_or(ReadError::BadPointer { addr: object })
        };
        let cached_keys = || -> Result<u64, ReadError> {
            let at = objects
                .type_cached_keys
                .ok_or(ReadError::BadPointer { addr: ty })?;
            let keys = field(at)?;
            check_pointer(keys, 8)?;
            Ok(keys)
        };
        let dict = match objects.instance {
            InstanceDict::ValuesOrDict {
                flag,
                values_before,
                dict_before,
            } if flags & flag != 0 => {
                let values = memory.read_u64(before(values_before)?)?;
                if values != 0 {
                    return self.lookup_values(memory, cached_keys()?, values);
                }
                memory.read_u64(before(dict_before)?)?
            }
            InstanceDict::TaggedWord { flag, before: at } if flags & flag != 0 => {
                let word = memory.read_u64(before(at)?)?;
                if word & 1 == 1 {
                    let values = word
                        .checked_add(1)
                        .ok_or(ReadError::BadPointer { addr: word })?;
                    return self.lookup_values(memory, cached_keys()?, values);
                }
                word
            }
            InstanceDict::Inline {
                inline_flag,
                managed_flag,
                dict_before,
            } if flags & (inline_flag | managed_flag) != 0 => {
                if flags & inline_flag != 0 {
                    let basicsize = field(objects.type_basicsize)?;
                    if basicsize == 0 || basicsize % 8 != 0 || basicsize > 1 << 16 {
                        return Err(ReadError::BadPointer { addr: ty });
                    }
                    let values = object + basicsize;
                    if self.values_valid(memory, values)? {
                        return self.lookup_values(memory, cached_keys()?, values);
                    }
                }
                memory.read_u64(before(dict_before)?)?
            }
            _ => {
                let offset = field(objects.type_dictoffset)? as i64;
                // Negative offsets (from the end of variable-size objects) and 0 (no dict):
                // not the case of `threading.Thread`, whatever subclass it is.
                if offset <= 0 || offset > 1 << 16 {
                    return Ok(None);
                }
                memory.read_u64(object + offset as u64)?
            }
        };
        if dict == 0 {
            return Ok(None);
        }
        let slots = self.objects.dict_slots(memory, dict, MAX_NAMESPACE)?;
        self.find_name(memory, &slots)
    }

    /// 3.13+: are an object's inline values still its attributes?
    fn values_valid(&self, memory: &dyn Memory, values: u64) -> Result<bool, ReadError> {
        let Some(valid) = self.objects.values.valid else {
            return Ok(true);
        };
        let header = memory.read_bytes(values, self.objects.values.start as usize)?;
        Ok(byte_at(&header, valid).ok_or(ReadError::BadPointer { addr: values })? != 0)
    }

    /// Look `_name` up in an instance's values, whose keys are its type's cached keys.
    fn lookup_values(
        &mut self,
        memory: &dyn Memory,
        keys: u64,
        values: u64,
    ) -> Result<Option<u64>, ReadError> {
        let slots = self
            .objects
            .slots(memory, keys, Some(values), MAX_NAMESPACE)?;
        self.find_name(memory, &slots)
    }

    fn find_name(&mut self, memory: &dyn Memory, slots: &Slots) -> Result<Option<u64>, ReadError> {
        let mut known = self.name_key;
        let found = self.find_key(memory, slots, 0, NAME_ATTRIBUTE, &mut known);
        self.name_key = known;
        found
    }

    /// The value whose key is the string `name`, looking at entries from `from` on.
    fn find_key(
        &self,
        memory: &dyn Memory,
        slots: &Slots,
        from: u64,
        name: &str,
        known: &mut KnownKey,
    ) -> Result<Option<u64>, ReadError> {
        let live = || {
            slots
                .keys
                .iter()
                .zip(&slots.values)
                .skip(from as usize)
                .filter(|(&k, &v)| k != 0 && v != 0)
        };
        if let Some(addr) = known.addr {
            if let Some((_, &value)) = live().find(|(&k, _)| k == addr) {
                if known.confirmed || self.str_is(memory, addr, name)? {
                    known.confirmed = true;
                    return Ok(Some(value));
                }
                *known = KnownKey::default();
            }
        }
        for (&key, &value) in live() {
            if Some(key) != known.addr && self.str_is(memory, key, name)? {
                *known = KnownKey {
                    addr: Some(key),
                    confirmed: true,
                };
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Is the object at `addr` the string `text`? Keys that are not strings are not.
    fn str_is(&self, memory: &dyn Memory, addr: u64, text: &str) -> Result<bool, ReadError> {
        match read_str(memory, addr, &self.strings) {
            Ok(s) => Ok(s == text),
            Err(e) if fatal(&e) => Err(e),
            Err(_) => Ok(false),
        }
    }
}

/// `count` items of `size` bytes at `addr`, read in pieces no larger than `MAX_READ`.
fn read_array(memory: &dyn Memory, addr: u64, count: u64, size: u64) -> Result<Vec<u8>, ReadError> {
    let total = count
        .checked_mul(size)
        .filter(|&t| t <= MAX_TABLE * 24)
        .ok_or(ReadError::TooLarge {
            addr,
            len: usize::MAX,
        })?;
    let piece = (MAX_READ as u64 / size.max(1)) * size.max(1);
    let mut bytes = Vec::with_capacity(total as usize);
    let mut done = 0;
    while done < total {
        let len = (total - done).min(piece);
        bytes.extend(memory.read_bytes(addr + done, len as usize)?);
        done += len;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::layout::table_for;
    use crate::target::memory::MemoryImage;

    const HEAP: u64 = 0x10_0000;

    /// A bump allocator that lays objects out like the target's heap would.
    struct Heap {
        bytes: Vec<u8>,
    }

    impl Heap {
        fn new() -> Heap {
            Heap { bytes: Vec::new() }
        }

        /// Place `object` after `before` bytes of pre-header; its address.
        fn alloc_after(&mut self, before: usize, object: &[u8]) -> u64 {
            self.bytes
                .resize(self.bytes.len().next_multiple_of(16) + before, 0);
            let addr = HEAP + self.bytes.len() as u64;
            self.bytes.extend_from_slice(object);
            self.bytes
                .resize(self.bytes.len().next_multiple_of(16) + 16, 0);
            addr
        }

        fn alloc(&mut self, object: &[u8]) -> u64 {
            self.alloc_after(0, object)
        }

        fn put_u64(&mut self, addr: u64, value: u64) {
            let at = (addr - HEAP) as usize;
            self.bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }

        fn image(&self) -> MemoryImage {
            let mut image = MemoryImage::new();
            image.add(HEAP, self.bytes.clone());
            image
        }
    }

    fn put(block: &mut Vec<u8>, at: u64, bytes: &[u8]) {
        let at = at as usize;
        if block.len() < at + bytes.len() {
            block.resize(at + bytes.len(), 0);
        }
        block[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// How a synthetic Thread object keeps its attributes.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Storage {
        /// The family's preferred form: values where the version has them, else a split dict.
        Values,
        /// A combined dict of its own (materialised, or values invalidated).
        Dict,
    }

    /// Builds the objects of one CPython layout family.
    struct Target {
        objects: ObjectLayout,
        strings: StackLayout,
        heap: Heap,
        dict_type: u64,
        module_type: u64,
        thread_type: u64,
        shared_keys: u64,
        shared_names: Vec<&'static str>,
        /// Every Thread object made, in order.
        threads: Vec<u64>,
    }

    impl Target {
        fn new(objects: ObjectLayout, strings: StackLayout) -> Target {
            let mut heap = Heap::new();
            let mut builtin_type = |name: &[u8]| {
                let name = heap.alloc(name);
                let mut object = vec![0u8; 416];
                put(&mut object, strings.tp_name, &name.to_le_bytes());
                heap.alloc(&object)
            };
            let dict_type = builtin_type(b"dict\0");
            let module_type = builtin_type(b"module\0");
            let mut target = Target {
                objects,
                strings,
                heap,
                dict_type,
                module_type,
                thread_type: 0,
                shared_keys: 0,
                shared_names: vec!["_target", "_name", "_args", "_ident"],
                threads: Vec::new(),
            };
            let names = target.shared_names.clone();
            let keys: Vec<(u64, u64)> = names.iter().map(|n| (target.str(n), 0)).collect();
            target.shared_keys = target.keys(&keys, 2);
            target.thread_type = target.thread_type();
            target
        }

        /// `PyObject`: its fields end with `ob_type`.
        fn header_size(&self) -> u64 {
            self.strings.ob_type + 8
        }

        fn str(&mut self, text: &str) -> u64 {
            let mut object = crate::python::objects::str_object(&self.strings, text);
            object.push(0);
            self.heap.alloc(&object)
        }

        fn int(&mut self, value: u64) -> u64 {
            let mut digits = Vec::new();
            let mut rest = value;
            while rest != 0 {
                digits.push((rest & ((1 << DIGIT_BITS) - 1)) as u32);
                rest >>= DIGIT_BITS;
            }
            let n = digits.len() as u64;
            let mut object = vec![0u8; self.objects.int_digits as usize + 12];
            match self.objects.int_size {
                IntSize::SignedCount(at) => put(&mut object, at, &n.to_le_bytes()),
                IntSize::Tag(at) => {
                    let tag = if n == 0 { 1 } else { n << 3 };
                    put(&mut object, at, &tag.to_le_bytes())
                }
            }
            for (i, d) in digits.iter().enumerate() {
                put(
                    &mut object,
                    self.objects.int_digits + 4 * i as u64,
                    &d.to_le_bytes(),
                );
            }
            self.heap.alloc(&object)
        }

        /// A keys object of `kind` (0 general, 1 unicode, 2 split) holding `entries`.
        fn keys(&mut self, entries: &[(u64, u64)], kind: u8) -> u64 {
            let fields = self.objects.keys;
            let mut log2 = 3;
            while (1u64 << log2) * 2 / 3 < entries.len() as u64 + 2 {
                log2 += 1;
            }
            let size = 1u64 << log2;
            let mut object = vec![0u8; fields.indices as usize];
            put(&mut object, 0, &1u64.to_le_bytes());
            let general = match fields.size {
                TableSize::Slots { size: at } => {
                    put(&mut object, at, &size.to_le_bytes());
                    true
                }
                TableSize::Log2 {
                    log2_size,
                    kind: kind_at,
                    ..
                } => {
                    put(&mut object, log2_size, &[log2]);
                    put(&mut object, kind_at, &[kind]);
                    kind == 0
                }
            };
            put(
                &mut object,
                fields.nentries,
                &(entries.len() as u64).to_le_bytes(),
            );
            let log2_width = match log2 {
                0..=7 => 0,
                8..=15 => 1,
                _ => 2,
            };
            if let TableSize::Log2 {
                log2_index_bytes, ..
            } = fields.size
            {
                put(&mut object, log2_index_bytes, &[log2 + log2_width]);
            }
            object.extend(std::iter::repeat_n(0xffu8, (size as usize) << log2_width));
            for &(key, value) in entries {
                if general {
                    object.extend_from_slice(&0x5eed_u64.to_le_bytes());
                }
                object.extend_from_slice(&key.to_le_bytes());
                object.extend_from_slice(&value.to_le_bytes());
            }
            self.heap.alloc(&object)
        }

        fn dict_object(&mut self, used: u64, keys: u64, values: u64) -> u64 {
            let mut object = vec![0u8; self.objects.dict_values as usize + 8];
            put(&mut object, 0, &1u64.to_le_bytes());
            put(
                &mut object,
                self.strings.ob_type,
                &self.dict_type.to_le_bytes(),
            );
            put(&mut object, self.objects.dict_used, &used.to_le_bytes());
            put(&mut object, self.objects.dict_keys, &keys.to_le_bytes());
            put(&mut object, self.objects.dict_values, &values.to_le_bytes());
            self.heap.alloc(&object)
        }

        fn dict(&mut self, entries: &[(u64, u64)], kind: u8) -> u64 {
            let keys = self.keys(entries, kind);
            self.dict_object(entries.len() as u64, keys, 0)
        }

        /// A `PyDictValues` for the shared keys; its address.
        fn values(&mut self, values: &[u64], inline_in: Option<u64>) -> Vec<u8> {
            let fields = self.objects.values;
            let mut block = vec![0u8; fields.start as usize];
            if let Some(capacity) = fields.capacity {
                put(&mut block, capacity, &[values.len() as u8]);
            }
            if let Some(valid) = fields.valid {
                put(
                    &mut block,
                    valid,
                    &[u8::from(inline_in.is_none_or(|v| v != 0))],
                );
            }
            for v in values {
                block.extend_from_slice(&v.to_le_bytes());
            }
            block
        }

        fn thread_type(&mut self) -> u64 {
            let o = self.objects;
            let mut object =
                vec![0u8; o.type_cached_keys.unwrap_or(o.type_dictoffset) as usize + 8];
            let (flags, basicsize, dictoffset) = match o.instance {
                InstanceDict::DictOffset => (0, 24, 16),
                InstanceDict::ValuesOrDict { flag, .. } | InstanceDict::TaggedWord { flag, .. } => {
                    (flag, self.header_size(), -1i64 as u64)
                }
                InstanceDict::Inline {
                    inline_flag,
                    managed_flag,
                    ..
                } => (inline_flag | managed_flag, self.header_size(), -1i64 as u64),
            };
            put(&mut object, o.type_flags, &flags.to_le_bytes());
            put(&mut object, o.type_basicsize, &basicsize.to_le_bytes());
            put(&mut object, o.type_dictoffset, &dictoffset.to_le_bytes());
            if let Some(at) = o.type_cached_keys {
                put(&mut object, at, &self.shared_keys.to_le_bytes());
            }
            self.heap.alloc(&object)
        }

        /// A Thread whose `_name` is `name`, its attributes kept as `storage` says.
        fn thread(&mut self, name: &str, storage: Storage) -> u64 {
            let object = self.thread_object(name, storage);
            self.threads.push(object);
            object
        }

        fn thread_object(&mut self, name: &str, storage: Storage) -> u64 {
            let name = self.str(name);
            let attributes = [0x1_0000, name, 0x1_0000, 0x1_0000];
            let mut header = vec![0u8; self.header_size() as usize];
            put(&mut header, 0, &1u64.to_le_bytes());
            put(
                &mut header,
                self.strings.ob_type,
                &self.thread_type.to_le_bytes(),
            );
            let dict = match storage {
                Storage::Dict => {
                    let names = self.shared_names.clone();
                    let entries: Vec<(u64, u64)> = names
                        .iter()
                        .zip(attributes)
                        .map(|(n, v)| (self.str(n), v))
                        .collect();
                    self.dict(&entries, 1)
                }
                Storage::Values => 0,
            };
            match self.objects.instance {
                InstanceDict::DictOffset => {
                    let dict = if dict != 0 {
                        dict
                    } else {
                        let values = self.values(&attributes, None);
                        let values = self.heap.alloc(&values);
                        self.dict_object(4, self.shared_keys, values)
                    };
                    let mut object = header;
                    put(&mut object, 16, &dict.to_le_bytes());
                    self.heap.alloc(&object)
                }
                InstanceDict::ValuesOrDict {
                    values_before,
                    dict_before,
                    ..
                } => {
                    let values = if dict == 0 {
                        let values = self.values(&attributes, None);
                        self.heap.alloc(&values)
                    } else {
                        0
                    };
                    let object = self.heap.alloc_after(32, &header);
                    self.heap.put_u64(object - values_before, values);
                    self.heap.put_u64(object - dict_before, dict);
                    object
                }
                InstanceDict::TaggedWord { before, .. } => {
                    let word = if dict == 0 {
                        let values = self.values(&attributes, None);
                        self.heap.alloc(&values) - 1
                    } else {
                        dict
                    };
                    let object = self.heap.alloc_after(32, &header);
                    self.heap.put_u64(object - before, word);
                    object
                }
                InstanceDict::Inline { dict_before, .. } => {
                    let valid = u64::from(dict == 0);
                    let mut object = header;
                    object.extend(self.values(&attributes, Some(valid)));
                    let object = self.heap.alloc_after(32, &object);
                    self.heap.put_u64(object - dict_before, dict);
                    object
                }
            }
        }

        /// An interpreter whose `sys.modules` holds `modules`; the interpreter's address.
        fn interpreter(&mut self, modules_offset: u64, modules: &[(u64, u64)]) -> u64 {
            let kind = u8::from(self.objects.keys.size != LAYOUT_3_6.keys.size);
            let modules = self.dict(modules, kind);
            let mut interp = vec![0u8; modules_offset as usize + 8];
            put(&mut interp, modules_offset, &modules.to_le_bytes());
            self.heap.alloc(&interp)
        }

        fn module(&mut self, globals: u64) -> u64 {
            let mut object = vec![0u8; self.objects.module_dict as usize + 40];
            let module_type = self.module_type.to_le_bytes();
            put(&mut object, self.strings.ob_type, &module_type);
            put(
                &mut object,
                self.objects.module_dict,
                &globals.to_le_bytes(),
            );
            self.heap.alloc(&object)
        }
    }

    /// Every layout family, with the version and string layout to build a reader for it.
    fn families() -> Vec<(Version, ObjectLayout, Layout)> {
        let layout = |minor| table_for(&Version::new(3, minor, 0)).unwrap();
        vec![
            (Version::new(3, 6, 15), LAYOUT_3_6, layout(6)),
            (Version::new(3, 10, 13), LAYOUT_3_6, layout(10)),
            (Version::new(3, 11, 7), LAYOUT_3_11, layout(11)),
            (Version::new(3, 12, 1), LAYOUT_3_12, layout(12)),
            // 3.13+ strings are laid out as on 3.12; only the objects table matters here.
            (Version::new(3, 13, 0), LAYOUT_3_13, layout(12)),
            (Version::new(3, 15, 2), LAYOUT_3_15, layout(12)),
            (
                Version::new(3, 13, 5),
                free_threaded_layout(LAYOUT_3_13).unwrap(),
                free_threaded(layout(12)),
            ),
            (
                Version::new(3, 15, 2),
                free_threaded_layout(LAYOUT_3_15).unwrap(),
                free_threaded(layout(12)),
            ),
            // 3.14t's strings keep `kind` after a whole `interned` byte.
            (
                Version::new(3, 14, 4),
                free_threaded_layout(LAYOUT_3_13).unwrap(),
                free_threaded_3_14(layout(12)),
            ),
        ]
    }

    /// A free-threaded 3.14 build's layout: [`free_threaded`], and `str` state bits as
    /// the 3.14.4 build has them.
    fn free_threaded_3_14(layout: Layout) -> Layout {
        let mut layout = free_threaded(layout);
        if let Some(stack) = layout.stack.as_mut() {
            stack.unicode.kind_bit = 8;
        }
        layout
    }

    /// A free-threaded build's layout: every field of an object 16 bytes further in.
    fn free_threaded(layout: Layout) -> Layout {
        let mut stack = layout.stack.unwrap();
        let shift = |at: &mut u64| *at += FREE_THREADED_HEADER_EXTRA;
        let u = &mut stack.unicode;
        for at in [
            &mut u.length,
            &mut u.state,
            &mut u.ascii_data,
            &mut u.compact_data,
        ] {
            shift(at);
        }
        shift(&mut stack.ob_type);
        shift(&mut stack.tp_name);
        Layout {
            stack: Some(stack),
            free_threaded: true,
            ..layout
        }
    }

    #[test]
    fn free_threaded_objects_match_a_disable_gil_build() {
        // gdb `ptype /o` on CPython 3.13.5 built with --disable-gil.
        let o = object_layout(&Version::new(3, 13, 5), true).unwrap();
        assert_eq!((o.dict_used, o.dict_keys, o.dict_values), (32, 48, 56));
        assert_eq!(o.module_dict, 32);
        assert_eq!(
            (o.type_basicsize, o.type_flags, o.type_dictoffset),
            (48, 184, 304)
        );
        assert_eq!(o.type_cached_keys, Some(896));
        assert_eq!((o.int_size, o.int_digits), (IntSize::Tag(32), 40));
        assert!(matches!(
            o.instance,
            InstanceDict::Inline { dict_before: 8, .. }
        ));
        assert_eq!(o.keys, LAYOUT_3_13.keys);
        assert_eq!(o.values, LAYOUT_3_13.values);
        // The same `ptype /o` on the 3.14.4 build gives the same offsets.
        assert_eq!(object_layout(&Version::new(3, 14, 4), true), Some(o));
        // Before 3.13 there is no free-threaded build to read.
        assert!(object_layout(&Version::new(3, 12, 1), true).is_none());
    }

    const MAIN: u64 = 0x7f3a_1234_5640;
    const WORKER: u64 = 0x7f3a_0bad_f6c0;
    /// An ident of three 30-bit digits.
    const HIGH: u64 = 0x7fff_ffff_ffff_f000;

    /// A target with `threading` imported and three threads, one per attribute storage and
    /// one with a three-digit ident; its interpreter's address and the expected names.
    fn threaded_target(
        objects: ObjectLayout,
        layout: &Layout,
        other_modules: usize,
    ) -> (Target, u64, HashMap<u64, String>) {
        let mut t = Target::new(objects, layout.stack.unwrap());
        let main = t.thread("MainThread", Storage::Values);
        let worker = t.thread("数据-2", Storage::Dict);
        let high = t.thread("🐍 snake-3", Storage::Values);
        let (k1, k2, k3) = (t.int(MAIN), t.int(WORKER), t.int(HIGH));
        let active = t.dict(&[(k1, main), (k2, worker), (k3, high)], 0);
        let limbo = t.dict(&[], 0);
        let (limbo_key, active_key) = (t.str("_limbo"), t.str("_active"));
        let globals = t.dict(&[(limbo_key, limbo), (active_key, active)], 1);
        let threading = t.module(globals);
        let sys_globals = t.dict(&[], 1);
        let sys = t.module(sys_globals);
        let (sys_key, threading_key) = (t.str("sys"), t.str("threading"));
        let odd_key = t.int(7);
        let mut modules = vec![(sys_key, sys), (odd_key, sys)];
        for i in 0..other_modules {
            modules.push((t.str(&format!("module_{i}")), sys));
        }
        modules.push((threading_key, threading));
        let interp = t.interpreter(layout.interp_modules.unwrap(), &modules);
        let expected = [
            (MAIN, "MainThread"),
            (WORKER, "数据-2"),
            (HIGH, "🐍 snake-3"),
        ]
        .into_iter()
        .map(|(i, n)| (i, n.to_string()))
        .collect();
        (t, interp, expected)
    }

    #[test]
    fn names_of_every_storage_read_back_in_every_family() {
        for (version, objects, layout) in families() {
            let (t, interp, expected) = threaded_target(objects, &layout, 0);
            let image = t.heap.image();
            let mut names = ThreadNames::new(&version, &layout).unwrap();
            assert_eq!(names.family(), objects.family);
            assert_eq!(names.read(&image, interp).unwrap(), expected, "{version}");
            // Again, now through the key strings it remembered.
            assert_eq!(names.read(&image, interp).unwrap(), expected, "{version}");
        }
    }

    #[test]
    fn sys_path_reads_back_in_every_family() {
        for (version, objects, layout) in families() {
            let mut t = Target::new(objects, layout.stack.unwrap());
            let type_name = t.heap.alloc(b"list\0");
            let mut list_type = vec![0u8; 416];
            put(&mut list_type, t.strings.tp_name, &type_name.to_le_bytes());
            let list_type = t.heap.alloc(&list_type);
            let wanted = ["/srv/app", "/usr/lib/python3.12", "/opt/数据"];
            let strs: Vec<u64> = wanted.iter().map(|e| t.str(e)).collect();
            // Something that is not a string in the list is skipped.
            let odd = t.int(5);
            let items: Vec<u8> = [strs[0], odd, strs[1], strs[2]]
                .iter()
                .flat_map(|p| p.to_le_bytes())
                .collect();
            let items = t.heap.alloc(&items);
            let mut list = vec![0u8; objects.list_items as usize + 8];
            put(&mut list, 0, &1u64.to_le_bytes());
            put(&mut list, t.strings.ob_type, &list_type.to_le_bytes());
            put(&mut list, objects.list_size, &4u64.to_le_bytes());
            put(&mut list, objects.list_items, &items.to_le_bytes());
            let list = t.heap.alloc(&list);
            let path_key = t.str("path");
            let globals = t.dict(&[(path_key, list)], 1);
            let sys = t.module(globals);
            let sys_key = t.str("sys");
            let interp = t.interpreter(layout.interp_modules.unwrap(), &[(sys_key, sys)]);
            let names = ThreadNames::new(&version, &layout).unwrap();
            let read = names.sys_path(&t.heap.image(), interp).unwrap();
            assert_eq!(read, wanted, "{version}");
            // No `sys` module yet: nothing, and no error.
            let other = t.str("other");
            let empty = t.interpreter(layout.interp_modules.unwrap(), &[(other, sys)]);
            let read = names.sys_path(&t.heap.image(), empty).unwrap();
            assert!(read.is_empty(), "{version}");
        }
    }

    #[test]
    fn large_tables_with_wider_indices_are_walked() {
        for (version, objects, layout) in families() {
            for modules in [200, 30_000] {
                let (t, interp, expected) = threaded_target(objects, &layout, modules);
                let mut names = ThreadNames::new(&version, &layout).unwrap();
                let found = names.read(&t.heap.image(), interp).unwrap();
                assert_eq!(found, expected, "{version}, {modules} modules");
            }
        }
    }

    /// Memory that shows `before` until a read touches `trigger`, then `after`: a target
    /// that moves while it is being read.
    struct Moving {
        before: MemoryImage,
        after: MemoryImage,
        trigger: u64,
        moved: std::cell::Cell<bool>,
    }

    impl Memory for Moving {
        fn read_exact(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            if (addr..addr + buf.len() as u64).contains(&self.trigger) {
                self.moved.set(true);
            }
            match self.moved.get() {
                true => self.after.read_exact(addr, buf),
                false => self.before.read_exact(addr, buf),
            }
        }
    }

    #[test]
    fn a_thread_that_ends_while_its_name_is_read_is_left_out() {
        for (version, objects, layout) in families() {
            let (t, interp, mut expected) = threaded_target(objects, &layout, 0);
            let find = |bytes: &[u8], needle: &[u8]| {
                bytes
                    .windows(needle.len())
                    .position(|w| w == needle)
                    .unwrap()
            };
            let text: Vec<u8> = "数据-2".encode_utf16().flat_map(u16::to_le_bytes).collect();
            let at = find(&t.heap.bytes, &text);
            // The thread leaves `_active`, then its name is freed and the memory reused.
            let mut after = t.heap.bytes.clone();
            after[at..at + text.len()].fill(0);
            let worker = t.threads[1].to_le_bytes();
            let value = find(&after, &worker);
            after[value - 8..value + 8].fill(0);
            let mut image = MemoryImage::new();
            image.add(HEAP, after);
            let memory = Moving {
                before: t.heap.image(),
                after: image,
                trigger: HEAP + at as u64,
                moved: std::cell::Cell::new(false),
            };
            let mut names = ThreadNames::new(&version, &layout).unwrap();
            let found = names.read(&memory, interp).unwrap();
            expected.remove(&WORKER);
            assert_eq!(found, expected, "{version}");
        }
    }

    #[test]
    fn a_remembered_key_is_checked_before_it_is_trusted() {
        for (version, objects, layout) in families() {
            let (mut t, interp, expected) = threaded_target(objects, &layout, 0);
            let mut names = ThreadNames::new(&version, &layout).unwrap();
            assert_eq!(names.read(&t.heap.image(), interp).unwrap(), expected);
            // The same string object now says something else: `threading` is gone.
            let at = t
                .heap
                .bytes
                .windows(9)
                .position(|w| w == b"threading")
                .unwrap();
            t.heap.bytes[at] = b'T';
            assert!(names.read(&t.heap.image(), interp).unwrap().is_empty());
        }
    }

    #[test]
    fn without_threading_there_are_no_names() {
        for (version, objects, layout) in families() {
            let mut t = Target::new(objects, layout.stack.unwrap());
            let sys_globals = t.dict(&[], 1);
            let sys = t.module(sys_globals);
            let sys_key = t.str("sys");
            let interp = t.interpreter(layout.interp_modules.unwrap(), &[(sys_key, sys)]);
            let image = t.heap.image();
            let mut names = ThreadNames::new(&version, &layout).unwrap();
            assert!(names.read(&image, interp).unwrap().is_empty(), "{version}");
            let mut unstarted = vec![0u8; layout.interp_modules.unwrap() as usize + 8];
            unstarted[0] = 1;
            let mut image = t.heap.image();
            image.add(0x20_0000, unstarted);
            assert!(
                names.read(&image, 0x20_0000).unwrap().is_empty(),
                "{version}"
            );
        }
    }

    #[test]
    fn threading_imported_after_a_miss_is_found() {
        let (version, objects, layout) = families().swap_remove(3);
        let (mut t, interp, expected) = threaded_target(objects, &layout, 0);
        let modules_offset = layout.interp_modules.unwrap();
        let modules = u64_at(&t.heap.bytes, interp - HEAP + modules_offset).unwrap();
        let keys = u64_at(&t.heap.bytes, modules - HEAP + objects.dict_keys).unwrap();
        let nentries_at = keys - HEAP + objects.keys.nentries;
        let nentries = u64_at(&t.heap.bytes, nentries_at).unwrap();
        // Before the import: the last entry (threading) is not there yet.
        t.heap.put_u64(keys + objects.keys.nentries, nentries - 1);
        t.heap.put_u64(modules + objects.dict_used, nentries - 1);
        let mut names = ThreadNames::new(&version, &layout).unwrap();
        assert!(names.read(&t.heap.image(), interp).unwrap().is_empty());
        t.heap.put_u64(keys + objects.keys.nentries, nentries);
        t.heap.put_u64(modules + objects.dict_used, nentries);
        assert_eq!(names.read(&t.heap.image(), interp).unwrap(), expected);
    }

    #[test]
    fn idents_are_read_from_every_int_form() {
        for (version, objects, layout) in families() {
            let mut t = Target::new(objects, layout.stack.unwrap());
            let values = [0, 1, (1 << 30) - 1, 1 << 30, MAIN, HIGH, u64::MAX >> 4];
            let addrs: Vec<u64> = values.iter().map(|&v| t.int(v)).collect();
            let negative = t.int(5);
            let image_before = t.heap.image();
            let names = ThreadNames::new(&version, &layout).unwrap();
            for (&v, &a) in values.iter().zip(&addrs) {
                assert_eq!(names.read_int(&image_before, a), Ok(v), "{version} {v:#x}");
            }
            let sign = match objects.int_size {
                IntSize::SignedCount(at) => (at, (-1i64) as u64),
                IntSize::Tag(at) => (at, (1 << 3) | 2),
            };
            t.heap.put_u64(negative + sign.0, sign.1);
            assert!(
                names.read_int(&t.heap.image(), negative).is_err(),
                "{version}"
            );
        }
    }

    #[test]
    fn versions_without_a_table_have_no_reader() {
        let layout = table_for(&Version::new(3, 12, 0)).unwrap();
        for (major, minor) in [(2, 7), (3, 5), (3, 16)] {
            assert!(ThreadNames::new(&Version::new(major, minor, 0), &layout).is_none());
        }
        let no_stack = Layout {
            stack: None,
            ..layout.clone()
        };
        assert!(ThreadNames::new(&Version::new(3, 12, 0), &no_stack).is_none());
    }

    #[test]
    fn corrupted_objects_give_errors_or_fewer_names_never_a_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for (version, objects, layout) in families() {
            let (t, interp, expected) = threaded_target(objects, &layout, 0);
            for _ in 0..300 {
                let mut bytes = t.heap.bytes.clone();
                for _ in 0..rng.usize(1..8) {
                    let at = rng.usize(..bytes.len());
                    bytes[at] = match rng.u8(..4) {
                        0 => 0,
                        1 => 0xff,
                        _ => rng.u8(..),
                    };
                }
                let mut image = MemoryImage::new();
                image.add(HEAP, bytes);
                let mut names = ThreadNames::new(&version, &layout).unwrap();
                if let Ok(found) = names.read(&image, interp) {
                    assert!(found.len() <= expected.len() + 3, "{version}: {found:?}");
                }
            }
        }
    }
}
