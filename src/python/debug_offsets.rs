//! `_Py_DebugOffsets` (3.13+): the offsets CPython publishes at the start of `_PyRuntime` for
//! out-of-process tools. Field orders per version are data here; values come from the target.

use super::layout::{
    self, CodeFields, Current, EvalCalls, Flag, FrameFields, GilFields, GilPlacement, Layout,
    LineTable, LocalsLayout, ObjectFields, StackLayout, TextKind, ThreadLocalBytecode,
    UnicodeFields, VariableNames,
};
use super::version::Version;
use crate::target::memory::{u64_at, Memory};

const COOKIE: &[u8; 8] = b"xdebugpy";
/// cookie, version, free_threaded: then the sections, each a run of uint64_t.
const HEADER_BYTES: u64 = 24;

/// The field order of `_Py_DebugOffsets` for one version: its sections in order, each a
/// name and its fields (every field a uint64_t). Sections after the last one gilscope reads
/// are left out.
struct Schema {
    sections: &'static [(&'static str, &'static [&'static str])],
}

const RUNTIME_STATE: &[&str] = &["size", "finalizing", "interpreters_head"];

/// 3.13 (checked against the DWARF of 3.13.0: docs/COMPATIBILITY.md).
const INTERPRETER_STATE_3_13: &[&str] = &[
    "size",
    "id",
    "next",
    "threads_head",
    "gc",
    "imports_modules",
    "sysdict",
    "builtins",
    "ceval_gil",
    "gil_runtime_state",
    "gil_runtime_state_enabled",
    "gil_runtime_state_locked",
    "gil_runtime_state_holder",
];
const THREAD_STATE_3_13: &[&str] = &[
    "size",
    "prev",
    "next",
    "interp",
    "current_frame",
    "thread_id",
    "native_thread_id",
    "datastack_chunk",
    "status",
];
const INTERPRETER_FRAME_3_13: &[&str] = &[
    "size",
    "previous",
    "executable",
    "instr_ptr",
    "localsplus",
    "owner",
];
const CODE_OBJECT_3_13: &[&str] = &[
    "size",
    "filename",
    "name",
    "qualname",
    "linetable",
    "firstlineno",
    "argcount",
    "localsplusnames",
    "localspluskinds",
    "co_code_adaptive",
];
const PYOBJECT: &[&str] = &["size", "ob_type"];
const TYPE_OBJECT_3_13: &[&str] = &["size", "tp_name", "tp_repr", "tp_flags"];
const TUPLE_OBJECT: &[&str] = &["size", "ob_item", "ob_size"];
const LIST_OBJECT: &[&str] = &["size", "ob_item", "ob_size"];
const SET_OBJECT: &[&str] = &["size", "used", "table", "mask"];
const DICT_OBJECT: &[&str] = &["size", "ma_keys", "ma_values"];
const FLOAT_OBJECT: &[&str] = &["size", "ob_fval"];
const LONG_OBJECT: &[&str] = &["size", "lv_tag", "ob_digit"];
const BYTES_OBJECT: &[&str] = &["size", "ob_size", "ob_sval"];
const UNICODE_OBJECT_3_13: &[&str] = &["size", "state", "length", "asciiobject_size"];

const SCHEMA_3_13: Schema = Schema {
    sections: &[
        ("runtime_state", RUNTIME_STATE),
        ("interpreter_state", INTERPRETER_STATE_3_13),
        ("thread_state", THREAD_STATE_3_13),
        ("interpreter_frame", INTERPRETER_FRAME_3_13),
        ("code_object", CODE_OBJECT_3_13),
        ("pyobject", PYOBJECT),
        ("type_object", TYPE_OBJECT_3_13),
        ("tuple_object", TUPLE_OBJECT),
        ("list_object", LIST_OBJECT),
        ("dict_object", DICT_OBJECT),
        ("float_object", FLOAT_OBJECT),
        ("long_object", LONG_OBJECT),
        ("bytes_object", BYTES_OBJECT),
        ("unicode_object", UNICODE_OBJECT_3_13),
    ],
};

/// 3.14: the interpreter section gains threads_main and two generation counters.
const INTERPRETER_STATE_3_14: &[&str] = &[
    "size",
    "id",
    "next",
    "threads_head",
    "threads_main",
    "gc",
    "imports_modules",
    "sysdict",
    "builtins",
    "ceval_gil",
    "gil_runtime_state",
    "gil_runtime_state_enabled",
    "gil_runtime_state_locked",
    "gil_runtime_state_holder",
    "code_object_generation",
    "tlbc_generation",
];
const INTERPRETER_FRAME_3_14: &[&str] = &[
    "size",
    "previous",
    "executable",
    "instr_ptr",
    "localsplus",
    "owner",
    "stackpointer",
    "tlbc_index",
];
const CODE_OBJECT_3_14: &[&str] = &[
    "size",
    "filename",
    "name",
    "qualname",
    "linetable",
    "firstlineno",
    "argcount",
    "localsplusnames",
    "localspluskinds",
    "co_code_adaptive",
    "co_tlbc",
];

const SCHEMA_3_14: Schema = Schema {
    sections: &[
        ("runtime_state", RUNTIME_STATE),
        ("interpreter_state", INTERPRETER_STATE_3_14),
        ("thread_state", THREAD_STATE_3_13),
        ("interpreter_frame", INTERPRETER_FRAME_3_14),
        ("code_object", CODE_OBJECT_3_14),
        ("pyobject", PYOBJECT),
        ("type_object", TYPE_OBJECT_3_13),
        ("tuple_object", TUPLE_OBJECT),
        ("list_object", LIST_OBJECT),
        ("set_object", SET_OBJECT),
        ("dict_object", DICT_OBJECT),
        ("float_object", FLOAT_OBJECT),
        ("long_object", LONG_OBJECT),
        ("bytes_object", BYTES_OBJECT),
        ("unicode_object", UNICODE_OBJECT_3_13),
    ],
};

/// 3.15 from beta 4: the thread section gains frame bookkeeping and the GIL flags.
const THREAD_STATE_3_15: &[&str] = &[
    "size",
    "prev",
    "next",
    "interp",
    "current_frame",
    "base_frame",
    "last_profiled_frame",
    "last_profiled_frame_seq",
    "thread_id",
    "native_thread_id",
    "datastack_chunk",
    "status",
    "holds_gil",
    "gil_requested",
    "current_exception",
    "exc_state",
];
/// 3.15 alphas and betas 1-3, before `last_profiled_frame_seq` was added.
const THREAD_STATE_3_15_EARLY: &[&str] = &[
    "size",
    "prev",
    "next",
    "interp",
    "current_frame",
    "base_frame",
    "last_profiled_frame",
    "thread_id",
    "native_thread_id",
    "datastack_chunk",
    "status",
    "holds_gil",
    "gil_requested",
    "current_exception",
    "exc_state",
];
const TYPE_OBJECT_3_15: &[&str] = &[
    "size",
    "tp_name",
    "tp_repr",
    "tp_flags",
    "tp_basicsize",
    "tp_dictoffset",
];
const UNICODE_OBJECT_3_15: &[&str] = &[
    "size",
    "state",
    "length",
    "asciiobject_size",
    "compactunicodeobject_size",
];

macro_rules! sections_3_15 {
    ($thread_state:expr) => {
        &[
            ("runtime_state", RUNTIME_STATE),
            ("interpreter_state", INTERPRETER_STATE_3_14),
            ("thread_state", $thread_state),
            ("err_stackitem", &["exc_value"]),
            ("interpreter_frame", INTERPRETER_FRAME_3_14),
            ("code_object", CODE_OBJECT_3_14),
            ("pyobject", PYOBJECT),
            ("type_object", TYPE_OBJECT_3_15),
            ("heap_type_object", &["size", "ht_cached_keys"]),
            ("tuple_object", TUPLE_OBJECT),
            ("list_object", LIST_OBJECT),
            ("set_object", SET_OBJECT),
            ("dict_object", DICT_OBJECT),
            ("float_object", FLOAT_OBJECT),
            ("long_object", LONG_OBJECT),
            ("bytes_object", BYTES_OBJECT),
            ("unicode_object", UNICODE_OBJECT_3_15),
        ]
    };
}
const SECTIONS_3_15: &[(&str, &[&str])] = sections_3_15!(THREAD_STATE_3_15);
const SECTIONS_3_15_EARLY: &[(&str, &[&str])] = sections_3_15!(THREAD_STATE_3_15_EARLY);
const SCHEMA_3_15: Schema = Schema {
    sections: SECTIONS_3_15,
};
const SCHEMA_3_15_EARLY: Schema = Schema {
    sections: SECTIONS_3_15_EARLY,
};

/// The struct's field order for the version the runtime reports. Versions newer than the
/// newest known one get the newest schema; the offsets are then checked against the live
/// process before anything trusts them.
fn schema_for(version: &Version) -> &'static Schema {
    match (version.minor, version.level, version.serial) {
        (..=13, _, _) => &SCHEMA_3_13,
        (14, _, _) => &SCHEMA_3_14,
        (15, 0xA, _) | (15, 0xB, 1..=3) => &SCHEMA_3_15_EARLY,
        _ => &SCHEMA_3_15,
    }
}

/// Parsed sections: name -> value, for the fields the schema lists.
struct Sections<'a> {
    block: &'a [u8],
    schema: &'static Schema,
}

impl Sections<'_> {
    fn field(&self, section: &str, name: &str) -> Option<u64> {
        let mut index = 0;
        for (name_of_section, fields) in self.schema.sections {
            if *name_of_section == section {
                let at = fields.iter().position(|f| *f == name)?;
                return u64_at(self.block, HEADER_BYTES + 8 * (index + at) as u64);
            }
            index += fields.len();
        }
        None
    }

    fn runtime(&self, name: &str) -> Option<u64> {
        self.field("runtime_state", name)
    }
    fn interp(&self, name: &str) -> Option<u64> {
        self.field("interpreter_state", name)
    }
    fn tstate(&self, name: &str) -> Option<u64> {
        self.field("thread_state", name)
    }
}

/// Read `_Py_DebugOffsets` at `runtime`. None if there is no cookie (before 3.13); an error
/// message if there is one but the offsets make no sense.
pub fn read(
    memory: &dyn Memory,
    runtime: u64,
    binary_version: &Version,
) -> Option<Result<Layout, String>> {
    let block = memory.read_bytes(runtime, 1024).ok()?;
    if block.get(..8)? != COOKIE {
        return None;
    }
    let version = u64_at(&block, 8)
        .and_then(Version::from_hex)
        .unwrap_or(*binary_version);
    let free_threaded = u64_at(&block, 16).unwrap_or(0) != 0;
    Some(build(&block, &version, free_threaded))
}

fn build(block: &[u8], version: &Version, free_threaded: bool) -> Result<Layout, String> {
    let sections = Sections {
        block,
        schema: schema_for(version),
    };
    if free_threaded && layout::attach_state_offset(version, 0).is_none() {
        return Err(format!(
            "free-threaded builds of {version} are not supported yet (only 3.13t and 3.14t)"
        ));
    }
    let need = |value: Option<u64>, what: &str| {
        value.ok_or_else(|| format!("_Py_DebugOffsets has no {what}"))
    };
    let interp_size = need(sections.interp("size"), "interpreter size")?;
    let tstate_size = need(sections.tstate("size"), "thread state size")?;
    let plausible = |offset: u64, size: u64| offset < size && size < (1 << 20);
    let interp_field = |name: &str| -> Result<u64, String> {
        let v = need(sections.interp(name), name)?;
        plausible(v, interp_size)
            .then_some(v)
            .ok_or_else(|| format!("implausible interpreter_state.{name} = {v}"))
    };
    let tstate_field = |name: &str| -> Result<u64, String> {
        let v = need(sections.tstate(name), name)?;
        plausible(v, tstate_size)
            .then_some(v)
            .ok_or_else(|| format!("implausible thread_state.{name} = {v}"))
    };
    let status = tstate_field("status")?;
    // Free-threaded builds: `tstate->state` tells a thread running Python from the others
    // when the GIL is off; the debug offsets of 3.13 do not give it.
    let attach_state = free_threaded
        .then(|| layout::attach_state_offset(version, status))
        .flatten();
    let gil_base = interp_field("gil_runtime_state")?;
    // `interval` and `last_holder` come before `locked`: 16 bytes of the struct at least.
    let locked = interp_field("gil_runtime_state_locked")?
        .checked_sub(gil_base)
        .filter(|&locked| locked >= 16)
        .ok_or("gil_runtime_state_locked lies too near the start of the GIL struct")?;
    let holder = interp_field("gil_runtime_state_holder")?
        .checked_sub(gil_base)
        .ok_or("gil_runtime_state_holder lies before the GIL struct")?;
    // A free-threaded GIL starts with `int enabled`: `locked` is 8 bytes further in.
    let enabled = free_threaded.then_some(0);
    if free_threaded && locked != 24 {
        return Err(format!(
            "free-threaded GIL with locked at +{locked}, not after `enabled` at +24"
        ));
    }
    let gil_fields = GilFields::from_locked(locked, enabled);
    if gil_fields.last_holder != holder {
        return Err(format!(
            "GIL holder at +{holder} and locked at +{locked} do not fit the known struct"
        ));
    }
    let flag = |name: &str| tstate_field(name).ok().map(Flag::int);
    let runtime_size = need(sections.runtime("size"), "runtime size")?;
    let interpreters_head = need(sections.runtime("interpreters_head"), "interpreters_head")?;
    if !plausible(interpreters_head, runtime_size) {
        return Err(format!(
            "implausible runtime_state.interpreters_head = {interpreters_head}"
        ));
    }
    Ok(Layout {
        family: "_Py_DebugOffsets",
        runtime_interpreters_head: interpreters_head,
        gil: GilPlacement::InterpreterPointer(interp_field("ceval_gil")?),
        gil_fields,
        interp_next: interp_field("next")?,
        interp_threads_head: interp_field("threads_head")?,
        interp_id: interp_field("id").ok(),
        interp_modules: interp_field("imports_modules").ok(),
        tstate_next: tstate_field("next")?,
        tstate_interp: tstate_field("interp")?,
        tstate_thread_id: tstate_field("thread_id")?,
        tstate_native_thread_id: Some(tstate_field("native_thread_id")?),
        tstate_holds_gil: flag("holds_gil")
            .or_else(|| layout::supplement_debug_offsets(version, status)),
        tstate_gil_requested: flag("gil_requested"),
        free_threaded,
        tstate_attach_state: attach_state,
        current: Current::ThreadFlag(Flag::bit(status, layout::ACTIVE_BIT)),
        stack: stack_layout(
            &sections,
            version,
            free_threaded,
            tstate_field("current_frame")?,
            tstate_field("datastack_chunk").ok(),
        )
        .ok(),
    })
}

/// The stack layout from the frame, code, object and string sections. An error leaves
/// stacks out; the GIL figures do not need them.
fn stack_layout(
    sections: &Sections,
    version: &Version,
    free_threaded: bool,
    current_frame: u64,
    datastack: Option<u64>,
) -> Result<StackLayout, String> {
    let get = |section: &str, name: &str| -> Result<u64, String> {
        let v = sections
            .field(section, name)
            .ok_or_else(|| format!("_Py_DebugOffsets has no {section}.{name}"))?;
        let size = sections.field(section, "size").unwrap_or(1 << 20);
        (v < size.max(1) && size < (1 << 20))
            .then_some(v)
            .ok_or_else(|| format!("implausible {section}.{name} = {v}"))
    };
    let frame = |name| get("interpreter_frame", name);
    let code = |name| get("code_object", name);
    let unicode = |name| get("unicode_object", name);
    let ascii_data = get("unicode_object", "asciiobject_size")?;
    // Free-threaded 3.14+: both offsets are published, and 0 on other builds. A code object
    // is a `PyVarObject` like a tuple: its `ob_size` is where the tuple's is.
    let nonzero = |value: Result<u64, String>| value.ok().filter(|&v| v != 0);
    let tlbc_index = nonzero(frame("tlbc_index"));
    let thread_local_bytecode = match (tlbc_index, nonzero(code("co_tlbc"))) {
        (Some(_), Some(array)) => Some(ThreadLocalBytecode {
            array,
            code_units: get("tuple_object", "ob_size")?,
        }),
        _ => None,
    };
    Ok(StackLayout {
        tstate_frame: current_frame,
        cframe_frame: None,
        // The evaluation loop's entry frame: `FRAME_OWNED_BY_CSTACK` (3) on 3.13, and from
        // 3.14 `FRAME_OWNED_BY_INTERPRETER`, which took value 3 (CSTACK moved to 4 and marks
        // no entry frame: ceval.c of 3.14.4).
        eval_calls: EvalCalls::EntryFrames { entry_owner: 3 },
        datastack,
        frame: FrameFields::Interpreter {
            previous: frame("previous")?,
            code: frame("executable")?,
            instr: frame("instr_ptr")?,
            owner: frame("owner")?,
            shim_owner: None,
            tagged_code: version.minor >= 14,
            tlbc_index: thread_local_bytecode.and(tlbc_index),
        },
        code: CodeFields {
            filename: code("filename")?,
            name: code("name")?,
            qualname: Some(code("qualname")?),
            firstlineno: code("firstlineno")?,
            linetable: code("linetable")?,
            line_table: LineTable::Locations,
            first_instruction: Some(code("co_code_adaptive")?),
            thread_local_bytecode,
        },
        text: TextKind::Unicode,
        unicode: UnicodeFields {
            length: unicode("length")?,
            state: unicode("state")?,
            // Free-threaded 3.14+ make `interned` an `unsigned char` (set atomically): the
            // bitfields after it start at the next byte (gdb `ptype /o PyASCIIObject` on
            // the 3.13.5 and 3.14.4 free-threaded builds: kind at bit 2, then at bit 8).
            kind_bit: if free_threaded && version.minor >= 14 {
                8
            } else {
                2
            },
            ascii_data,
            // The compact header adds utf8_length and utf8 to the ASCII one.
            compact_data: sections
                .field("unicode_object", "compactunicodeobject_size")
                .unwrap_or(ascii_data + 16),
        },
        bytes_size: get("bytes_object", "ob_size")?,
        bytes_data: get("bytes_object", "ob_sval")?,
        ob_type: get("pyobject", "ob_type")?,
        tp_name: get("type_object", "tp_name")?,
        locals: locals_layout(&get, version).ok(),
    })
}

/// Where frames keep their variables, from the frame, code and object sections. Sets
/// have a section from 3.14 on; 3.13's, like cells', lie after the object header as in
/// every build (`ObjectFields::after_header`). An error leaves variables out.
fn locals_layout(
    get: &dyn Fn(&str, &str) -> Result<u64, String>,
    version: &Version,
) -> Result<LocalsLayout, String> {
    let header = get("pyobject", "ob_type")? + 8;
    let argcount = get("code_object", "argcount")?;
    // `co_flags` and `co_kwonlyargcount` are not published: in every build from 3.12 on
    // they are the ints right before and two after `co_argcount` (gdb `ptype /o
    // PyCodeObject` on 3.12.1, 3.13.0, 3.13.5t, 3.14.4t, 3.14.10 and 3.15.2).
    let flags = argcount
        .checked_sub(4)
        .ok_or("code_object.argcount lies at the start of the code object")?;
    let mut objects = ObjectFields::after_header(header, 0);
    objects.var_size = get("tuple_object", "ob_size")?;
    objects.tuple_items = get("tuple_object", "ob_item")?;
    objects.list_items = get("list_object", "ob_item")?;
    objects.float_value = get("float_object", "ob_fval")?;
    objects.type_flags = get("type_object", "tp_flags")?;
    if let (Ok(used), Ok(mask), Ok(table)) = (
        get("set_object", "used"),
        get("set_object", "mask"),
        get("set_object", "table"),
    ) {
        (objects.set_used, objects.set_mask, objects.set_table) = (used, mask, table);
    }
    Ok(LocalsLayout {
        frame_slots: get("interpreter_frame", "localsplus")?,
        tagged_slots: version.minor >= 14,
        names: VariableNames::Combined {
            names: get("code_object", "localsplusnames")?,
            kinds: get("code_object", "localspluskinds")?,
        },
        argcount,
        kwonlyargcount: Some(argcount + 8),
        flags,
        objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::memory::MemoryImage;

    /// A debug-offsets block: the cookie, then version, free_threaded and the runtime,
    /// interpreter and thread sections of 3.13.
    fn block_3_13(values: [u64; 2 + 3 + 13 + 9]) -> Vec<u8> {
        let mut block = Vec::new();
        block.extend_from_slice(COOKIE);
        for v in values {
            block.extend_from_slice(&v.to_le_bytes());
        }
        block.resize(1024, 0);
        block
    }

    /// The values 3.13.0 publishes (read with gdb from the pyenv build).
    fn image_3_13() -> Vec<u8> {
        block_3_13([
            0x030D00F0, 0, // version, free_threaded
            283320, 608, 632, // runtime_state
            194968, 7272, 7264, 7344, 7400, 7656, 7640, 7648, 16, 7752, 0, 7768, 7760, 304, 0, 8,
            16, 72, 152, 160, 232, 32, // thread_state
        ])
    }

    /// The values the free-threaded 3.13.5 build publishes (gdb on its `.PyRuntime`).
    /// `gil_runtime_state_enabled` is 0 there, not the field's offset in the interpreter.
    fn image_3_13t() -> Vec<u8> {
        block_3_13([
            0x030D05F0, 1, // version, free_threaded
            328320, 608, 632, // runtime_state
            215616, 7272, 7264, 7344, 7400, 7664, 7648, 7656, 16, 7760, 0, 7784, 7776, 304, 0, 8,
            16, 72, 152, 160, 232, 32, // thread_state
        ])
    }

    /// The layout read from `block`, of a free-threaded build whose GIL starts with
    /// `int enabled` (3.13t and 3.14t alike).
    fn free_threaded_layout(block: Vec<u8>, version: Version) -> Layout {
        let mut image = MemoryImage::new();
        image.add(0x10000, block);
        let layout = read(&image, 0x10000, &version).unwrap().unwrap();
        assert!(layout.free_threaded);
        let gil = layout.gil_fields;
        assert_eq!(gil.enabled, Some(0));
        assert_eq!((gil.interval, gil.last_holder, gil.locked), (8, 16, 24));
        assert_eq!(
            (gil.switch_number, gil.sync_start, gil.sync_end),
            (32, 40, 216)
        );
        layout
    }

    #[test]
    fn a_free_threaded_3_13_gil_lies_past_its_enabled_field() {
        let layout = free_threaded_layout(image_3_13t(), Version::new(3, 13, 5));
        // offsetof(PyThreadState, state) in the 3.13.5 free-threaded build.
        assert_eq!(layout.tstate_attach_state, Some(40));
        // 3.13t keeps `interned:2` a bitfield.
        assert_eq!(layout.stack.unwrap().unicode.kind_bit, 2);
        assert!(layout.tstate_read_size() >= 48);
    }

    /// The free-threaded 3.14.4 build's values from version to the unicode section (read
    /// from its live `_PyRuntime`), cookie first.
    fn image_3_14t() -> Vec<u8> {
        #[rustfmt::skip]
        let values: [u64; 80] = [
            0x030E04F0, 1, // version, free_threaded
            362368, 784, 808, // runtime_state
            246720, 7280, 7272, 7344, 7360, 7408, 7712, 7696, 7704, 16, 7808, 0, 7832, 7824,
            8024, 17628, // interpreter_state
            832, 0, 8, 16, 72, 152, 160, 232, 32, // thread_state
            88, 8, 0, 56, 80, 78, 64, 72, // interpreter_frame
            240, 128, 136, 144, 152, 84, 68, 112, 120, 232, 224, // code_object
            32, 24, // pyobject
            432, 40, 104, 184, // type_object
            56, 48, 32, // tuple_object
            56, 40, 32, // list_object
            216, 40, 56, 48, // set_object
            64, 48, 56, // dict_object
            40, 32, // float_object
            48, 32, 40, // long_object
            56, 32, 48, // bytes_object
            80, 48, 32, 56, // unicode_object
        ];
        let mut block = COOKIE.to_vec();
        for v in values {
            block.extend_from_slice(&v.to_le_bytes());
        }
        block.resize(1024, 0);
        block
    }

    /// Overwrite the value at `index` (counted from `version`) of a debug-offsets block.
    fn set_value(block: &mut [u8], index: usize, value: u64) {
        let at = 8 + 8 * index;
        block[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn a_free_threaded_3_14_build_has_its_state_after_holds_gil_and_per_thread_bytecode() {
        let layout = free_threaded_layout(image_3_14t(), Version::new(3, 14, 4));
        // gdb `ptype /o struct _ts` on the build: _status 32, holds_gil 36, state 44.
        assert_eq!(layout.tstate_attach_state, Some(44));
        assert_eq!(layout.tstate_holds_gil, Some(Flag::int(36)));
        let stack = layout.stack.unwrap();
        assert_eq!(stack.ob_type, 24);
        assert_eq!((stack.unicode.state, stack.unicode.kind_bit), (48, 8));
        match stack.frame {
            FrameFields::Interpreter {
                tlbc_index,
                tagged_code,
                ..
            } => assert_eq!((tlbc_index, tagged_code), (Some(72), true)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            stack.code.thread_local_bytecode,
            Some(ThreadLocalBytecode {
                array: 224,
                code_units: 32
            })
        );
    }

    #[test]
    fn default_3_14_builds_have_no_thread_local_bytecode() {
        let mut block = image_3_14t();
        // free_threaded 0, and the free-threaded-only offsets (tlbc_generation, tlbc_index,
        // co_tlbc) 0 as such builds publish them.
        for index in [1, 20, 37, 48] {
            set_value(&mut block, index, 0);
        }
        // A default GIL: `locked` 16 bytes into it, `last_holder` 8.
        let gil = 7808;
        set_value(&mut block, 17, gil + 16);
        set_value(&mut block, 18, gil + 8);
        let mut image = MemoryImage::new();
        image.add(0x10000, block);
        let layout = read(&image, 0x10000, &Version::new(3, 14, 4))
            .unwrap()
            .unwrap();
        assert!(!layout.free_threaded);
        assert_eq!(layout.tstate_attach_state, None);
        let stack = layout.stack.unwrap();
        assert_eq!(stack.code.thread_local_bytecode, None);
        assert!(matches!(
            stack.frame,
            FrameFields::Interpreter {
                tlbc_index: None,
                ..
            }
        ));
    }

    #[test]
    fn free_threaded_builds_after_3_14_are_refused() {
        let mut block = image_3_13t();
        block[8..16].copy_from_slice(&0x030F00F0u64.to_le_bytes());
        let mut image = MemoryImage::new();
        image.add(0x10000, block);
        let error = read(&image, 0x10000, &Version::new(3, 15, 0))
            .unwrap()
            .unwrap_err();
        assert!(error.contains("free-threaded"), "{error}");
    }

    #[test]
    fn rejects_memory_without_the_cookie() {
        let mut image = MemoryImage::new();
        image.add(0x10000, vec![0; 1024]);
        assert!(read(&image, 0x10000, &Version::new(3, 13, 0)).is_none());
    }

    #[test]
    fn builds_a_layout_from_3_13_offsets() {
        let mut image = MemoryImage::new();
        image.add(0x10000, image_3_13());
        let layout = read(&image, 0x10000, &Version::new(3, 13, 0))
            .unwrap()
            .unwrap();
        assert_eq!(layout.runtime_interpreters_head, 632);
        assert_eq!(layout.gil, GilPlacement::InterpreterPointer(16));
        assert_eq!(layout.gil_fields.locked, 16);
        assert_eq!(layout.tstate_native_thread_id, Some(160));
        assert_eq!(layout.tstate_holds_gil, Some(Flag::bit(32, 5)));
    }
}
