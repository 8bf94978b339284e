//! Where each CPython version keeps the things gilscope reads: one table per layout family,
//! and the same `Layout` built from `_Py_DebugOffsets` on 3.13+. Only data lives here.

use super::version::Version;

/// A flag in a thread state: a whole int, or one bit of a bitfield word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    pub offset: u64,
    pub bit: Option<u8>,
}

impl Flag {
    pub const fn int(offset: u64) -> Flag {
        Flag { offset, bit: None }
    }

    pub const fn bit(offset: u64, bit: u8) -> Flag {
        Flag {
            offset,
            bit: Some(bit),
        }
    }

    /// Evaluate the flag on the 4 bytes read at its offset.
    pub fn is_set(&self, word: u32) -> bool {
        match self.bit {
            Some(bit) => word >> bit & 1 == 1,
            None => word != 0,
        }
    }
}

/// Where the interpreter's GIL (`struct _gil_runtime_state`) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GilPlacement {
    /// 3.6: separate static variables (local symbols `gil_locked`, `gil_last_holder`, ...).
    Globals,
    /// 3.7-3.11: embedded in `_PyRuntime` at this offset (`_PyRuntime.ceval.gil`).
    InRuntime(u64),
    /// 3.12+: a pointer at this offset in each `PyInterpreterState` (`interp->ceval.gil`).
    InterpreterPointer(u64),
    /// 2.7: a bare semaphore (`interpreter_lock`) with no owner, no counter and no
    /// condition variable to sleep on: only the holder can be read (`current`).
    HolderOnly,
}

/// Field offsets inside `struct _gil_runtime_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GilFields {
    pub interval: u64,
    pub last_holder: u64,
    pub locked: u64,
    pub switch_number: u64,
    /// `cond`, `mutex`, `switch_cond`, `switch_mutex` lie in [sync_start, sync_end): a
    /// thread blocked on a futex in that range is waiting on the GIL.
    pub sync_start: u64,
    pub sync_end: u64,
    /// Free-threaded builds: `int enabled` (0 = no GIL).
    pub enabled: Option<u64>,
}

impl GilFields {
    /// The tail of `_gil_runtime_state` has kept one order from 3.7 to 3.15:
    /// interval, last_holder, locked, switch_number, cond (48), mutex (40), switch_cond (48),
    /// switch_mutex (40). Knowing where `locked` is fixes everything after it.
    pub const fn from_locked(locked: u64, enabled: Option<u64>) -> GilFields {
        GilFields {
            interval: locked - 16,
            last_holder: locked - 8,
            locked,
            switch_number: locked + 8,
            sync_start: locked + 16,
            sync_end: locked + 16 + 48 + 40 + 48 + 40,
            enabled,
        }
    }

    /// Bytes to read to cover every scalar field and the sync objects.
    pub fn size(&self) -> u64 {
        self.sync_end
    }
}

pub const DEFAULT_GIL: GilFields = GilFields::from_locked(16, None);

/// Everything gilscope needs to walk interpreters and threads and find the GIL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Which table this is, for messages ("3.9-3.10", "_Py_DebugOffsets").
    pub family: &'static str,
    /// Offset of `interpreters.head` in `_PyRuntime` (unused on 3.6: `interp_head` symbol).
    pub runtime_interpreters_head: u64,
    pub gil: GilPlacement,
    pub gil_fields: GilFields,
    pub interp_next: u64,
    pub interp_threads_head: u64,
    /// `interp->id` (an int64; the main interpreter is 0), where known (3.12+).
    pub interp_id: Option<u64>,
    /// `interp->modules` (`imports.modules` from 3.12): the `sys.modules` dict.
    pub interp_modules: Option<u64>,
    pub tstate_next: u64,
    pub tstate_interp: u64,
    /// `thread_id`: a `pthread_t` (the address of glibc's `struct pthread`).
    pub tstate_thread_id: u64,
    /// `native_thread_id` (3.11+): the kernel tid.
    pub tstate_native_thread_id: Option<u64>,
    pub tstate_holds_gil: Option<Flag>,
    pub tstate_gil_requested: Option<Flag>,
    /// A free-threaded build (3.13t): the GIL may be off (`gil_fields.enabled`), and object
    /// headers are not the default ones.
    pub free_threaded: bool,
    /// `tstate->state` (an int: [`ATTACHED`], [`SUSPENDED`] or detached), read on
    /// free-threaded builds to tell threads running Python from the rest when there is no GIL.
    pub tstate_attach_state: Option<u64>,
    /// Where CPython records which thread is running Python: set right after `take_gil`
    /// returns, cleared right before the GIL is released. This is "holding" in the exact
    /// sense (the GIL's `locked` stays 1 a little longer while the thread is already inside
    /// drop_gil, and becomes 1 a little earlier, before take_gil has returned).
    pub current: Current,
    /// How to read Python stacks; None where the version's frames are not known.
    pub stack: Option<StackLayout>,
}

/// How a code object maps instruction offsets to line numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineTable {
    /// 2.7 `co_lnotab`: (byte offset delta, line delta) pairs, both unsigned.
    LnotabUnsigned,
    /// 3.6-3.9 `co_lnotab`: (byte offset delta, signed line delta) pairs.
    Lnotab,
    /// 3.10 `co_linetable`: (byte offset delta, line delta, -128 = no line) pairs.
    Lines310,
    /// 3.11+ `co_linetable`: the location table (variable-length entries per code unit run).
    Locations,
}

/// Field offsets in `PyCodeObject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeFields {
    pub filename: u64,
    pub name: u64,
    /// 3.11+: the qualified name ("Class.method").
    pub qualname: Option<u64>,
    /// An `int`.
    pub firstlineno: u64,
    pub linetable: u64,
    pub line_table: LineTable,
    /// 3.11+: the first instruction (`co_code_adaptive`), inside the code object.
    pub first_instruction: Option<u64>,
    /// Free-threaded 3.14+: each thread may run its own copy of the bytecode.
    pub thread_local_bytecode: Option<ThreadLocalBytecode>,
}

/// Free-threaded 3.14+: where a code object keeps the per-thread copies of its bytecode.
/// `co_tlbc` points at a `_PyCodeArray` {`Py_ssize_t size`; `char *entries[size]`}; entry 0
/// is `co_code_adaptive`, entry i the copy of the threads whose frames have `tlbc_index` i.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadLocalBytecode {
    /// `co_tlbc` in the code object.
    pub array: u64,
    /// `ob_size` of the code object (a `PyVarObject`): its length in 2-byte code units,
    /// which is every copy's length too.
    pub code_units: u64,
}

/// What a frame is and where its fields are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFields {
    /// 2.7-3.10: heap `PyFrameObject`s linked by `f_back`. `lasti` (an int) times
    /// `lasti_scale` is the byte offset of the last instruction.
    Object {
        back: u64,
        code: u64,
        lasti: u64,
        lasti_scale: u64,
        /// 3.6-3.10: the field that says the frame is being run (2.7 has none).
        executing: Option<Executing>,
        /// 3.6-3.10: `f_gen`, the generator or coroutine that owns the frame (0: none; 2.7
        /// has no such field).
        generator: Option<u64>,
    },
    /// 3.11+: `_PyInterpreterFrame`s on the thread's data stack, linked by `previous`.
    /// `instr` points at the last (3.11-3.12) or current (3.13+) instruction.
    Interpreter {
        previous: u64,
        code: u64,
        instr: u64,
        owner: u64,
        /// The `owner` value of C-stack shim frames that carry a code object (3.12).
        shim_owner: Option<u8>,
        /// 3.14+: the code pointer is a `_PyStackRef` with tag bits.
        tagged_code: bool,
        /// Free-threaded 3.14+: `int32_t tlbc_index`, which copy of the bytecode
        /// `instr` points into ([`ThreadLocalBytecode`]).
        tlbc_index: Option<u64>,
    },
}

/// How the Python frames of a thread are grouped into calls of the evaluation loop, each of
/// which is one native frame of `_PyEval_EvalFrameDefault` (`--native` puts the Python frames
/// of a call where that native frame is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalCalls {
    /// 2.7, 3.6-3.10: every frame object is run by a call of its own.
    OnePerFrame,
    /// 3.11: a call runs frames back to the one with `is_entry` set (a byte of the frame). Each
    /// call keeps a `_PyCFrame` as a local variable; the thread state's `cframe` and each
    /// cframe's `previous` (at `cframe_previous`) chain them, innermost first.
    EntryFlag { is_entry: u64, cframe_previous: u64 },
    /// 3.12+: each call pushes an entry frame of its own, a local variable whose `owner` is
    /// `entry_owner` (`FRAME_OWNED_BY_CSTACK` on 3.12-3.13, `FRAME_OWNED_BY_INTERPRETER` from
    /// 3.14, both 3), below the frames it runs.
    EntryFrames { entry_owner: u8 },
}

/// 3.6-3.10: a frame object's one-byte field that the evaluation loop sets while it runs
/// the frame, and the values that mean "running". A frame that returned and was kept for
/// reuse (a code object's zombie frame, the free list) keeps its `f_back` and `f_code`, so
/// this is what tells a frame of the stack from a dead one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Executing {
    pub offset: u64,
    pub running: &'static [i8],
}

/// `f_executing` (3.6-3.9): 1 while the evaluation loop runs the frame.
const F_EXECUTING: &[i8] = &[1];
/// `f_state` (3.10): `FRAME_EXECUTING` (0) or `FRAME_UNWINDING` (2, an exception on its way
/// out of the frame), by the enum in the 3.10.13 DWARF.
const F_STATE_RUNNING: &[i8] = &[0, 2];

/// Field offsets in `str` objects (`PyASCIIObject`, `PyCompactUnicodeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnicodeFields {
    pub length: u64,
    /// The state bitfield: interned, kind (3 bits), compact (1), ascii (1).
    pub state: u64,
    /// The first bit of `kind` in the state word: 2 after `interned:2`; 8 where `interned`
    /// is a whole byte (free-threaded 3.14+, which sets it atomically).
    pub kind_bit: u8,
    /// Where the characters of a compact ASCII string start.
    pub ascii_data: u64,
    /// Where the characters of other compact strings start.
    pub compact_data: u64,
}

/// What the names in code objects (`co_name`, `co_filename`) are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// `str` objects (3.x): read with `unicode`.
    Unicode,
    /// 2.7 `str` is bytes (`PyStringObject`): read with `bytes_size` and `bytes_data`, and
    /// decoded as UTF-8 (the usual file system encoding), invalid bytes as U+FFFD.
    Bytes,
}

/// Where a frame keeps its variables, and how its code object names them (`dump --locals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalsLayout {
    /// Offset in the frame of its first variable slot (`f_localsplus`; 3.11+ `localsplus`).
    pub frame_slots: u64,
    /// 3.14+: each slot is a `_PyStackRef`: a pointer with tag bits in its low two bits, or
    /// (both bits set) an int shifted left by two.
    pub tagged_slots: bool,
    pub names: VariableNames,
    /// `co_argcount`, `co_kwonlyargcount` (2.7 has none) and `co_flags`: ints in the code
    /// object, which say how many of the first variables are arguments.
    pub argcount: u64,
    pub kwonlyargcount: Option<u64>,
    pub flags: u64,
    pub objects: ObjectFields,
}

/// How a code object names its frame's variable slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableNames {
    /// 2.7-3.10: a slot per name of `co_varnames`, then a cell per name of `co_cellvars`,
    /// then a free variable per name of `co_freevars` (three tuples of names).
    Split {
        varnames: u64,
        cellvars: u64,
        freevars: u64,
    },
    /// 3.11+: `co_localsplusnames`, a tuple with a name per slot, and `co_localspluskinds`,
    /// a `bytes` with a kind per slot (local 0x20, cell 0x40, free 0x80, hidden 0x10).
    Combined { names: u64, kinds: u64 },
}

/// Field offsets of the built-in objects a variable's value is read from (dicts and ints
/// are read with the thread-name reader's layout, which has them for every version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectFields {
    /// `ob_size` of a variable-size object (tuple, list).
    pub var_size: u64,
    /// The first item of a tuple (inline; 3.14 put a cached hash before it).
    pub tuple_items: u64,
    /// The pointer to a list's item array.
    pub list_items: u64,
    /// A float's `double`.
    pub float_value: u64,
    /// A cell's content (`ob_ref`).
    pub cell_ref: u64,
    /// A set's `used` count, its `mask` (table size - 1) and the pointer to its table of
    /// {key, hash} entries.
    pub set_used: u64,
    pub set_mask: u64,
    pub set_table: u64,
    /// `tp_flags` in a type object.
    pub type_flags: u64,
}

impl ObjectFields {
    /// The fields of a default build whose object header is `header` bytes (16; 32 on a
    /// free-threaded build), with tuple items `tuple_hash` bytes further (3.14's cached
    /// hash). These have kept their place after the header from 2.7 to 3.15 (gdb
    /// `ptype /o` on every build in docs/COMPATIBILITY.md).
    pub const fn after_header(header: u64, tuple_hash: u64) -> ObjectFields {
        ObjectFields {
            var_size: header,
            tuple_items: header + 8 + tuple_hash,
            list_items: header + 8,
            float_value: header,
            cell_ref: header,
            set_used: header + 8,
            set_mask: header + 16,
            set_table: header + 24,
            type_flags: header + 152,
        }
    }
}

/// Everything needed to read a thread's Python stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackLayout {
    /// Offset in the thread state of the pointer to the innermost frame, or (3.11-3.12) to
    /// the `_PyCFrame` that holds it.
    pub tstate_frame: u64,
    /// 3.11-3.12: offset of `current_frame` in `_PyCFrame`.
    pub cframe_frame: Option<u64>,
    /// Which frames one call of the evaluation loop runs (for `--native`'s merge).
    pub eval_calls: EvalCalls,
    /// 3.11+: offset in the thread state of `datastack_chunk`, the data-stack chunk the
    /// thread's newest frames live in; `datastack_top` (the end of its used part) is the
    /// pointer after it in every version (3.11.7-3.15.2 DWARF).
    pub datastack: Option<u64>,
    pub frame: FrameFields,
    pub code: CodeFields,
    pub text: TextKind,
    pub unicode: UnicodeFields,
    pub bytes_size: u64,
    pub bytes_data: u64,
    pub ob_type: u64,
    pub tp_name: u64,
    /// Where frames keep their variables; None where not known.
    pub locals: Option<LocalsLayout>,
}

const UNICODE_3_6: UnicodeFields = UnicodeFields {
    length: 16,
    state: 32,
    kind_bit: 2,
    ascii_data: 48,
    compact_data: 72,
};
/// 3.12 dropped `wstr` and `wstr_length`.
const UNICODE_3_12: UnicodeFields = UnicodeFields {
    length: 16,
    state: 32,
    kind_bit: 2,
    ascii_data: 40,
    compact_data: 56,
};

/// Stack layouts for the table versions (checked against the DWARF of the pyenv builds).
pub(super) fn stack_table(major: u8, minor: u8) -> Option<StackLayout> {
    // `f_gen` is the word just before `f_lasti` in 3.6-3.10.
    let object_frame =
        |lasti: u64, lasti_scale, executing: Option<Executing>| FrameFields::Object {
            back: 24,
            code: 32,
            lasti,
            lasti_scale,
            generator: executing.map(|_| lasti - 8),
            executing,
        };
    let executing = |offset, running| Some(Executing { offset, running });
    let code_36 = CodeFields {
        filename: 96,
        name: 104,
        qualname: None,
        firstlineno: 36,
        linetable: 112,
        line_table: LineTable::Lnotab,
        first_instruction: None,
        thread_local_bytecode: None,
    };
    let code_38 = CodeFields {
        filename: 104,
        name: 112,
        firstlineno: 40,
        linetable: 120,
        ..code_36
    };
    let code_311 = CodeFields {
        filename: 112,
        name: 120,
        qualname: Some(128),
        firstlineno: 72,
        linetable: 136,
        line_table: LineTable::Locations,
        first_instruction: Some(184),
        thread_local_bytecode: None,
    };
    // Variables (gdb `ptype /o` of PyFrameObject, _PyInterpreterFrame and PyCodeObject in
    // each pyenv build: docs/COMPATIBILITY.md).
    let split = |frame_slots, varnames, argcount, kwonlyargcount, flags| LocalsLayout {
        frame_slots,
        tagged_slots: false,
        names: VariableNames::Split {
            varnames,
            cellvars: varnames + 16,
            freevars: varnames + 8,
        },
        argcount,
        kwonlyargcount,
        flags,
        objects: ObjectFields::after_header(16, 0),
    };
    let locals_36 = split(376, 64, 16, Some(20), 32);
    let locals_37 = LocalsLayout {
        frame_slots: 360,
        ..locals_36
    };
    let locals_38 = split(360, 72, 16, Some(24), 36);
    let locals_311 = LocalsLayout {
        frame_slots: 72,
        names: VariableNames::Combined {
            names: 96,
            kinds: 104,
        },
        argcount: 56,
        kwonlyargcount: Some(64),
        flags: 48,
        ..locals_36
    };
    let base = StackLayout {
        tstate_frame: 24,
        cframe_frame: None,
        eval_calls: EvalCalls::OnePerFrame,
        datastack: None,
        frame: object_frame(104, 1, executing(116, F_EXECUTING)),
        code: code_36,
        text: TextKind::Unicode,
        unicode: UNICODE_3_6,
        bytes_size: 16,
        bytes_data: 32,
        ob_type: 8,
        tp_name: 24,
        locals: Some(locals_37),
    };
    if major == 2 {
        // 2.7.18: `PyStringObject` keeps `ob_shash` and `ob_sstate` before its bytes.
        return (minor == 7).then_some(StackLayout {
            tstate_frame: 16,
            frame: object_frame(120, 1, None),
            code: CodeFields {
                filename: 80,
                name: 88,
                firstlineno: 96,
                linetable: 104,
                line_table: LineTable::LnotabUnsigned,
                ..code_36
            },
            text: TextKind::Bytes,
            bytes_data: 36,
            locals: Some(split(376, 56, 16, None, 28)),
            ..base
        });
    }
    if major != 3 {
        return None;
    }
    Some(match minor {
        6 => StackLayout {
            frame: object_frame(120, 1, executing(132, F_EXECUTING)),
            locals: Some(locals_36),
            ..base
        },
        7 => base,
        8 | 9 => StackLayout {
            code: code_38,
            locals: Some(locals_38),
            ..base
        },
        10 => StackLayout {
            frame: object_frame(96, 2, executing(108, F_STATE_RUNNING)),
            code: CodeFields {
                line_table: LineTable::Lines310,
                ..code_38
            },
            locals: Some(LocalsLayout {
                frame_slots: 352,
                ..locals_38
            }),
            ..base
        },
        11 => StackLayout {
            tstate_frame: 56,
            cframe_frame: Some(8),
            eval_calls: EvalCalls::EntryFlag {
                is_entry: 68,
                cframe_previous: 16,
            },
            datastack: Some(296),
            frame: FrameFields::Interpreter {
                previous: 48,
                code: 32,
                instr: 56,
                owner: 69,
                shim_owner: None,
                tagged_code: false,
                tlbc_index: None,
            },
            code: code_311,
            locals: Some(locals_311),
            ..base
        },
        12 => StackLayout {
            tstate_frame: 56,
            cframe_frame: Some(0),
            eval_calls: EvalCalls::EntryFrames { entry_owner: 3 },
            datastack: Some(232),
            frame: FrameFields::Interpreter {
                previous: 8,
                code: 0,
                instr: 56,
                owner: 70,
                shim_owner: Some(3),
                tagged_code: false,
                tlbc_index: None,
            },
            code: CodeFields {
                firstlineno: 68,
                first_instruction: Some(192),
                ..code_311
            },
            unicode: UNICODE_3_12,
            locals: Some(LocalsLayout {
                argcount: 52,
                kwonlyargcount: Some(60),
                ..locals_311
            }),
            ..base
        },
        _ => return None,
    })
}

/// Where the "current thread state" is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Current {
    /// 2.7, 3.6: the exported `_PyThreadState_Current`.
    Symbol,
    /// 3.7-3.11: `_PyRuntime.gilstate.tstate_current`, at this offset in `_PyRuntime`.
    /// (`gilstate` directly follows `ceval`, whose last member is the GIL: GIL + 216.)
    RuntimeField(u64),
    /// 3.12+: a per-thread flag, `tstate->_status.active`.
    ThreadFlag(Flag),
    /// Unknown: fall back to the GIL's `last_holder`.
    None,
}

impl Layout {
    /// Bytes to read from each thread state to see every field this layout uses.
    pub fn tstate_read_size(&self) -> u64 {
        let fields = [
            Some(self.tstate_next),
            Some(self.tstate_interp),
            Some(self.tstate_thread_id),
            self.tstate_native_thread_id,
            match self.current {
                Current::ThreadFlag(f) => Some(f.offset),
                _ => None,
            },
            self.tstate_holds_gil.map(|f| f.offset),
            self.tstate_gil_requested.map(|f| f.offset),
            self.tstate_attach_state,
        ];
        fields.into_iter().flatten().max().unwrap_or(0) + 8
    }
}

/// The hand-written tables, for versions without `_Py_DebugOffsets`. Each was checked against
/// the DWARF of a pyenv build and a live process (docs/COMPATIBILITY.md).
pub fn table_for(version: &Version) -> Option<Layout> {
    let base = Layout {
        family: "",
        runtime_interpreters_head: 0,
        gil: GilPlacement::Globals,
        gil_fields: DEFAULT_GIL,
        interp_next: 0,
        interp_threads_head: 8,
        interp_id: None,
        interp_modules: None,
        tstate_next: 8,
        tstate_interp: 16,
        tstate_thread_id: 176,
        tstate_native_thread_id: None,
        tstate_holds_gil: None,
        tstate_gil_requested: None,
        free_threaded: false,
        tstate_attach_state: None,
        current: Current::None,
        stack: stack_table(version.major, version.minor),
    };
    let layout = match (version.major, version.minor) {
        (2, 7) => Layout {
            family: "2.7",
            gil: GilPlacement::HolderOnly,
            interp_modules: Some(16),
            tstate_next: 0,
            tstate_interp: 8,
            tstate_thread_id: 144,
            current: Current::Symbol,
            ..base
        },
        (3, 6) => Layout {
            family: "3.6",
            interp_modules: Some(16),
            tstate_thread_id: 152,
            current: Current::Symbol,
            ..base
        },
        (3, 7) => Layout {
            family: "3.7",
            interp_modules: Some(40),
            runtime_interpreters_head: 24,
            gil: GilPlacement::InRuntime(1264),
            current: Current::RuntimeField(1480),
            ..base
        },
        (3, 8) => Layout {
            family: "3.8",
            interp_modules: Some(56),
            runtime_interpreters_head: 32,
            gil: GilPlacement::InRuntime(1152),
            current: Current::RuntimeField(1368),
            ..base
        },
        (3, 9) | (3, 10) => Layout {
            family: "3.9-3.10",
            interp_modules: Some(856),
            runtime_interpreters_head: 32,
            gil: GilPlacement::InRuntime(352),
            current: Current::RuntimeField(568),
            ..base
        },
        (3, 11) => Layout {
            family: "3.11",
            interp_modules: Some(888),
            runtime_interpreters_head: 40,
            gil: GilPlacement::InRuntime(360),
            interp_threads_head: 16,
            tstate_thread_id: 152,
            tstate_native_thread_id: Some(160),
            current: Current::RuntimeField(576),
            ..base
        },
        (3, 12) => Layout {
            family: "3.12",
            interp_modules: Some(944),
            runtime_interpreters_head: 40,
            gil: GilPlacement::InterpreterPointer(384),
            interp_threads_head: 72,
            interp_id: Some(8),
            tstate_thread_id: 136,
            tstate_native_thread_id: Some(144),
            current: Current::ThreadFlag(Flag::bit(24, ACTIVE_BIT)),
            ..base
        },
        _ => return None,
    };
    Some(layout)
}

/// `_status.active` is bit 4 of the `_status` word from 3.12 to 3.15.
pub const ACTIVE_BIT: u8 = 4;

/// Distance from the GIL struct to `gilstate.tstate_current` in 3.7-3.11 `_PyRuntime`.
pub const TSTATE_CURRENT_AFTER_GIL: u64 = 216;

/// `tstate->state` values (3.13+): the thread runs Python (it may touch objects).
pub const ATTACHED: u32 = 1;
/// ...it was stopped by a stop-the-world pause (GC, fork) on its way to attaching. (3.14's
/// 3, `_Py_THREAD_SHUTTING_DOWN`, is a thread state being torn down at exit: neither
/// attached nor suspended, so it is classified like a detached one.)
pub const SUSPENDED: u32 = 2;

/// Offset of `tstate->state` where `_Py_DebugOffsets` does not give it (no version gives
/// it). 3.13 keeps it after `_status` (a 4-byte bitfield word) and `int _whence`, at
/// `_status + 8`; 3.14 puts `int holds_gil` between them, so `_status + 12` (offsetof() in
/// the free-threaded 3.13.5 and 3.14.4 builds: 40 and 44, docs/COMPATIBILITY.md).
pub fn attach_state_offset(version: &Version, status_offset: u64) -> Option<u64> {
    match (version.major, version.minor) {
        (3, 13) => Some(status_offset + 8),
        (3, 14) => Some(status_offset + 12),
        _ => None,
    }
}

/// Per-thread GIL flags that `_Py_DebugOffsets` does not describe on some versions.
/// 3.13: `_status.holds_gil` is bit 5 of the `_status` word. 3.14: `int holds_gil` at +36.
pub fn supplement_debug_offsets(version: &Version, status_offset: u64) -> Option<Flag> {
    match (version.major, version.minor) {
        (3, 13) => Some(Flag::bit(status_offset, 5)),
        (3, 14) => Some(Flag::int(36)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gil_tail_matches_the_measured_struct() {
        let gil = DEFAULT_GIL;
        assert_eq!(
            (gil.interval, gil.last_holder, gil.switch_number),
            (0, 8, 24)
        );
        assert_eq!((gil.sync_start, gil.sync_end), (32, 208));
        let ft = GilFields::from_locked(24, Some(0));
        assert_eq!((ft.interval, ft.last_holder, ft.sync_end), (8, 16, 216));
    }

    #[test]
    fn every_table_version_has_a_layout_and_others_do_not() {
        for minor in 6..=12 {
            assert!(table_for(&Version::new(3, minor, 0)).is_some(), "3.{minor}");
        }
        assert!(table_for(&Version::new(3, 13, 0)).is_none());
        assert!(table_for(&Version::new(2, 6, 9)).is_none());
    }

    #[test]
    fn python_2_7_has_its_own_thread_and_frame_offsets() {
        // `ptype /o` of pyenv's 2.7.18 libpython: PyThreadState {next 0, interp 8, frame 16,
        // thread_id 144}, PyFrameObject {f_back 24, f_code 32, f_lasti 120}, PyCodeObject
        // {co_filename 80, co_name 88, co_firstlineno 96, co_lnotab 104},
        // PyStringObject {ob_size 16, ob_sval 36}.
        let layout = table_for(&Version::new(2, 7, 18)).unwrap();
        assert_eq!(layout.gil, GilPlacement::HolderOnly);
        assert_eq!(
            (
                layout.tstate_next,
                layout.tstate_interp,
                layout.tstate_thread_id
            ),
            (0, 8, 144)
        );
        let stack = layout.stack.unwrap();
        assert_eq!(stack.tstate_frame, 16);
        assert_eq!(stack.text, TextKind::Bytes);
        assert_eq!((stack.bytes_size, stack.bytes_data), (16, 36));
        assert_eq!(
            (stack.code.filename, stack.code.name, stack.code.linetable),
            (80, 88, 104)
        );
        assert_eq!(stack.code.line_table, LineTable::LnotabUnsigned);
        // The 3.7 stack layout is not 2.7's, though both have minor 7.
        let py37 = table_for(&Version::new(3, 7, 16)).unwrap().stack.unwrap();
        assert_eq!(py37.text, TextKind::Unicode);
    }

    #[test]
    fn bit_flags_test_one_bit_and_int_flags_any() {
        assert!(Flag::bit(0, 5).is_set(0b10_0000));
        assert!(!Flag::bit(0, 5).is_set(0b01_1111));
        assert!(Flag::int(36).is_set(1));
        assert!(!Flag::int(36).is_set(0));
    }
}
