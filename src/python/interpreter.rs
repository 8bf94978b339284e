//! What every tick reads of the runtime discovery described: interpreter and thread lists and
//! the GILs (a new subinterpreter's too), batched while lists stand still. It never classifies.

use std::collections::HashSet;

use super::discovery::{self, Description, GilAddresses, MAX_THREADS};
use super::layout::{Current, Flag, GilFields, GilPlacement};
use crate::error::Result;
use crate::target::memory::{check_pointer, i32_at, u32_at, u64_at, Memory, ReadError};
use crate::target::namespace::ThreadIds;
use crate::target::pthread::PthreadTids;
use crate::target::pthread_sync::{GilSync, COND_BYTES, MUTEX_BYTES};

/// Extra walks to settle which GIL a new subinterpreter uses (see `regroups_left`).
const MAX_REGROUPS: u32 = 64;

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

/// A CPython interpreter found in a target process, ready to be sampled: its [`Description`]
/// (fixed at attach) and what the reader keeps between ticks.
pub struct Interpreter {
    description: Description,
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
    /// Find and validate the interpreter in process `pid` ([`discovery::discover`]), ready to
    /// be read.
    pub fn attach(pid: i32, memory: &dyn Memory) -> Result<Interpreter> {
        Ok(Interpreter::new(discovery::discover(pid, memory)?))
    }

    /// A reader of the runtime `description` describes, with nothing read yet.
    pub(crate) fn new(description: Description) -> Interpreter {
        Interpreter {
            description,
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

    /// What attach found: the binary, version, layout and where the lists and GIL are.
    pub fn description(&self) -> &Description {
        &self.description
    }

    /// [`Description::refine_version`]: a version known only from the library's name is
    /// read again; true if it is now exact.
    pub fn refine_version(&mut self, memory: &dyn Memory) -> bool {
        self.description.refine_version(memory)
    }

    /// The main GIL's addresses (for classifying futex waits).
    pub fn gil(&self) -> &GilAddresses {
        &self.description.gil
    }

    /// The addresses of GIL `index` as [`PyThread::gil`] numbers them (0: the main one).
    pub fn gil_at(&self, index: usize) -> &GilAddresses {
        match index.checked_sub(1).and_then(|i| self.others.get(i)) {
            Some(group) => &group.addresses,
            None => &self.description.gil,
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

    /// Addresses of all interpreters, head first.
    pub fn interpreters(&self, memory: &dyn Memory) -> std::result::Result<Vec<u64>, ReadError> {
        self.description.interpreters(memory)
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
        let (gil, sync) = read_gil_and_sync(memory, &self.description.gil)?;
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
        if self.description.layout.tstate_native_thread_id.is_none() {
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
        let read_size = self.description.layout.tstate_read_size() as usize;
        let mut threads = Vec::new();
        let mut shape = Vec::new();
        let mut seen = HashSet::new();
        let interps = self.interpreters(memory)?;
        self.group_by_gil(memory, &interps);
        for interp in interps {
            let gil = self.gil_index(interp);
            let mut chain = Vec::new();
            let mut next = memory.read_u64(interp + self.description.layout.interp_threads_head)?;
            while next != 0 && threads.len() < MAX_THREADS {
                check_pointer(next, 8)?;
                if !seen.insert(next) {
                    break;
                }
                let block = memory.read_bytes(next, read_size)?;
                let thread = self.thread_from_block(next, interp, gil, &block)?;
                chain.push(next);
                threads.push(thread);
                next = u64_at(&block, self.description.layout.tstate_next).unwrap_or(0);
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
        let GilPlacement::InterpreterPointer(offset) = self.description.layout.gil else {
            self.main_interps = interps.iter().map(|&i| (i, None)).collect();
            return;
        };
        if interps.len() <= 1 {
            // The main interpreter is always id 0.
            self.main_interps = interps.iter().map(|&i| (i, Some(0))).collect();
            return;
        }
        let main_base = self.description.gil.block.map_or(0, |(base, _)| base);
        let fields = self.description.layout.gil_fields;
        let id_offset = self.description.layout.interp_id;
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
                && (known || discovery::looks_like_gil(memory, base, fields, None));
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
        let read_size = self.description.layout.tstate_read_size() as usize;
        // The GIL goes in the batch where it is one block that holds everything read_gil needs.
        let gil_span = gil_span(&self.description.gil).filter(|&(base, len)| {
            self.description
                .gil
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
        blocks.push((self.description.head, 8));
        for (interp, chain) in &self.shape {
            blocks.push((interp + self.description.layout.interp_next, 8));
            blocks.push((interp + self.description.layout.interp_threads_head, 8));
            blocks.extend(chain.iter().map(|&tstate| (tstate, read_size)));
        }
        let gil = match gil_span {
            Some(_) => None,
            None => Some(read_gil_and_sync(memory, &self.description.gil).ok()?),
        };
        let mut batch = std::mem::take(&mut self.batch);
        let read = memory.read_many(&blocks, &mut batch).ok();
        let state = read.and_then(|()| {
            let ((gil, sync), mut rest) = match (gil, gil_span) {
                (Some(read), _) => (read, &batch[..]),
                (None, Some((_, len))) => {
                    let block = batch.get(..len)?;
                    let read = (
                        gil_from_block(block, &self.description.gil).ok()?,
                        sync_from_block(block, &self.description.gil),
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
                if u64_at(block, self.description.layout.tstate_next)? != next {
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
        let layout = &self.description.layout;
        let field = |offset| u64_at(block, offset).unwrap_or(0);
        if field(layout.tstate_interp) != interp {
            // The list changed under us (a thread is being created or deleted).
            return Err(ReadError::BadPointer { addr: tstate });
        }
        let flag = |f: Option<Flag>| f.and_then(|f| u32_at(block, f.offset).map(|w| f.is_set(w)));
        Ok(PyThread {
            tstate,
            interp,
            thread_id: field(layout.tstate_thread_id),
            native_id: layout
                .tstate_native_thread_id
                .and_then(|o| i32_at(block, o))
                .filter(|&tid| tid > 0),
            holds_gil: flag(layout.tstate_holds_gil),
            gil_requested: flag(layout.tstate_gil_requested),
            active: match layout.current {
                Current::ThreadFlag(f) => flag(Some(f)),
                _ => None,
            },
            attach_state: layout.tstate_attach_state.and_then(|o| u32_at(block, o)),
            gil,
        })
    }

    /// The GIL now.
    pub fn gil_state(&self, memory: &dyn Memory) -> std::result::Result<GilState, ReadError> {
        read_gil(memory, &self.description.gil)
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
fn read_gil(memory: &dyn Memory, gil: &GilAddresses) -> std::result::Result<GilState, ReadError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::discovery::LayoutSource;
    use crate::python::layout::{self, Layout};
    use crate::python::version::Version;
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

    /// A reader of a runtime whose interpreter list is at `HEAD` and main GIL at `GIL`.
    fn reader(version: Version, layout: &Layout) -> Interpreter {
        Interpreter::new(Description::from_parts(
            version,
            layout.clone(),
            LayoutSource::Table,
            HEAD,
            None,
            GilAddresses::in_struct(GIL, layout::DEFAULT_GIL),
        ))
    }

    fn tids(threads: &[PyThread]) -> Vec<i32> {
        threads.iter().filter_map(|t| t.native_id).collect()
    }

    #[test]
    fn a_tick_reads_unchanged_lists_in_one_batch_and_walks_again_when_they_change() {
        let layout = layout::table_for(&Version::new(3, 11, 7)).unwrap();
        let mut interpreter = reader(Version::new(3, 11, 7), &layout);
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
        let mut interpreter = reader(Version::new(3, 11, 7), &layout);
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
        reader(Version::new(3, 12, 1), &layout)
    }

    #[test]
    fn an_own_gil_subinterpreter_has_its_gil_read_in_the_same_batch() {
        let mut interpreter = interpreter_312();
        let process = two_interpreters(&interpreter.description.layout.clone(), 0x60_0000);
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
        let layout = interpreter.description.layout.clone();
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
}
