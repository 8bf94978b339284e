//! The CPython runtime inside the target: which binary, which version and layout, and where
//! the interpreters, thread states and GIL are. It reads and validates; it does not classify.

use std::collections::HashSet;

use super::debug_offsets;
use super::layout::{self, GilFields, GilPlacement, Layout};
use super::version::{self, Version};
use crate::error::{Error, Result};
use crate::target::elf::{self, ElfFile};
use crate::target::maps::{self, Mapping};
use crate::target::memory::{check_pointer, i32_at, u32_at, u64_at, Memory, ReadError};
use crate::target::namespace::ThreadIds;
use crate::target::pthread::PthreadTids;
use crate::target::pthread_sync::{GilSync, COND_BYTES, MUTEX_BYTES};

/// Bounds on what a walk will follow: a target's lists are only trusted this far.
pub const MAX_INTERPRETERS: usize = 256;
pub const MAX_THREADS: usize = 16_384;
/// Extra walks to settle which GIL a new subinterpreter uses (see `regroups_left`).
const MAX_REGROUPS: u32 = 64;
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
    fn in_struct(base: u64, fields: GilFields) -> GilAddresses {
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
    pub fn holder_only(current: u64) -> GilAddresses {
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

/// A GIL and the interpreters that use it. 3.12+ lets a subinterpreter have a GIL of its own
/// (`gil='own'`) or share the main interpreter's; before 3.12 there is one GIL per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GilGroup {
    pub addresses: GilAddresses,
    /// Its interpreters: (`PyInterpreterState` address, `interp->id` where readable), in list
    /// order (newest first).
    pub interps: Vec<(u64, Option<i64>)>,
}

impl GilGroup {
    /// Where the struct starts (the GIL's identity).
    pub fn base(&self) -> u64 {
        self.addresses
            .block
            .map_or(self.addresses.locked, |(base, _)| base)
    }
}

/// What one tick reads of the runtime: every GIL and every Python thread state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeState {
    /// The main interpreter's GIL (the process's only one unless subinterpreters have their
    /// own).
    pub gil: GilState,
    /// The other GILs, in the order of [`Interpreter::other_gils`].
    pub others: Vec<GilState>,
    pub threads: Vec<PyThread>,
    /// Each GIL's mutexes and condition variables, the main one first then `others`, raw
    /// (glibc's layout: [`GilSync`]); None where they could not be read.
    pub syncs: Vec<Option<GilSync>>,
}

/// The GIL at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GilState {
    /// The GIL exists (3.6 creates it only when a second thread starts).
    pub created: bool,
    pub locked: bool,
    /// The `PyThreadState*` of the holder while locked (0 otherwise).
    pub holder: u64,
    /// Count of GIL hand-overs to a different thread since start-up.
    pub switch_number: u64,
    /// The switch interval in µs (`sys.getswitchinterval()`).
    pub interval_us: u64,
    /// The thread state CPython calls current (3.6-3.11): the thread running Python.
    pub current: Option<u64>,
    /// Free-threaded builds: is the GIL on (`enabled` != 0)? None on other builds, where
    /// it always is. It can change at run time (an extension without free-threading support
    /// turns it on).
    pub enabled: Option<bool>,
}

impl GilState {
    /// No GIL at this instant (a free-threaded build running without one): threads are
    /// attached or detached, nobody holds or waits.
    pub fn off(&self) -> bool {
        self.enabled == Some(false)
    }
}

/// One Python thread state at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PyThread {
    /// Address of the `PyThreadState`.
    pub tstate: u64,
    /// Address of its `PyInterpreterState`.
    pub interp: u64,
    /// `threading.get_ident()`: the `pthread_t`.
    pub thread_id: u64,
    /// The kernel tid, once known.
    pub native_id: Option<i32>,
    /// The thread's own "I hold the GIL" flag (3.13+).
    pub holds_gil: Option<bool>,
    /// The thread's own "I am waiting for the GIL" flag (3.15+).
    pub gil_requested: Option<bool>,
    /// The thread's own "I am running Python" flag (`_status.active`, 3.12+).
    pub active: Option<bool>,
    /// `tstate->state` on free-threaded builds: attached, detached or suspended.
    pub attach_state: Option<u32>,
    /// Which GIL its interpreter uses: 0 the main one, `i` the `i-1`th of
    /// [`Interpreter::other_gils`].
    pub gil: usize,
}

/// Where the layout came from, for the report header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutSource {
    Table,
    DebugOffsets,
}

/// A CPython interpreter found in a target process, ready to be sampled.
pub struct Interpreter {
    pub pid: i32,
    pub version: Version,
    /// The ELF file that holds the interpreter (libpython or the executable).
    pub binary: String,
    pub layout: Layout,
    pub layout_source: LayoutSource,
    /// Things that were not where the table said, and where they were found instead.
    pub notes: Vec<String>,
    /// Where to read the version again when it came from the library's name only (the
    /// process was caught before start-up wrote its version string): the .bss range.
    version_bss: Option<(u64, u64)>,
    /// Reads of `version_bss` so far: bounded, as a process that never writes its version
    /// string must not have its .bss scanned for ever.
    version_reads: u32,
    /// Address of the pointer to the first interpreter (`interpreters.head`, `interp_head`).
    head: u64,
    /// Address of `_PyRuntime` (3.7+).
    runtime: Option<u64>,
    gil: GilAddresses,
    /// The interpreters that use the main GIL, as the last walk found them.
    main_interps: Vec<(u64, Option<i64>)>,
    /// GILs of subinterpreters that have their own, as the last walk found them.
    others: Vec<GilGroup>,
    /// (interpreter, GIL) pairs already checked to have a GIL's shape: a walk reads each
    /// interpreter's GIL pointer again (an interpreter freed and another made at its address
    /// may point elsewhere) but checks the shape only of a pair it has not seen.
    checked_gils: Vec<(u64, u64)>,
    /// Walks left that may be forced to group an interpreter whose GIL pointer did not yet
    /// lead to a GIL (one being created): bounded, so garbage cannot force a walk per tick.
    regroups_left: u32,
    /// The next tick walks the lists even if they look unchanged.
    regroup: bool,
    pthreads: PthreadTids,
    /// The interpreters and their thread states as the last walk found them, to read again
    /// in one batch (most ticks find the lists as they were).
    shape: Vec<(u64, Vec<u64>)>,
    /// The batch's buffer, kept between ticks.
    batch: Vec<u8>,
    /// The last [`Interpreter::read_state`] found the lists as the one before had left them.
    lists_unchanged: bool,
    /// Walks of the lists so far: it changes when threads come or go.
    walks: u64,
}

impl Interpreter {
    /// Find and validate the interpreter in process `pid`.
    pub fn attach(pid: i32, memory: &dyn Memory) -> Result<Interpreter> {
        let mappings = maps::read_maps(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied {
                pid,
                what: "read the memory map".into(),
            },
            _ => Error::NoSuchProcess { pid },
        })?;
        let binary = find_python_binary(pid, &mappings)?;
        // The lists are read while the target runs: a thread state freed in the middle of
        // the walk (a program starting hundreds of threads a second) makes one attempt fail
        // where the next succeeds. A layout that is really wrong fails every time. Each
        // attempt reads the version again: a process caught starting may not have written
        // its version string yet (and the library's name tells only "3.9").
        let mut attempts = 0;
        loop {
            let version =
                version::detect(&binary, memory).ok_or_else(|| Error::UnrecognisedLayout {
                    version: "?".into(),
                    what: format!("cannot tell the Python version of {}", binary.path),
                })?;
            check_supported(&version)?;
            let (layout, layout_source, runtime) = choose_layout(&binary, &version, memory)?;
            let mut interpreter = Interpreter {
                pid,
                binary: binary.path.clone(),
                version_bss: (!version.exact)
                    .then(|| version::bss_range(&binary))
                    .flatten(),
                ..Interpreter::from_parts(
                    version,
                    layout,
                    layout_source,
                    0,
                    runtime,
                    GilAddresses::in_struct(0, layout::DEFAULT_GIL),
                )
            };
            match interpreter.locate(&binary, runtime, memory) {
                Ok(()) => return Ok(interpreter),
                Err(Error::UnrecognisedLayout { .. }) if attempts < ATTACH_ATTEMPTS => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A version known only from the library's name ("3.9": the process was attached to
    /// before start-up wrote its version string, as when gilscope starts the program) is
    /// read again; true if it is now exact. Only the version shown changes: the layout was
    /// chosen by major.minor, which the name gives.
    pub fn refine_version(&mut self, memory: &dyn Memory) -> bool {
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

    /// An interpreter put together from parts found earlier, with no process behind it: for
    /// memory images (saved snapshots, fuzzing). `attach` is the way to a live one.
    pub fn from_parts(
        version: Version,
        layout: Layout,
        layout_source: LayoutSource,
        head: u64,
        runtime: Option<u64>,
        gil: GilAddresses,
    ) -> Interpreter {
        Interpreter {
            pid: 0,
            version,
            binary: String::new(),
            layout,
            layout_source,
            notes: Vec::new(),
            version_bss: None,
            version_reads: 0,
            head,
            runtime,
            gil,
            main_interps: Vec::new(),
            others: Vec::new(),
            checked_gils: Vec::new(),
            regroups_left: MAX_REGROUPS,
            regroup: false,
            pthreads: PthreadTids::new(),
            shape: Vec::new(),
            batch: Vec::new(),
            lists_unchanged: false,
            walks: 0,
        }
    }

    /// The GIL's field addresses (for classifying futex waits).
    pub fn gil(&self) -> &GilAddresses {
        &self.gil
    }

    /// The addresses of GIL `index` as [`PyThread::gil`] numbers them (0: the main one).
    pub fn gil_at(&self, index: usize) -> &GilAddresses {
        match index.checked_sub(1).and_then(|i| self.others.get(i)) {
            Some(group) => &group.addresses,
            None => &self.gil,
        }
    }

    /// The interpreters that use the main GIL, as the last walk of the lists found them.
    pub fn main_interpreters(&self) -> &[(u64, Option<i64>)] {
        &self.main_interps
    }

    /// The GILs of subinterpreters that have their own (3.12+), as the last walk of the
    /// lists found them; empty in a process with one GIL.
    pub fn other_gils(&self) -> &[GilGroup] {
        &self.others
    }

    /// Address of the pointer to the first interpreter.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Can threads waiting for the GIL be told apart? They can where the GIL's condition
    /// variables and mutexes are known (a waiter sleeps on them) or a thread flags its own
    /// request; not on 2.7 (a bare semaphore, and waiters mostly spin) nor where a stripped
    /// 3.6 hides the GIL's variables. Reports then show every wait figure as unavailable.
    pub fn measures_wait(&self) -> bool {
        !self.gil.sync.is_empty() || self.layout.tstate_gil_requested.is_some()
    }

    /// Address of `_PyRuntime`, on versions that have one.
    pub fn runtime(&self) -> Option<u64> {
        self.runtime
    }

    /// Find `interpreters.head` and the GIL from `_PyRuntime` (3.7+), checking each against
    /// the memory and scanning for their shapes where the layout's offsets have drifted.
    pub fn locate_in_runtime(&mut self, runtime: u64, memory: &dyn Memory) -> Result<()> {
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
    pub fn interpreters(&self, memory: &dyn Memory) -> std::result::Result<Vec<u64>, ReadError> {
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

    /// Every Python thread of every interpreter, with kernel tids where they can be found.
    /// `live_tids` (sorted) are the process's tasks now; threads not among them are left out.
    pub fn threads(
        &mut self,
        memory: &dyn Memory,
        live_tids: &[i32],
    ) -> std::result::Result<Vec<PyThread>, ReadError> {
        let state = self.read_state(memory)?;
        Ok(self.resolve_threads(memory, state.threads, live_tids, &ThreadIds::Same))
    }

    /// The GIL and every Python thread state, read together: in one batch when the lists are
    /// as the last read left them (the usual tick), else the GIL and then a walk. Kernel tids
    /// are those the thread states hold: [`Self::resolve_threads`] completes them.
    pub fn read_state(
        &mut self,
        memory: &dyn Memory,
    ) -> std::result::Result<RuntimeState, ReadError> {
        if let Some(state) = self.state_as_before(memory) {
            self.lists_unchanged = true;
            return Ok(state);
        }
        self.lists_unchanged = false;
        let (gil, sync) = read_gil_and_sync(memory, &self.gil)?;
        let threads = self.walk_threads(memory)?;
        let mut syncs = vec![sync];
        let others = self
            .others
            .iter()
            .map(|group| {
                let (gil, sync) = read_gil_and_sync(memory, &group.addresses)?;
                syncs.push(sync);
                Ok(gil)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(RuntimeState {
            gil,
            others,
            threads,
            syncs,
        })
    }

    /// Did the last [`Self::read_state`] find every interpreter and thread state where the
    /// one before it had (no Python thread started or ended in between)?
    pub fn lists_unchanged(&self) -> bool {
        self.lists_unchanged
    }

    /// A number that changes whenever the lists had to be walked again (threads came or
    /// went, or a batch could not be trusted): callers cache by it.
    pub fn lists_generation(&self) -> u64 {
        self.walks
    }

    /// Give threads read by [`Self::read_state`] their kernel tids (3.6-3.10 keep only the
    /// `pthread_t`), and keep those among `live_tids` (sorted): the process's tasks now, as
    /// our /proc numbers them. The interpreter stores the ids its threads know themselves by:
    /// in a container, those of its own PID namespace, which `ids` translates into ours.
    pub fn resolve_threads(
        &mut self,
        memory: &dyn Memory,
        mut threads: Vec<PyThread>,
        live_tids: &[i32],
        ids: &ThreadIds,
    ) -> Vec<PyThread> {
        if self.layout.tstate_native_thread_id.is_none() {
            let own_live = ids.own_ids(live_tids);
            let pthreads: Vec<u64> = threads.iter().map(|t| t.thread_id).collect();
            let tids = self.pthreads.resolve(memory, &pthreads, &own_live);
            for (thread, tid) in threads.iter_mut().zip(tids) {
                thread.native_id = tid;
            }
        }
        if ids.nested() {
            for thread in threads.iter_mut() {
                thread.native_id = thread.native_id.and_then(|own| ids.our_id(own));
            }
        }
        threads.retain(|t| {
            t.native_id
                .is_some_and(|tid| live_tids.binary_search(&tid).is_ok())
        });
        threads
    }

    /// Walk the lists pointer by pointer, and remember their shape for the next tick.
    fn walk_threads(
        &mut self,
        memory: &dyn Memory,
    ) -> std::result::Result<Vec<PyThread>, ReadError> {
        let read_size = self.layout.tstate_read_size() as usize;
        let mut threads = Vec::new();
        let mut shape = Vec::new();
        let mut seen = HashSet::new();
        let interps = self.interpreters(memory)?;
        self.group_by_gil(memory, &interps);
        for interp in interps {
            let gil = self.gil_index(interp);
            let mut chain = Vec::new();
            let mut next = memory.read_u64(interp + self.layout.interp_threads_head)?;
            while next != 0 && threads.len() < MAX_THREADS {
                check_pointer(next, 8)?;
                if !seen.insert(next) {
                    break;
                }
                let block = memory.read_bytes(next, read_size)?;
                let thread = self.thread_from_block(next, interp, gil, &block)?;
                chain.push(next);
                threads.push(thread);
                next = u64_at(&block, self.layout.tstate_next).unwrap_or(0);
            }
            shape.push((interp, chain));
        }
        self.shape = shape;
        self.walks += 1;
        Ok(threads)
    }

    /// Which GIL each interpreter uses: follow `*(interp + ceval.gil)` (3.12+) and group the
    /// interpreters by it. One interpreter (the usual process) uses the main GIL: nothing to
    /// read. A pointer that does not lead to a GIL's shape (an interpreter being created or
    /// destroyed) leaves its interpreter on the main GIL until the next walk.
    fn group_by_gil(&mut self, memory: &dyn Memory, interps: &[u64]) {
        self.others.clear();
        let GilPlacement::InterpreterPointer(offset) = self.layout.gil else {
            self.main_interps = interps.iter().map(|&i| (i, None)).collect();
            return;
        };
        if interps.len() <= 1 {
            // The main interpreter is always id 0.
            self.main_interps = interps.iter().map(|&i| (i, Some(0))).collect();
            return;
        }
        let main_base = self.gil.block.map_or(0, |(base, _)| base);
        let fields = self.layout.gil_fields;
        let id_offset = self.layout.interp_id;
        let mut main = Vec::new();
        let mut checked = Vec::with_capacity(interps.len());
        for &interp in interps {
            let id = id_offset.and_then(|o| {
                let id = memory.read_u64(interp.checked_add(o)?).ok()? as i64;
                (id >= 0).then_some(id)
            });
            let base = interp
                .checked_add(offset)
                .and_then(|at| memory.read_u64(at).ok())
                .unwrap_or(0);
            let known = self.checked_gils.contains(&(interp, base));
            let own = base != main_base
                && base != 0
                && (known || looks_like_gil(memory, base, fields, None));
            if !own {
                if base != main_base && self.regroups_left > 0 {
                    self.regroups_left -= 1;
                    self.regroup = true;
                }
                main.push((interp, id));
                continue;
            }
            checked.push((interp, base));
            match self.others.iter_mut().find(|g| g.base() == base) {
                Some(group) => group.interps.push((interp, id)),
                None => self.others.push(GilGroup {
                    addresses: GilAddresses::in_struct(base, fields),
                    interps: vec![(interp, id)],
                }),
            }
        }
        self.main_interps = main;
        // Only the interpreters alive now: bounded by the list's own bound.
        self.checked_gils = checked;
    }

    /// The GIL number ([`PyThread::gil`]) of interpreter `interp`.
    fn gil_index(&self, interp: u64) -> usize {
        self.others
            .iter()
            .position(|g| g.interps.iter().any(|&(i, _)| i == interp))
            .map_or(0, |i| i + 1)
    }

    /// Read the interpreters and thread states where the last walk found them, in one batch,
    /// and keep the result only if every link still points where it did: the head at the
    /// first interpreter, each interpreter at the next and at its first thread state, each
    /// thread state at its interpreter and the next. Any change (a thread started or ended)
    /// and the caller walks again.
    fn state_as_before(&mut self, memory: &dyn Memory) -> Option<RuntimeState> {
        if self.shape.is_empty() || std::mem::take(&mut self.regroup) {
            return None;
        }
        let read_size = self.layout.tstate_read_size() as usize;
        // The GIL goes in the batch where it is one block that holds everything read_gil needs.
        let gil_span = gil_span(&self.gil).filter(|&(base, len)| {
            self.gil
                .current
                .is_none_or(|c| c >= base && c + 8 <= base + len as u64)
        });
        // Other GILs (own-GIL subinterpreters, 3.12+) keep no current-thread pointer: their
        // struct is all there is to read.
        let other_spans = self
            .others
            .iter()
            .map(|g| self::gil_span(&g.addresses))
            .collect::<Option<Vec<_>>>()?;
        let mut blocks = Vec::with_capacity(
            self.shape.iter().map(|(_, c)| c.len() + 2).sum::<usize>() + 2 + other_spans.len(),
        );
        blocks.extend(gil_span);
        blocks.extend(other_spans.iter().copied());
        blocks.push((self.head, 8));
        for (interp, chain) in &self.shape {
            blocks.push((interp + self.layout.interp_next, 8));
            blocks.push((interp + self.layout.interp_threads_head, 8));
            blocks.extend(chain.iter().map(|&tstate| (tstate, read_size)));
        }
        let gil = match gil_span {
            Some(_) => None,
            None => Some(read_gil_and_sync(memory, &self.gil).ok()?),
        };
        let mut batch = std::mem::take(&mut self.batch);
        let read = memory.read_many(&blocks, &mut batch).ok();
        let state = read.and_then(|()| {
            let ((gil, sync), mut rest) = match (gil, gil_span) {
                (Some(read), _) => (read, &batch[..]),
                (None, Some((_, len))) => {
                    let block = batch.get(..len)?;
                    let read = (
                        gil_from_block(block, &self.gil).ok()?,
                        sync_from_block(block, &self.gil),
                    );
                    (read, batch.get(len..)?)
                }
                (None, None) => return None,
            };
            let mut others = Vec::with_capacity(self.others.len());
            let mut syncs = Vec::with_capacity(self.others.len() + 1);
            syncs.push(sync);
            for (group, &(_, len)) in self.others.iter().zip(&other_spans) {
                let block = rest.get(..len)?;
                others.push(gil_from_block(block, &group.addresses).ok()?);
                syncs.push(sync_from_block(block, &group.addresses));
                rest = rest.get(len..)?;
            }
            Some(RuntimeState {
                gil,
                others,
                threads: self.parse_batch(rest, read_size)?,
                syncs,
            })
        });
        self.batch = batch;
        state
    }

    fn parse_batch(&self, batch: &[u8], read_size: usize) -> Option<Vec<PyThread>> {
        let mut at = 0usize;
        let mut word = || {
            let value = u64_at(batch, at as u64);
            at += 8;
            value
        };
        if word()? != self.shape[0].0 {
            return None;
        }
        let mut threads = Vec::new();
        for (i, (interp, chain)) in self.shape.iter().enumerate() {
            let next_interp = self.shape.get(i + 1).map_or(0, |(next, _)| *next);
            let mut word = || {
                let value = u64_at(batch, at as u64);
                at += 8;
                value
            };
            if word()? != next_interp || word()? != chain.first().copied().unwrap_or(0) {
                return None;
            }
            let gil = if self.others.is_empty() {
                0
            } else {
                self.gil_index(*interp)
            };
            for (j, &tstate) in chain.iter().enumerate() {
                let block = batch.get(at..at + read_size)?;
                at += read_size;
                let next = chain.get(j + 1).copied().unwrap_or(0);
                if u64_at(block, self.layout.tstate_next)? != next {
                    return None;
                }
                threads.push(self.thread_from_block(tstate, *interp, gil, block).ok()?);
            }
        }
        Some(threads)
    }

    /// One thread state from its block, which must name `interp` as its interpreter.
    fn thread_from_block(
        &self,
        tstate: u64,
        interp: u64,
        gil: usize,
        block: &[u8],
    ) -> std::result::Result<PyThread, ReadError> {
        let field = |offset| u64_at(block, offset).unwrap_or(0);
        if field(self.layout.tstate_interp) != interp {
            // The list changed under us (a thread is being created or deleted).
            return Err(ReadError::BadPointer { addr: tstate });
        }
        let flag =
            |f: Option<layout::Flag>| f.and_then(|f| u32_at(block, f.offset).map(|w| f.is_set(w)));
        Ok(PyThread {
            tstate,
            interp,
            thread_id: field(self.layout.tstate_thread_id),
            native_id: self
                .layout
                .tstate_native_thread_id
                .and_then(|o| i32_at(block, o))
                .filter(|&tid| tid > 0),
            holds_gil: flag(self.layout.tstate_holds_gil),
            gil_requested: flag(self.layout.tstate_gil_requested),
            active: match self.layout.current {
                layout::Current::ThreadFlag(f) => flag(Some(f)),
                _ => None,
            },
            attach_state: self
                .layout
                .tstate_attach_state
                .and_then(|o| u32_at(block, o)),
            gil,
        })
    }

    /// The GIL now.
    pub fn gil_state(&self, memory: &dyn Memory) -> std::result::Result<GilState, ReadError> {
        read_gil(memory, &self.gil)
    }
}

/// Where a GIL kept in one struct lies, `(base, length)`, its mutexes and condition variables
/// included, with the current-thread pointer that sits just after it on 3.7-3.11 when it is
/// near enough to come in the same read.
fn gil_span(gil: &GilAddresses) -> Option<(u64, usize)> {
    let (base, fields) = gil.block?;
    let mut len = fields.size();
    if let Some(current) = gil.current.filter(|&c| near_gil(base, c)) {
        len = len.max(current - base + 8);
    }
    Some((base, len as usize))
}

fn near_gil(base: u64, addr: u64) -> bool {
    addr >= base && addr - base < 4096
}

/// Read a GIL from its addresses: one read when it is a struct, field by field on 3.6.
pub fn read_gil(
    memory: &dyn Memory,
    gil: &GilAddresses,
) -> std::result::Result<GilState, ReadError> {
    match read_gil_block(memory, gil)? {
        Some((state, _)) => Ok(state),
        None => read_gil_fields(memory, gil),
    }
}

/// [`read_gil`], with the GIL's mutexes and condition variables (in the same read where the
/// GIL is one struct; in one more on 3.6, whose are separate variables).
fn read_gil_and_sync(
    memory: &dyn Memory,
    gil: &GilAddresses,
) -> std::result::Result<(GilState, Option<GilSync>), ReadError> {
    match read_gil_block(memory, gil)? {
        Some(read) => Ok(read),
        None => Ok((read_gil_fields(memory, gil)?, separate_sync(memory, gil))),
    }
}

/// A GIL that is one struct, read in one go (None for a GIL of separate variables).
fn read_gil_block(
    memory: &dyn Memory,
    gil: &GilAddresses,
) -> std::result::Result<Option<(GilState, Option<GilSync>)>, ReadError> {
    let (Some((base, len)), Some((_, fields))) = (gil_span(gil), gil.block) else {
        return Ok(None);
    };
    let block = memory.read_bytes(base, len)?;
    let sync = sync_from_block(&block, gil);
    let state = match gil_from_block(&block, gil) {
        Ok(state) => state,
        Err(far_current) => {
            let current = memory.read_u64(far_current)?;
            block_state(&block, fields, Some(current))
        }
    };
    Ok(Some((state, sync)))
}

/// The GIL's four objects where they are separate variables of their own sizes (3.6).
fn separate_sync(memory: &dyn Memory, gil: &GilAddresses) -> Option<GilSync> {
    let [cond, mutex, switch_cond, switch_mutex] = gil.sync.as_slice() else {
        return None;
    };
    let sizes = [COND_BYTES, MUTEX_BYTES, COND_BYTES, MUTEX_BYTES];
    let ranges = [*cond, *mutex, *switch_cond, *switch_mutex];
    if ranges
        .iter()
        .zip(sizes)
        .any(|(&(start, end), size)| end.saturating_sub(start) != size as u64)
    {
        return None;
    }
    let blocks: Vec<(u64, usize)> = ranges.iter().zip(sizes).map(|(r, n)| (r.0, n)).collect();
    let mut bytes = Vec::new();
    memory.read_many(&blocks, &mut bytes).ok()?;
    GilSync::from_bytes(&bytes)
}

/// The GIL's mutexes and condition variables from its struct read in one block at
/// [`gil_span`].
fn sync_from_block(block: &[u8], gil: &GilAddresses) -> Option<GilSync> {
    let (_, fields) = gil.block?;
    let at = fields.sync_start as usize;
    GilSync::from_bytes(block.get(at..at.checked_add(GilSync::BYTES)?)?)
}

/// A GIL read field by field (3.6, and a GIL of which only the holder is known).
fn read_gil_fields(
    memory: &dyn Memory,
    gil: &GilAddresses,
) -> std::result::Result<GilState, ReadError> {
    if !gil.has_fields() {
        let current = match gil.current {
            Some(c) => memory.read_u64(c)?,
            None => 0,
        };
        return Ok(GilState {
            created: false,
            locked: current != 0,
            holder: current,
            switch_number: 0,
            interval_us: 0,
            current: Some(current),
            enabled: None,
        });
    }
    Ok(gil_state(
        memory.read_i32(gil.locked)?,
        memory.read_u64(gil.last_holder)?,
        memory.read_u64(gil.switch_number)?,
        memory.read_u64(gil.interval)?,
        match gil.current {
            Some(c) => Some(memory.read_u64(c)?),
            None => None,
        },
        None,
    ))
}

/// The GIL from its struct read in one block at [`gil_span`]. Err(address) if the current
/// thread pointer is elsewhere and must be read on its own.
fn gil_from_block(block: &[u8], gil: &GilAddresses) -> std::result::Result<GilState, u64> {
    let Some((base, fields)) = gil.block else {
        return Err(gil.locked);
    };
    let current = match gil.current {
        Some(c) if near_gil(base, c) => u64_at(block, c - base),
        Some(c) => return Err(c),
        None => None,
    };
    Ok(block_state(block, fields, current))
}

fn block_state(block: &[u8], fields: GilFields, current: Option<u64>) -> GilState {
    gil_state(
        i32_at(block, fields.locked).unwrap_or(0),
        u64_at(block, fields.last_holder).unwrap_or(0),
        u64_at(block, fields.switch_number).unwrap_or(0),
        u64_at(block, fields.interval).unwrap_or(0),
        current,
        fields.enabled.map(|e| i32_at(block, e).unwrap_or(0) != 0),
    )
}

fn gil_state(
    locked: i32,
    holder: u64,
    switch_number: u64,
    interval: u64,
    current: Option<u64>,
    enabled: Option<bool>,
) -> GilState {
    if locked < 0 {
        // 3.6 before a second thread starts: no GIL; the running thread is the current one.
        let current = current.unwrap_or(0);
        return GilState {
            created: false,
            locked: current != 0,
            holder: current,
            switch_number,
            interval_us: interval,
            current: Some(current),
            enabled,
        };
    }
    let locked = locked == 1;
    GilState {
        created: true,
        locked,
        holder: if locked { holder } else { 0 },
        switch_number,
        interval_us: interval,
        current,
        enabled,
    }
}

/// Does `base` hold a `_gil_runtime_state`? locked is 0 or 1, the interval is plausible, the
/// last holder is one of the thread states (or none yet), and the mutex is a default mutex.
/// Does `base` hold a GIL? Its flags and interval in range, a default mutex, and a last
/// holder that is null (only while unlocked) or, with `tstates`, one of them; without, any
/// pointer a thread state could have.
fn looks_like_gil(
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
    use crate::target::memory::MemoryImage;
    use std::cell::Cell;

    /// An image that counts how it is read.
    struct Counted {
        image: MemoryImage,
        single: Cell<u32>,
        batches: Cell<u32>,
    }

    impl Memory for Counted {
        fn read_exact(&self, addr: u64, buf: &mut [u8]) -> std::result::Result<(), ReadError> {
            self.single.set(self.single.get() + 1);
            self.image.read_exact(addr, buf)
        }

        fn read_many(
            &self,
            blocks: &[(u64, usize)],
            out: &mut Vec<u8>,
        ) -> std::result::Result<(), ReadError> {
            self.batches.set(self.batches.get() + 1);
            self.image.read_many(blocks, out)
        }
    }

    const HEAD: u64 = 0x10_0000;
    const INTERP: u64 = 0x20_0000;
    const GIL: u64 = 0x30_0000;

    /// One interpreter whose threads are (tstate address, native tid), in list order.
    fn process(layout: &Layout, threads: &[(u64, i32)]) -> Counted {
        let mut image = MemoryImage::new();
        image.add(HEAD, INTERP.to_le_bytes().to_vec());
        // The GIL, locked by the first thread after 7 switches.
        image.add(GIL, gil_block(threads.first().map_or(0, |t| t.0), 7));
        let mut interp = vec![0u8; 4096];
        let first = threads.first().map_or(0, |t| t.0);
        let at = layout.interp_threads_head as usize;
        interp[at..at + 8].copy_from_slice(&first.to_le_bytes());
        image.add(INTERP, interp);
        for (i, &(tstate, tid)) in threads.iter().enumerate() {
            let next = threads.get(i + 1).map_or(0, |t| t.0);
            image.add(tstate, tstate_block(layout, INTERP, next, tid));
        }
        Counted {
            image,
            single: Cell::new(0),
            batches: Cell::new(0),
        }
    }

    /// A locked GIL held by `holder` after `switches` hand-overs.
    fn gil_block(holder: u64, switches: u64) -> Vec<u8> {
        let mut gil = vec![0u8; 208];
        gil[0..8].copy_from_slice(&5000u64.to_le_bytes());
        gil[8..16].copy_from_slice(&holder.to_le_bytes());
        gil[16..20].copy_from_slice(&1i32.to_le_bytes());
        gil[24..32].copy_from_slice(&switches.to_le_bytes());
        gil
    }

    /// A thread state of `interp` for kernel thread `tid`, followed by `next`.
    fn tstate_block(layout: &Layout, interp: u64, next: u64, tid: i32) -> Vec<u8> {
        let mut block = vec![0u8; layout.tstate_read_size() as usize];
        let mut put = |offset: u64, value: u64| {
            block[offset as usize..offset as usize + 8].copy_from_slice(&value.to_le_bytes())
        };
        put(layout.tstate_interp, interp);
        put(layout.tstate_next, next);
        put(layout.tstate_thread_id, 0x7f00_0000_0000 + tid as u64);
        put(layout.tstate_native_thread_id.unwrap(), tid as u64);
        block
    }

    fn tids(threads: &[PyThread]) -> Vec<i32> {
        threads.iter().filter_map(|t| t.native_id).collect()
    }

    #[test]
    fn a_version_from_the_library_name_is_read_again_once_start_up_wrote_it() {
        const BSS: u64 = 0x7f00_0000;
        let named = Version {
            exact: false,
            ..Version::new(3, 9, 0)
        };
        let layout = layout::table_for(&named).unwrap();
        let mut interpreter = Interpreter::from_parts(
            named,
            layout.clone(),
            LayoutSource::Table,
            HEAD,
            None,
            GilAddresses::in_struct(GIL, layout::DEFAULT_GIL),
        );
        interpreter.version_bss = Some((BSS, 4096));
        let mut image = MemoryImage::new();
        // Start-up has not written the buffer yet: still "3.9".
        image.add(BSS, vec![0; 4096]);
        assert!(!interpreter.refine_version(&image));
        assert_eq!(interpreter.version.to_string(), "3.9");
        // Another library's version string is not taken for this one's.
        let mut other = vec![0u8; 4096];
        other[100..120].copy_from_slice(b"3.12.1 (main, Jan 1)");
        let mut image = MemoryImage::new();
        image.add(BSS, other);
        assert!(!interpreter.refine_version(&image));
        let mut written = vec![0u8; 4096];
        written[64..84].copy_from_slice(b"3.9.18 (main, Jan 1)");
        let mut image = MemoryImage::new();
        image.add(BSS, written);
        assert!(interpreter.refine_version(&image));
        assert_eq!(interpreter.version.to_string(), "3.9.18");
        // An exact version is left alone.
        assert!(!interpreter.refine_version(&image));
    }

    #[test]
    fn a_tick_reads_unchanged_lists_in_one_batch_and_walks_again_when_they_change() {
        let layout = layout::table_for(&Version::new(3, 11, 7)).unwrap();
        let mut interpreter = Interpreter::from_parts(
            Version::new(3, 11, 7),
            layout.clone(),
            LayoutSource::Table,
            HEAD,
            None,
            GilAddresses::in_struct(GIL, layout::DEFAULT_GIL),
        );
        let live = [100, 101, 102, 103];
        let before = process(&layout, &[(0x40_0000, 101), (0x41_0000, 100)]);
        assert_eq!(
            tids(&interpreter.threads(&before, &live).unwrap()),
            [101, 100]
        );
        let walk_reads = before.single.get();
        assert!(walk_reads >= 4);
        // Nothing changed: one batch, no pointer chasing.
        assert_eq!(
            tids(&interpreter.threads(&before, &live).unwrap()),
            [101, 100]
        );
        assert_eq!((before.single.get(), before.batches.get()), (walk_reads, 1));
        // The GIL came in the same batch.
        let gil = interpreter.read_state(&before).unwrap().gil;
        assert_eq!(
            (gil.locked, gil.holder, gil.switch_number),
            (true, 0x40_0000, 7)
        );
        assert_eq!((before.single.get(), before.batches.get()), (walk_reads, 2));
        // The same shape with new contents (a tstate reused by a new thread): read as it is.
        let reused = process(&layout, &[(0x40_0000, 102), (0x41_0000, 100)]);
        assert_eq!(
            tids(&interpreter.threads(&reused, &live).unwrap()),
            [102, 100]
        );
        assert_eq!(reused.single.get(), 0);
        // A thread started at the head: the batch no longer matches, the lists are walked.
        let started = process(
            &layout,
            &[(0x42_0000, 103), (0x40_0000, 102), (0x41_0000, 100)],
        );
        assert_eq!(
            tids(&interpreter.threads(&started, &live).unwrap()),
            [103, 102, 100]
        );
        assert!(started.single.get() >= 5);
        // A thread ended at the tail; then every thread: each seen at once.
        let ended = process(&layout, &[(0x42_0000, 103), (0x40_0000, 102)]);
        assert_eq!(
            tids(&interpreter.threads(&ended, &live).unwrap()),
            [103, 102]
        );
        let none = process(&layout, &[]);
        assert!(interpreter.threads(&none, &live).unwrap().is_empty());
        assert!(interpreter.threads(&none, &live).unwrap().is_empty());
        assert_eq!(none.batches.get(), 2);
    }

    #[test]
    fn ids_a_container_stores_are_translated_into_ours_and_unknown_ones_dropped() {
        let layout = layout::table_for(&Version::new(3, 11, 7)).unwrap();
        let mut interpreter = Interpreter::from_parts(
            Version::new(3, 11, 7),
            layout.clone(),
            LayoutSource::Table,
            HEAD,
            None,
            GilAddresses::in_struct(GIL, layout::DEFAULT_GIL),
        );
        // The container's threads 1, 2 and 3 are our 500, 501 and 502; a thread state with
        // id 7 names no live thread of the container.
        let image = process(
            &layout,
            &[
                (0x40_0000, 2),
                (0x41_0000, 1),
                (0x42_0000, 7),
                (0x43_0000, 3),
            ],
        );
        let live = [500, 501, 502];
        let own: std::collections::HashMap<i32, i32> = [(500, 1), (501, 2), (502, 3)].into();
        let ids = ThreadIds::Nested {
            pid: 500,
            own_pid: 1,
            depth: 1,
            ours: own.iter().map(|(&a, &b)| (b, a)).collect(),
            own,
            reads: 0,
        };
        let state = interpreter.read_state(&image).unwrap();
        let threads = interpreter.resolve_threads(&image, state.threads, &live, &ids);
        assert_eq!(tids(&threads), [501, 500, 502]);
        // Read as our own ids, the container's would match none of our threads.
        let state = interpreter.read_state(&image).unwrap();
        let untranslated =
            interpreter.resolve_threads(&image, state.threads, &live, &ThreadIds::Same);
        assert!(untranslated.is_empty());
    }

    /// A 3.12 process: a main interpreter with one thread and a subinterpreter with one,
    /// whose GIL pointer leads to `sub_gil` (its own GIL, the main one, or garbage).
    fn two_interpreters(layout: &Layout, sub_gil: u64) -> Counted {
        const SUB: u64 = 0x50_0000;
        const OWN_GIL: u64 = 0x60_0000;
        let GilPlacement::InterpreterPointer(gil_at) = layout.gil else {
            panic!("not a 3.12+ layout");
        };
        let mut image = MemoryImage::new();
        // New interpreters go to the head: the subinterpreter first.
        image.add(HEAD, SUB.to_le_bytes().to_vec());
        image.add(GIL, gil_block(0x40_0000, 7));
        image.add(OWN_GIL, gil_block(0x41_0000, 3));
        image.add(0x70_0000, vec![0xff; 256]);
        for (interp, next, id, gil, tstate, tid) in [
            (INTERP, 0, 0u64, GIL, 0x40_0000u64, 100i32),
            (SUB, INTERP, 1, sub_gil, 0x41_0000, 101),
        ] {
            let mut block = vec![0u8; 4096];
            let mut put = |offset: u64, value: u64| {
                block[offset as usize..offset as usize + 8].copy_from_slice(&value.to_le_bytes())
            };
            put(layout.interp_next, next);
            put(layout.interp_id.unwrap(), id);
            put(gil_at, gil);
            put(layout.interp_threads_head, tstate);
            image.add(interp, block);
            image.add(tstate, tstate_block(layout, interp, 0, tid));
        }
        Counted {
            image,
            single: Cell::new(0),
            batches: Cell::new(0),
        }
    }

    fn interpreter_312() -> Interpreter {
        let layout = layout::table_for(&Version::new(3, 12, 1)).unwrap();
        Interpreter::from_parts(
            Version::new(3, 12, 1),
            layout,
            LayoutSource::Table,
            HEAD,
            None,
            GilAddresses::in_struct(GIL, layout::DEFAULT_GIL),
        )
    }

    #[test]
    fn an_own_gil_subinterpreter_has_its_gil_read_in_the_same_batch() {
        let mut interpreter = interpreter_312();
        let process = two_interpreters(&interpreter.layout.clone(), 0x60_0000);
        let walked = interpreter.read_state(&process).unwrap();
        let groups = interpreter.other_gils();
        assert_eq!(groups.len(), 1);
        assert_eq!(
            (groups[0].base(), groups[0].interps.clone()),
            (0x60_0000, vec![(0x50_0000, Some(1))])
        );
        assert_eq!(interpreter.main_interpreters(), [(INTERP, Some(0))]);
        let gils: Vec<(i32, usize)> = walked
            .threads
            .iter()
            .map(|t| (t.native_id.unwrap(), t.gil))
            .collect();
        assert_eq!(gils, [(101, 1), (100, 0)]);
        assert_eq!(
            interpreter.gil_at(1).sync,
            vec![(0x60_0000 + 32, 0x60_0000 + 208)]
        );
        // The next tick: one batch, both GILs in it.
        let (single, batches) = (process.single.get(), process.batches.get());
        let state = interpreter.read_state(&process).unwrap();
        assert_eq!(
            (process.single.get(), process.batches.get()),
            (single, batches + 1)
        );
        assert_eq!((state.gil.holder, state.gil.switch_number), (0x40_0000, 7));
        assert_eq!(state.others.len(), 1);
        assert_eq!(
            (state.others[0].holder, state.others[0].switch_number),
            (0x41_0000, 3)
        );
        assert_eq!(state.threads, walked.threads);
    }

    #[test]
    fn a_subinterpreter_sharing_the_main_gil_or_pointing_at_garbage_is_on_the_main_gil() {
        let mut interpreter = interpreter_312();
        let layout = interpreter.layout.clone();
        let shared = two_interpreters(&layout, GIL);
        let state = interpreter.read_state(&shared).unwrap();
        assert!(interpreter.other_gils().is_empty());
        assert_eq!(
            interpreter.main_interpreters(),
            [(0x50_0000, Some(1)), (INTERP, Some(0))]
        );
        assert!(state.threads.iter().all(|t| t.gil == 0));
        // Garbage (no GIL's shape) stays on the main GIL, and forces a bounded number of
        // walks to see whether it settles.
        let mut interpreter = interpreter_312();
        let garbage = two_interpreters(&layout, 0x70_0000);
        let mut walks = 0;
        for _ in 0..MAX_REGROUPS * 2 {
            let single = garbage.single.get();
            let state = interpreter.read_state(&garbage).unwrap();
            assert!(state.threads.iter().all(|t| t.gil == 0));
            walks += (garbage.single.get() > single) as u32;
        }
        assert!(interpreter.other_gils().is_empty());
        assert!((2..=MAX_REGROUPS + 1).contains(&walks), "{walks}");
    }

    use crate::target::elf::ElfData;

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
