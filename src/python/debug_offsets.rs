//! `_Py_DebugOffsets` (3.13+): the offsets CPython publishes at the start of `_PyRuntime` for
//! out-of-process tools. Field orders per version are data here; values come from the target.

use super::layout::{self, Current, Flag, GilFields, GilPlacement, Layout};
use super::version::Version;
use crate::target::memory::{u64_at, Memory};

const COOKIE: &[u8; 8] = b"xdebugpy";
/// cookie, version, free_threaded: then the sections, each a run of uint64_t.
const HEADER_BYTES: u64 = 24;

/// The field order of the sections gilscope reads, for one version of the struct.
struct Schema {
    runtime_state: &'static [&'static str],
    interpreter_state: &'static [&'static str],
    thread_state: &'static [&'static str],
}

const RUNTIME_STATE: &[&str] = &["size", "finalizing", "interpreters_head"];

/// 3.13 (checked against the DWARF of 3.13.0: docs/COMPATIBILITY.md).
const SCHEMA_3_13: Schema = Schema {
    runtime_state: RUNTIME_STATE,
    interpreter_state: &[
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
    ],
    thread_state: &[
        "size",
        "prev",
        "next",
        "interp",
        "current_frame",
        "thread_id",
        "native_thread_id",
        "datastack_chunk",
        "status",
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

const SCHEMA_3_14: Schema = Schema {
    runtime_state: RUNTIME_STATE,
    interpreter_state: INTERPRETER_STATE_3_14,
    thread_state: SCHEMA_3_13.thread_state,
};

/// 3.15 from beta 4: the thread section gains frame bookkeeping and the GIL flags.
const SCHEMA_3_15: Schema = Schema {
    runtime_state: RUNTIME_STATE,
    interpreter_state: INTERPRETER_STATE_3_14,
    thread_state: &[
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
    ],
};

/// 3.15 alphas and betas 1-3, before `last_profiled_frame_seq` was added.
const SCHEMA_3_15_EARLY: Schema = Schema {
    runtime_state: RUNTIME_STATE,
    interpreter_state: INTERPRETER_STATE_3_14,
    thread_state: &[
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
    ],
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
    fn field(&self, section: usize, name: &str) -> Option<u64> {
        let sections = [
            self.schema.runtime_state,
            self.schema.interpreter_state,
            self.schema.thread_state,
        ];
        let start: usize = sections[..section].iter().map(|s| s.len()).sum();
        let index = sections[section].iter().position(|f| *f == name)?;
        u64_at(self.block, HEADER_BYTES + 8 * (start + index) as u64)
    }

    fn runtime(&self, name: &str) -> Option<u64> {
        self.field(0, name)
    }
    fn interp(&self, name: &str) -> Option<u64> {
        self.field(1, name)
    }
    fn tstate(&self, name: &str) -> Option<u64> {
        self.field(2, name)
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
    if free_threaded {
        return Err("free-threaded builds are not supported yet".into());
    }
    let gil_base = interp_field("gil_runtime_state")?;
    let locked = interp_field("gil_runtime_state_locked")?
        .checked_sub(gil_base)
        .ok_or("gil_runtime_state_locked lies before the GIL struct")?;
    let holder = interp_field("gil_runtime_state_holder")?
        .checked_sub(gil_base)
        .ok_or("gil_runtime_state_holder lies before the GIL struct")?;
    let gil_fields = GilFields::from_locked(locked, None);
    if gil_fields.last_holder != holder {
        return Err(format!(
            "GIL holder at +{holder} and locked at +{locked} do not fit the known struct"
        ));
    }
    let status = tstate_field("status")?;
    let flag = |name: &str| tstate_field(name).ok().map(Flag::int);
    Ok(Layout {
        family: "_Py_DebugOffsets",
        runtime_interpreters_head: need(
            sections.runtime("interpreters_head"),
            "interpreters_head",
        )?,
        gil: GilPlacement::InterpreterPointer(interp_field("ceval_gil")?),
        gil_fields,
        interp_next: interp_field("next")?,
        interp_threads_head: interp_field("threads_head")?,
        tstate_next: tstate_field("next")?,
        tstate_interp: tstate_field("interp")?,
        tstate_thread_id: tstate_field("thread_id")?,
        tstate_native_thread_id: Some(tstate_field("native_thread_id")?),
        tstate_holds_gil: flag("holds_gil")
            .or_else(|| layout::supplement_debug_offsets(version, status)),
        tstate_gil_requested: flag("gil_requested"),
        current: Current::ThreadFlag(Flag::bit(status, layout::ACTIVE_BIT)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::memory::MemoryImage;

    /// The values 3.13.0 publishes (read with gdb from the pyenv build).
    fn image_3_13() -> Vec<u8> {
        let mut block = Vec::new();
        block.extend_from_slice(COOKIE);
        let values: [u64; 2 + 3 + 13 + 9] = [
            0x030D00F0, 0, // version, free_threaded
            283320, 608, 632, // runtime_state
            194968, 7272, 7264, 7344, 7400, 7656, 7640, 7648, 16, 7752, 0, 7768, 7760, 304, 0, 8,
            16, 72, 152, 160, 232, 32, // thread_state
        ];
        for v in values {
            block.extend_from_slice(&v.to_le_bytes());
        }
        block.resize(1024, 0);
        block
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
