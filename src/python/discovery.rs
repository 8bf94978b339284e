//! Attach-time discovery: the binary, version and layout, where `_PyRuntime`, the interpreter
//! list and the GIL are, checked against the live process. It keeps no tick's state.

use std::collections::HashSet;

use super::debug_offsets;
use super::layout::{self, GilFields, GilPlacement, Layout};
use super::version::{self, Version};
use crate::error::{Error, Result};
use crate::target::elf::{self, ElfFile};
use crate::target::maps::{self, Mapping};
use crate::target::memory::{check_pointer, i32_at, u64_at, Memory, ReadError};
use crate::target::pthread_sync::{COND_BYTES, MUTEX_BYTES};

/// Bounds on what a walk will follow, here and at every tick: a target's lists are only
/// trusted this far.
pub(crate) const MAX_INTERPRETERS: usize = 256;
pub(crate) const MAX_THREADS: usize = 16_384;
/// Tries beyond the first to locate the interpreter's lists and GIL in a moving target.
const ATTACH_ATTEMPTS: u32 = 4;
/// Reads of the .bss for a version string start-up had not yet written at attach: start-up
/// writes it within its first milliseconds, so a few seconds of reads are plenty.
const MAX_VERSION_READS: u32 = 40;
/// How far into `_PyRuntime` or an interpreter a scan for a drifted field may look.
const SCAN_BYTES: u64 = 8192;
/// The switch interval is set in µs; anything outside this is not a GIL.
const INTERVAL_RANGE: std::ops::RangeInclusive<u64> = 1..=100_000_000;

/// Absolute addresses of the GIL's fields in the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GilAddresses {
    pub locked: u64,
    pub last_holder: u64,
    pub switch_number: u64,
    pub interval: u64,
    /// Where `cond`, `mutex`, `switch_cond` and `switch_mutex` lie: [start, end) ranges.
    pub sync: Vec<(u64, u64)>,
    /// The interpreter-wide "current thread state" pointer (3.6-3.11), if known.
    pub current: Option<u64>,
    /// Base and field layout when the GIL is one struct (3.7+): read it in one go.
    pub block: Option<(u64, GilFields)>,
}

impl GilAddresses {
    /// A GIL that is one struct at `base` (3.7+), its fields where `fields` puts them.
    pub(crate) fn in_struct(base: u64, fields: GilFields) -> GilAddresses {
        GilAddresses {
            locked: base + fields.locked,
            last_holder: base + fields.last_holder,
            switch_number: base + fields.switch_number,
            interval: base + fields.interval,
            sync: vec![(base + fields.sync_start, base + fields.sync_end)],
            current: None,
            block: Some((base, fields)),
        }
    }

    /// A GIL of which only the holder can be read, from the interpreter's "current thread
    /// state" pointer at `current`: 2.7 (a bare semaphore), and 3.6 whose GIL variables were
    /// stripped from the symbol table.
    fn holder_only(current: u64) -> GilAddresses {
        GilAddresses {
            locked: 0,
            last_holder: 0,
            switch_number: 0,
            interval: 0,
            sync: Vec::new(),
            current: Some(current),
            block: None,
        }
    }

    /// Are the GIL's own fields (locked, last holder, switch counter, interval) known? Not
    /// for a [`GilAddresses::holder_only`] GIL, whose field addresses are 0.
    pub fn has_fields(&self) -> bool {
        self.block.is_some() || self.locked != 0
    }

    /// Is `addr` (a futex a thread sleeps on) one of the GIL's condition variables or mutexes?
    pub fn is_sync_address(&self, addr: u64) -> bool {
        self.sync
            .iter()
            .any(|(start, end)| (*start..*end).contains(&addr))
    }

    /// Where `cond`, `mutex`, `switch_cond` and `switch_mutex` start, in that order, where
    /// known: which one a thread sleeps on says where in the GIL it is.
    pub fn sync_objects(&self) -> Option<[u64; 4]> {
        match (self.block, self.sync.as_slice()) {
            (Some((base, fields)), _) => {
                let cond = base + fields.sync_start;
                let [c, m] = [COND_BYTES as u64, MUTEX_BYTES as u64];
                Some([cond, cond + c, cond + c + m, cond + 2 * c + m])
            }
            (None, [cond, mutex, switch_cond, switch_mutex]) => {
                Some([cond.0, mutex.0, switch_cond.0, switch_mutex.0])
            }
            _ => None,
        }
    }
}

/// Where the layout came from, for the report header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutSource {
    Table,
    DebugOffsets,
}

/// The CPython runtime as attach found it in a target: which binary, version and layout, and
/// where the interpreter list and the main GIL are, each checked against the live process.
/// It changes after attach only where the version was known from the library's name alone
/// ([`Description::refine_version`]). The per-tick reader ([`super::interpreter`]) takes it.
#[derive(Debug, Clone)]
pub struct Description {
    pub(crate) pid: i32,
    pub version: Version,
    /// The ELF file that holds the interpreter (libpython or the executable).
    pub binary: String,
    pub layout: Layout,
    pub layout_source: LayoutSource,
    /// Things that were not where the table said, and where they were found instead.
    pub notes: Vec<String>,
    /// Address of the pointer to the first interpreter (`interpreters.head`, `interp_head`).
    pub(crate) head: u64,
    /// Address of `_PyRuntime` (3.7+). Kept for the fuzzing snapshots (feature `dev`).
    #[cfg_attr(not(feature = "dev"), allow(dead_code))]
    pub(crate) runtime: Option<u64>,
    /// The main interpreter's GIL: the process's only one unless subinterpreters (3.12+)
    /// have their own, which the per-tick walk finds.
    pub(crate) gil: GilAddresses,
    /// Where to read the version again when it came from the library's name only (the
    /// process was caught before start-up wrote its version string): the .bss range.
    version_bss: Option<(u64, u64)>,
    /// Reads of `version_bss` so far: bounded, as a process that never writes its version
    /// string must not have its .bss scanned for ever.
    version_reads: u32,
}

/// Find and validate the interpreter in process `pid`.
pub(crate) fn discover(pid: i32, memory: &dyn Memory) -> Result<Description> {
    let mappings = maps::read_maps(pid).map_err(|e| match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied {
            pid,
            what: "read the memory map".into(),
        },
        _ => Error::NoSuchProcess { pid },
    })?;
    let binary = find_python_binary(pid, &mappings)?;
    // The lists are read while the target runs: a thread state freed in the middle of the
    // walk (a program starting hundreds of threads a second) makes one attempt fail where the
    // next succeeds. A layout that is really wrong fails every time. Each attempt reads the
    // version again: a process caught starting may not have written its version string yet
    // (and the library's name tells only "3.9").
    let mut attempts = 0;
    loop {
        let version =
            version::detect(&binary, memory).ok_or_else(|| Error::UnrecognisedLayout {
                version: "?".into(),
                what: format!("cannot tell the Python version of {}", binary.path),
            })?;
        check_supported(&version)?;
        let (layout, layout_source, runtime) = choose_layout(&binary, &version, memory)?;
        let mut description = Description {
            pid,
            binary: binary.path.clone(),
            version_bss: (!version.exact)
                .then(|| version::bss_range(&binary))
                .flatten(),
            ..Description::from_parts(
                version,
                layout,
                layout_source,
                0,
                runtime,
                GilAddresses::in_struct(0, layout::DEFAULT_GIL),
            )
        };
        match description.locate(&binary, runtime, memory) {
            Ok(()) => return Ok(description),
            Err(Error::UnrecognisedLayout { .. }) if attempts < ATTACH_ATTEMPTS => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Description {
    /// A description put together from parts found earlier, with no process behind it: for
    /// memory images (saved snapshots, fuzzing). [`discover`] is the way to a live one.
    pub(crate) fn from_parts(
        version: Version,
        layout: Layout,
        layout_source: LayoutSource,
        head: u64,
        runtime: Option<u64>,
        gil: GilAddresses,
    ) -> Description {
        Description {
            pid: 0,
            version,
            binary: String::new(),
            layout,
            layout_source,
            notes: Vec::new(),
            head,
            runtime,
            gil,
            version_bss: None,
            version_reads: 0,
        }
    }

    /// A version known only from the library's name ("3.9": the process was attached to
    /// before start-up wrote its version string, as when gilscope starts the program) is
    /// read again; true if it is now exact. Only the version shown changes: the layout was
    /// chosen by major.minor, which the name gives.
    pub(crate) fn refine_version(&mut self, memory: &dyn Memory) -> bool {
        if self.version.exact {
            return false;
        }
        let Some((start, size)) = self.version_bss else {
            return false;
        };
        self.version_reads += 1;
        if self.version_reads > MAX_VERSION_READS {
            self.version_bss = None;
            return false;
        }
        match version::version_in(memory, start, size) {
            Some(v) if (v.major, v.minor) == (self.version.major, self.version.minor) => {
                self.version = v;
                self.version_bss = None;
                true
            }
            _ => false,
        }
    }

    /// Can threads waiting for the GIL be told apart? They can where the GIL's condition
    /// variables and mutexes are known (a waiter sleeps on them) or a thread flags its own
    /// request; not on 2.7 (a bare semaphore, and waiters mostly spin) nor where a stripped
    /// 3.6 hides the GIL's variables. Reports then show every wait figure as unavailable.
    pub(crate) fn measures_wait(&self) -> bool {
        !self.gil.sync.is_empty() || self.layout.tstate_gil_requested.is_some()
    }

    /// Find `interpreters.head` and the GIL from `_PyRuntime` (3.7+), checking each against
    /// the memory and scanning for their shapes where the layout's offsets have drifted.
    pub(crate) fn locate_in_runtime(&mut self, runtime: u64, memory: &dyn Memory) -> Result<()> {
        self.head = runtime + self.layout.runtime_interpreters_head;
        if self.first_threads(memory).is_err() {
            let offset = self
                .scan_for_head(runtime, memory)
                .ok_or_else(|| self.not_ready_or_layout(memory, "the interpreter list"))?;
            self.notes.push(format!(
                "interpreters.head found at _PyRuntime+{offset} (table: +{})",
                self.layout.runtime_interpreters_head
            ));
            self.layout.runtime_interpreters_head = offset;
            self.head = runtime + offset;
        }
        self.gil = self.locate_gil(runtime, memory)?;
        self.gil.current = self.locate_current(runtime, memory);
        Ok(())
    }

    /// Find `interpreters.head` and the GIL, checking each against the live process.
    fn locate(
        &mut self,
        binary: &ElfFile,
        runtime: Option<u64>,
        memory: &dyn Memory,
    ) -> Result<()> {
        let version = self.version.to_string();
        let missing = |what: &str| Error::UnrecognisedLayout {
            version: version.clone(),
            what: format!("{what} not found in {}", binary.path),
        };
        match (self.layout.gil, runtime) {
            (GilPlacement::Globals | GilPlacement::HolderOnly, _) => {
                self.head = match binary.address_of("interp_head") {
                    Some(head) => head,
                    None => {
                        let head = interp_head_from_accessor(binary).ok_or_else(|| {
                            missing("interp_head (no symbol, and PyInterpreterState_Head is not the expected load)")
                        })?;
                        self.notes
                            .push("interp_head from the code of PyInterpreterState_Head".into());
                        head
                    }
                };
                let globals = match self.layout.gil {
                    GilPlacement::Globals => legacy_gil(binary),
                    _ => None,
                };
                self.gil = match globals {
                    Some(gil) => gil,
                    None => {
                        let current = binary
                            .address_of("_PyThreadState_Current")
                            .ok_or_else(|| missing("_PyThreadState_Current"))?;
                        if self.layout.gil == GilPlacement::Globals {
                            self.notes.push(
                                "GIL variables not in the symbol table (stripped): holder from \
                                 _PyThreadState_Current, waiting not measured"
                                    .into(),
                            );
                        }
                        GilAddresses::holder_only(current)
                    }
                };
                self.first_threads(memory)?;
                self.check_current(memory)?;
            }
            (_, Some(runtime)) => self.locate_in_runtime(runtime, memory)?,
            (_, None) => return Err(missing("_PyRuntime")),
        }
        Ok(())
    }

    /// A non-null `_PyThreadState_Current` must be a thread state of one of the interpreters
    /// found: a cross-check of the interpreter list head and of the symbol.
    fn check_current(&self, memory: &dyn Memory) -> Result<()> {
        let Some(current) = self.gil.current else {
            return Ok(());
        };
        let tstate = memory
            .read_u64(current)
            .map_err(|e| self.not_ready_or_layout(memory, &format!("current thread: {e}")))?;
        if tstate == 0 {
            return Ok(());
        }
        let interps = self.interpreters(memory).unwrap_or_default();
        let interp = check_pointer(tstate, 8)
            .and_then(|()| memory.read_u64(tstate + self.layout.tstate_interp));
        if interp.is_ok_and(|i| interps.contains(&i)) {
            return Ok(());
        }
        Err(Error::UnrecognisedLayout {
            version: self.version.to_string(),
            what: "the current thread state does not belong to the interpreter list".into(),
        })
    }

    /// 3.7-3.11: find `gilstate.tstate_current` and check it holds nothing but a thread
    /// state or null. Without it, holding falls back to the GIL's `last_holder`.
    fn locate_current(&mut self, runtime: u64, memory: &dyn Memory) -> Option<u64> {
        let layout::Current::RuntimeField(offset) = self.layout.current else {
            return None;
        };
        let tstates: HashSet<u64> = self.first_threads(memory).ok()?.into_iter().collect();
        let interp = memory.read_u64(self.head).ok()?;
        // A thread started since the list was read is current as rightly as a listed one:
        // any thread state of this interpreter will do.
        let is_tstate = |v: u64| {
            tstates.contains(&v)
                || (check_pointer(v, 8).is_ok()
                    && memory.read_u64(v + self.layout.tstate_interp) == Ok(interp))
        };
        let plausible = |addr: u64| memory.read_u64(addr).is_ok_and(|v| v == 0 || is_tstate(v));
        let gil_base = self.gil.block.map(|(base, _)| base)?;
        let after_gil = gil_base + layout::TSTATE_CURRENT_AFTER_GIL;
        if plausible(runtime + offset) {
            return Some(runtime + offset);
        }
        if plausible(after_gil) {
            self.notes.push(format!(
                "tstate_current found after the GIL at _PyRuntime+{}",
                after_gil - runtime
            ));
            return Some(after_gil);
        }
        self.notes
            .push("tstate_current not found; holder from last_holder".into());
        None
    }

    /// The thread states of the first interpreter, or why there are none to be had.
    fn first_threads(&self, memory: &dyn Memory) -> Result<Vec<u64>> {
        let interps = self
            .interpreters(memory)
            .map_err(|e| self.not_ready_or_layout(memory, &format!("interpreter list: {e}")))?;
        let Some(&interp) = interps.first() else {
            return Err(Error::NotReady {
                pid: self.pid,
                what: "no interpreter yet".into(),
            });
        };
        let tstates = self
            .thread_states(memory, interp)
            .map_err(|e| self.not_ready_or_layout(memory, &format!("thread list: {e}")))?;
        if tstates.is_empty() {
            return Err(Error::NotReady {
                pid: self.pid,
                what: "no Python thread yet".into(),
            });
        }
        Ok(tstates)
    }

    fn not_ready_or_layout(&self, memory: &dyn Memory, what: &str) -> Error {
        // An interpreter that has not finished starting has a null list head: not our bug.
        match memory.read_u64(self.head) {
            Ok(0) => Error::NotReady {
                pid: self.pid,
                what: "the interpreter has not started yet".into(),
            },
            Err(ReadError::Gone) => Error::NoSuchProcess { pid: self.pid },
            Err(ReadError::Denied) => Error::PermissionDenied {
                pid: self.pid,
                what: "read the memory".into(),
            },
            _ => Error::UnrecognisedLayout {
                version: self.version.to_string(),
                what: what.to_string(),
            },
        }
    }

    /// Look through `_PyRuntime` for a pointer to an interpreter whose first thread points
    /// back at it: the one shape `interpreters.head` must have.
    fn scan_for_head(&self, runtime: u64, memory: &dyn Memory) -> Option<u64> {
        let block = memory.read_bytes(runtime, SCAN_BYTES as usize).ok()?;
        (0..SCAN_BYTES).step_by(8).find(|&offset| {
            let Some(interp) = u64_at(&block, offset) else {
                return false;
            };
            if check_pointer(interp, 8).is_err() {
                return false;
            }
            let tstate = memory.read_u64(interp + self.layout.interp_threads_head);
            tstate.is_ok_and(|t| {
                check_pointer(t, 8).is_ok()
                    && memory.read_u64(t + self.layout.tstate_interp) == Ok(interp)
            })
        })
    }

    /// Find the main interpreter's GIL and check it has a GIL's shape.
    fn locate_gil(&mut self, runtime: u64, memory: &dyn Memory) -> Result<GilAddresses> {
        let fields = self.layout.gil_fields;
        let (region, expected) = match self.layout.gil {
            GilPlacement::InRuntime(offset) => (runtime, Some(runtime + offset)),
            GilPlacement::InterpreterPointer(offset) => {
                // New interpreters go to the head of the list: the main one is last.
                let interp = self
                    .interpreters(memory)
                    .ok()
                    .and_then(|i| i.last().copied())
                    .unwrap_or(0);
                let gil = memory.read_u64(interp.saturating_add(offset)).ok();
                (interp, gil)
            }
            GilPlacement::Globals | GilPlacement::HolderOnly => {
                return Err(Error::Internal(
                    "2.7 and 3.6 GILs are located by symbol".into(),
                ))
            }
        };
        // Where the layout says it is, the GIL's shape is enough: its last holder may be a
        // thread that has ended since (CPython does not clear it) or one not listed yet.
        if let Some(base) = expected.filter(|&b| looks_like_gil(memory, b, fields, None)) {
            return Ok(GilAddresses::in_struct(base, fields));
        }
        // The table's offset has drifted (a patch release moved a field): look for the shape,
        // with the last holder one of the threads, lest some other bytes pass for a GIL.
        let tstates: HashSet<u64> = self.first_threads(memory)?.into_iter().collect();
        let found = scan_for_gil(memory, region, fields, &tstates, &self.layout.gil);
        match found {
            Some((base, where_)) => {
                self.notes
                    .push(format!("GIL found by its shape at {where_}"));
                Ok(GilAddresses::in_struct(base, fields))
            }
            None => Err(Error::UnrecognisedLayout {
                version: self.version.to_string(),
                what: "the GIL state was not where this version keeps it".into(),
            }),
        }
    }

    /// Addresses of all interpreters, head first.
    pub(crate) fn interpreters(
        &self,
        memory: &dyn Memory,
    ) -> std::result::Result<Vec<u64>, ReadError> {
        let mut found = Vec::new();
        let mut next = memory.read_u64(self.head)?;
        while next != 0 && found.len() < MAX_INTERPRETERS {
            check_pointer(next, 8)?;
            if found.contains(&next) {
                break;
            }
            found.push(next);
            next = memory.read_u64(next + self.layout.interp_next)?;
        }
        Ok(found)
    }

    /// Addresses of one interpreter's thread states, following `next` with a bound.
    fn thread_states(
        &self,
        memory: &dyn Memory,
        interp: u64,
    ) -> std::result::Result<Vec<u64>, ReadError> {
        let mut found = Vec::new();
        let mut seen = HashSet::new();
        // `interp` and `next` of each thread state in one read (they are neighbours).
        let (at_interp, at_next) = (self.layout.tstate_interp, self.layout.tstate_next);
        let start = at_interp.min(at_next);
        let len = (at_interp.max(at_next) - start + 8) as usize;
        let mut next = memory.read_u64(interp + self.layout.interp_threads_head)?;
        while next != 0 && found.len() < MAX_THREADS {
            check_pointer(next, 8)?;
            if !seen.insert(next) {
                break;
            }
            let block = memory.read_bytes(next + start, len)?;
            let field = |at: u64| {
                u64_at(&block, at - start).ok_or(ReadError::BadPointer { addr: next + at })
            };
            if field(at_interp)? != interp {
                return Err(ReadError::BadPointer { addr: next });
            }
            found.push(next);
            next = field(at_next)?;
        }
        Ok(found)
    }
}

/// Does `base` hold a GIL (`_gil_runtime_state`)? Its flags and interval in range, a default
/// mutex, and a last holder that is null (only while unlocked) or, with `tstates`, one of
/// them; without, any pointer a thread state could have.
pub(crate) fn looks_like_gil(
    memory: &dyn Memory,
    base: u64,
    fields: GilFields,
    tstates: Option<&HashSet<u64>>,
) -> bool {
    if check_pointer(base, 8).is_err() {
        return false;
    }
    let Ok(block) = memory.read_bytes(base, fields.size() as usize) else {
        return false;
    };
    let locked = i32_at(&block, fields.locked);
    let holder = u64_at(&block, fields.last_holder);
    let interval = u64_at(&block, fields.interval);
    // pthread_mutex_t.__kind (offset 16) is 0 for the default mutexes CPython creates.
    let mutex_kind = i32_at(&block, fields.sync_start + 48 + 16);
    matches!(locked, Some(0) | Some(1))
        && interval.is_some_and(|i| INTERVAL_RANGE.contains(&i))
        && holder.is_some_and(|h| {
            (h == 0 && locked == Some(0))
                || tstates.map_or(check_pointer(h, 8).is_ok(), |t| t.contains(&h))
        })
        && mutex_kind == Some(0)
}

fn scan_for_gil(
    memory: &dyn Memory,
    region: u64,
    fields: GilFields,
    tstates: &HashSet<u64>,
    placement: &GilPlacement,
) -> Option<(u64, String)> {
    match placement {
        GilPlacement::InRuntime(_) => (0..SCAN_BYTES)
            .step_by(8)
            .map(|offset| region + offset)
            .find(|&base| looks_like_gil(memory, base, fields, Some(tstates)))
            .map(|base| (base, format!("_PyRuntime+{}", base - region))),
        GilPlacement::InterpreterPointer(_) => {
            let block = memory.read_bytes(region, SCAN_BYTES as usize).ok()?;
            (0..SCAN_BYTES).step_by(8).find_map(|offset| {
                let base = u64_at(&block, offset)?;
                looks_like_gil(memory, base, fields, Some(tstates))
                    .then(|| (base, format!("*(interp+{offset})")))
            })
        }
        GilPlacement::Globals | GilPlacement::HolderOnly => None,
    }
}

/// 3.6 keeps the GIL in separate static variables of ceval_gil.h.
fn legacy_gil(binary: &ElfFile) -> Option<GilAddresses> {
    let sync = ["gil_cond", "gil_mutex", "switch_cond", "switch_mutex"]
        .iter()
        .map(|name| {
            let start = binary.address_of(name)?;
            Some((start, start.checked_add(binary.symbol(name)?.size.max(1))?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(GilAddresses {
        locked: binary.address_of("gil_locked")?,
        last_holder: binary.address_of("gil_last_holder")?,
        switch_number: binary.address_of("gil_switch_number")?,
        interval: binary.address_of("gil_interval")?,
        sync,
        current: binary.address_of("_PyThreadState_Current"),
        block: None,
    })
}

/// `interp_head` is a local symbol, gone from a stripped library; the exported accessor
/// `PyInterpreterState_Head()` returns it. On x86-64 its whole body is one RIP-relative load,
/// `mov rax, [rip+disp32]; ret` (48 8b 05 disp32 c3), after an `endbr64` in CET builds.
/// Anything else (another compiler's code, another architecture) is not guessed at: None.
/// The address found must be an aligned pointer in the library's data; the live process
/// checks the rest (`first_threads`, `check_current`).
fn interp_head_from_accessor(binary: &ElfFile) -> Option<u64> {
    const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
    const LOAD_RAX: [u8; 3] = [0x48, 0x8b, 0x05];
    const RET: u8 = 0xc3;
    let symbol = binary.symbol("PyInterpreterState_Head")?;
    let mut at = symbol.value;
    let mut code = binary.bytes_at(at, 8)?;
    if code.starts_with(&ENDBR64) {
        at = at.checked_add(4)?;
        code = binary.bytes_at(at, 8)?;
    }
    let body_len = at - symbol.value + 8;
    if (symbol.size != 0 && symbol.size != body_len) || code[..3] != LOAD_RAX || code[7] != RET {
        return None;
    }
    let disp = i32::from_le_bytes([code[3], code[4], code[5], code[6]]);
    let head = at.checked_add(7)?.checked_add_signed(disp as i64)?;
    let section = binary.section_at(head)?;
    let in_data = matches!(section.name.as_str(), ".bss" | ".data");
    (in_data && head % 8 == 0).then(|| head.wrapping_add(binary.load_bias))
}

/// Symbols only a CPython interpreter defines.
const PYTHON_SYMBOLS: [&str; 4] = [
    "_PyRuntime",
    "Py_Version",
    "_PyThreadState_Current",
    "PyEval_SaveThread",
];

fn is_python(binary: &ElfFile) -> bool {
    PYTHON_SYMBOLS.iter().any(|s| binary.symbol(s).is_some())
}

/// The mapped ELF file that contains the interpreter: libpython if loaded, else the
/// executable, else any other mapped object that defines CPython's symbols.
fn find_python_binary(pid: i32, mappings: &[Mapping]) -> Result<ElfFile> {
    let files = elf::mapped_files(mappings);
    let exe = crate::target::process::executable(pid)
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .unwrap_or_default();
    let rank = |group: &Vec<&Mapping>| {
        let name = elf::file_name(&group[0].path);
        if name.starts_with("libpython") {
            0
        } else if group[0].path == exe {
            1
        } else if name.contains("python") {
            2
        } else {
            3
        }
    };
    let mut ranked: Vec<(u8, &Vec<&Mapping>)> = files.iter().map(|g| (rank(g), g)).collect();
    ranked.sort_by_key(|(r, _)| *r);
    let mut permission_error = None;
    // Why libpython or the program itself could not be opened, if it could not: a target
    // whose file was replaced (by a FIFO, say) is said to be unreadable, not "not Python".
    let mut unreadable = None;
    for (rank, group) in ranked {
        if rank == 3 && elf::file_name(&group[0].path).starts_with("ld-") {
            continue;
        }
        match ElfFile::open(pid, group) {
            Ok(binary) if is_python(&binary) => return Ok(binary),
            Ok(_) => {}
            Err(elf::ElfError::Open { source, .. })
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                permission_error = Some(source);
            }
            Err(e @ elf::ElfError::Open { .. }) if rank <= 1 => {
                unreadable.get_or_insert(e.to_string());
            }
            Err(_) => {}
        }
    }
    if permission_error.is_some() {
        return Err(Error::PermissionDenied {
            pid,
            what: "open the binaries".into(),
        });
    }
    Err(Error::NotPython {
        pid,
        exe: if exe.is_empty() { "?".into() } else { exe },
        unreadable,
    })
}

/// Versions older than the newest verified one must be verified ones; newer ones are tried
/// through their `_Py_DebugOffsets`, which are checked against the live process.
fn check_supported(version: &Version) -> Result<()> {
    let minor = (version.major, version.minor);
    let newest = version::VERIFIED[version::VERIFIED.len() - 1];
    if minor > newest || version::VERIFIED.contains(&minor) {
        return Ok(());
    }
    Err(Error::UnsupportedVersion {
        version: version.to_string(),
        why: format!("gilscope needs CPython {}", version::SUPPORTED),
    })
}

/// The layout to use, and `_PyRuntime`'s address where the version has one.
fn choose_layout(
    binary: &ElfFile,
    version: &Version,
    memory: &dyn Memory,
) -> Result<(Layout, LayoutSource, Option<u64>)> {
    let runtime = binary.address_of("_PyRuntime");
    if let Some(runtime) = runtime {
        if let Some(found) = debug_offsets::read(memory, runtime, version) {
            let layout = found.map_err(|what| Error::UnrecognisedLayout {
                version: version.to_string(),
                what,
            })?;
            return Ok((layout, LayoutSource::DebugOffsets, Some(runtime)));
        }
    }
    match layout::table_for(version) {
        Some(layout) => Ok((layout, LayoutSource::Table, runtime)),
        None => Err(Error::UnrecognisedLayout {
            version: version.to_string(),
            what: "no _Py_DebugOffsets and no table for this version".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::elf::ElfData;
    use crate::target::memory::MemoryImage;

    #[test]
    fn a_version_from_the_library_name_is_read_again_once_start_up_wrote_it() {
        const BSS: u64 = 0x7f00_0000;
        let named = Version {
            exact: false,
            ..Version::new(3, 9, 0)
        };
        let layout = layout::table_for(&named).unwrap();
        let mut description = Description::from_parts(
            named,
            layout,
            LayoutSource::Table,
            0x10_0000,
            None,
            GilAddresses::in_struct(0x30_0000, layout::DEFAULT_GIL),
        );
        description.version_bss = Some((BSS, 4096));
        let mut image = MemoryImage::new();
        // Start-up has not written the buffer yet: still "3.9".
        image.add(BSS, vec![0; 4096]);
        assert!(!description.refine_version(&image));
        assert_eq!(description.version.to_string(), "3.9");
        // Another library's version string is not taken for this one's.
        let mut other = vec![0u8; 4096];
        other[100..120].copy_from_slice(b"3.12.1 (main, Jan 1)");
        let mut image = MemoryImage::new();
        image.add(BSS, other);
        assert!(!description.refine_version(&image));
        let mut written = vec![0u8; 4096];
        written[64..84].copy_from_slice(b"3.9.18 (main, Jan 1)");
        let mut image = MemoryImage::new();
        image.add(BSS, written);
        assert!(description.refine_version(&image));
        assert_eq!(description.version.to_string(), "3.9.18");
        // An exact version is left alone.
        assert!(!description.refine_version(&image));
    }

    /// pyenv's libraries keep `interp_head` in `.symtab`: the accessor's code must lead to
    /// the same address. Skipped where pyenv has no such build.
    #[test]
    fn the_accessor_code_leads_to_interp_head() {
        let root = std::env::var_os("PYENV_ROOT")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pyenv")));
        let Some(versions) = root.map(|r| r.join("versions")) else {
            return;
        };
        let libraries = [
            "2.7.18/lib/libpython2.7.so.1.0",
            "3.6.15/lib/libpython3.6m.so.1.0",
        ];
        for library in libraries {
            let Ok(bytes) = std::fs::read(versions.join(library)) else {
                eprintln!("skipped: no {library}");
                continue;
            };
            let mapping = Mapping {
                start: 0x7f00_0000_0000,
                end: 0x7f00_0010_0000,
                readable: true,
                writable: false,
                executable: false,
                offset: 0,
                inode: 1,
                path: library.into(),
                deleted: false,
            };
            let binary =
                ElfFile::parse(library.into(), ElfData::Owned(bytes), &[&mapping]).unwrap();
            let symbol = binary.address_of("interp_head").unwrap();
            assert_eq!(
                interp_head_from_accessor(&binary),
                Some(symbol),
                "{library}"
            );
        }
    }
}
