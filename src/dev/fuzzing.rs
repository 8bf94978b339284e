//! Entry points for fuzzing and replay: the snapshot format (a saved image of what a tick reads)
//! and drivers that run the interpreter walk, stack walk and ELF reader over arbitrary bytes.
//! It must hold no CPython or ELF knowledge of its own: it only calls the library's readers.
//!
//! # Snapshot format (version 1, all integers little-endian)
//!
//! | bytes | field                                                                        |
//! |-------|------------------------------------------------------------------------------|
//! | 8     | magic `GILSNAP1`                                                             |
//! | 4     | `PY_VERSION_HEX` of the interpreter                                          |
//! | 1     | layout: 0 the version's table, 1 `_Py_DebugOffsets` read at the runtime      |
//! | 1     | flags: 1 runtime present, 2 GIL current pointer present, 4 GIL is one struct |
//! | 2     | reserved                                                                     |
//! | 8 × 8 | runtime, interpreter list head, GIL locked, last_holder, switch_number,      |
//! |       | interval, current, struct base                                               |
//! | 4     | n sync ranges (at most `MAX_SYNC`), then n × (start u64, end u64)            |
//! | 4     | m live kernel tids (at most `MAX_TIDS`), then m × i32                        |
//! | 4     | r memory regions (at most `MAX_REGIONS`), then r × (addr u64, len u32, bytes) |
//!
//! Anything after the last region is ignored; a count or length beyond what is left of the
//! input makes the whole snapshot unreadable, never an allocation of that size.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::python::debug_offsets;
use crate::python::discovery::{Description, GilAddresses, LayoutSource};
use crate::python::interpreter::Interpreter;
use crate::python::layout::{self, GilPlacement};
use crate::python::stack::{StackError, StackReader};
use crate::python::thread_names::ThreadNames;
use crate::python::version::{self, Version};
use crate::sample::observe::is_holder;
use crate::target::elf::{self, ElfData, ElfFile};
use crate::target::maps::Mapping;
use crate::target::memory::{Memory, MemoryImage, ReadError};

const MAGIC: &[u8; 8] = b"GILSNAP1";
/// Most GIL sync ranges in a snapshot (3.6 has four variables, later versions one struct).
pub const MAX_SYNC: usize = 16;
/// Most live tids in a snapshot.
pub const MAX_TIDS: usize = 16_384;
/// Most memory regions in a snapshot.
pub const MAX_REGIONS: usize = 65_536;
/// Ticks walked per snapshot: a stack's root is believed on the second walk that ends there.
const TICKS: usize = 3;
/// Walks of one stack per tick, as the observer makes them.
const STACK_ATTEMPTS: usize = 3;

const FLAG_RUNTIME: u8 = 1;
const FLAG_CURRENT: u8 = 2;
const FLAG_BLOCK: u8 = 4;

/// Everything a tick needs, found at attach time, and the memory it read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// `PY_VERSION_HEX`.
    pub version: u32,
    /// The layout came from `_Py_DebugOffsets` (read again from the image at `runtime`).
    pub debug_offsets: bool,
    pub runtime: Option<u64>,
    pub head: u64,
    pub gil_locked: u64,
    pub gil_last_holder: u64,
    pub gil_switch_number: u64,
    pub gil_interval: u64,
    pub gil_current: Option<u64>,
    /// Base of the GIL struct (3.7+); its fields come from the layout.
    pub gil_block: Option<u64>,
    pub gil_sync: Vec<(u64, u64)>,
    /// The process's kernel tids, sorted.
    pub live_tids: Vec<i32>,
    /// (address, bytes), sorted by address and not overlapping.
    pub regions: Vec<(u64, Vec<u8>)>,
}

impl Snapshot {
    /// What `interpreter` found at attach time, with no memory yet.
    pub fn of(interpreter: &Interpreter, live_tids: &[i32]) -> Snapshot {
        let found = interpreter.description();
        let v = found.version;
        let gil = &found.gil;
        Snapshot {
            version: u32::from_be_bytes([v.major, v.minor, v.micro, v.level << 4 | v.serial]),
            debug_offsets: found.layout_source == LayoutSource::DebugOffsets,
            runtime: found.runtime,
            head: found.head,
            gil_locked: gil.locked,
            gil_last_holder: gil.last_holder,
            gil_switch_number: gil.switch_number,
            gil_interval: gil.interval,
            gil_current: gil.current,
            gil_block: gil.block.map(|(base, _)| base),
            gil_sync: gil.sync.clone(),
            live_tids: live_tids.to_vec(),
            regions: Vec::new(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(self.debug_offsets as u8);
        let flag = |present: bool, bit: u8| if present { bit } else { 0 };
        let flags = flag(self.runtime.is_some(), FLAG_RUNTIME)
            | flag(self.gil_current.is_some(), FLAG_CURRENT)
            | flag(self.gil_block.is_some(), FLAG_BLOCK);
        out.push(flags);
        out.extend_from_slice(&[0, 0]);
        for value in [
            self.runtime.unwrap_or(0),
            self.head,
            self.gil_locked,
            self.gil_last_holder,
            self.gil_switch_number,
            self.gil_interval,
            self.gil_current.unwrap_or(0),
            self.gil_block.unwrap_or(0),
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&(self.gil_sync.len() as u32).to_le_bytes());
        for (start, end) in &self.gil_sync {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
        }
        out.extend_from_slice(&(self.live_tids.len() as u32).to_le_bytes());
        for tid in &self.live_tids {
            out.extend_from_slice(&tid.to_le_bytes());
        }
        out.extend_from_slice(&(self.regions.len() as u32).to_le_bytes());
        for (addr, bytes) in &self.regions {
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Read a snapshot; None for anything that is not one. Never panics.
    pub fn parse(bytes: &[u8]) -> Option<Snapshot> {
        let mut input = Reader { bytes };
        if input.take(8)? != MAGIC {
            return None;
        }
        let version = input.u32()?;
        let debug_offsets = input.u8()? == 1;
        let flags = input.u8()?;
        input.take(2)?;
        let mut words = [0u64; 8];
        for word in &mut words {
            *word = input.u64()?;
        }
        let [runtime, head, locked, last_holder, switch_number, interval, current, block] = words;
        let flag = |bit: u8, value: u64| (flags & bit != 0).then_some(value);
        let count = input.count(MAX_SYNC, 16)?;
        let gil_sync = (0..count)
            .map(|_| Some((input.u64()?, input.u64()?)))
            .collect::<Option<Vec<_>>>()?;
        let count = input.count(MAX_TIDS, 4)?;
        let live_tids = (0..count)
            .map(|_| Some(input.u32()? as i32))
            .collect::<Option<Vec<_>>>()?;
        let count = input.count(MAX_REGIONS, 12)?;
        let mut regions = Vec::with_capacity(count);
        for _ in 0..count {
            let addr = input.u64()?;
            let len = input.u32()? as usize;
            regions.push((addr, input.take(len)?.to_vec()));
        }
        Some(Snapshot {
            version,
            debug_offsets,
            runtime: flag(FLAG_RUNTIME, runtime),
            head,
            gil_locked: locked,
            gil_last_holder: last_holder,
            gil_switch_number: switch_number,
            gil_interval: interval,
            gil_current: flag(FLAG_CURRENT, current),
            gil_block: flag(FLAG_BLOCK, block),
            gil_sync,
            live_tids,
            regions,
        })
    }

    /// The regions as memory to read.
    pub fn image(&self) -> MemoryImage {
        let mut image = MemoryImage::new();
        for (addr, bytes) in &self.regions {
            image.add(*addr, bytes.clone());
        }
        image
    }
}

/// A cursor over untrusted bytes: every read is checked against what is left.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A count of items of at least `item_bytes` each: no more than `max`, and no more than
    /// the input could hold.
    fn count(&mut self, max: usize, item_bytes: usize) -> Option<usize> {
        let count = self.u32()? as usize;
        (count <= max && count.checked_mul(item_bytes)? <= self.bytes.len()).then_some(count)
    }
}

/// What a walk got to: the most threads, stack frames and thread names one tick read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Walked {
    pub threads: usize,
    pub frames: usize,
    pub names: usize,
}

/// Parse a snapshot and run over its memory everything a tick runs. Never panics, never
/// hangs: that is what the fuzzer checks.
pub fn walk_snapshot(bytes: &[u8]) -> Walked {
    match Snapshot::parse(bytes) {
        Some(snapshot) => walk(&snapshot, &snapshot.image()),
        None => Walked::default(),
    }
}

/// The interpreter of `snapshot` over `memory`: its layout chosen as `attach` chooses it, the
/// head and GIL found again from the runtime where it has one, else taken from the snapshot.
pub fn interpreter(snapshot: &Snapshot, memory: &dyn Memory) -> Option<Interpreter> {
    let version = Version::from_hex(u64::from(snapshot.version))?;
    let (layout, source) = if snapshot.debug_offsets {
        let layout = debug_offsets::read(memory, snapshot.runtime?, &version)?.ok()?;
        (layout, LayoutSource::DebugOffsets)
    } else {
        (layout::table_for(&version)?, LayoutSource::Table)
    };
    let gil = GilAddresses {
        locked: snapshot.gil_locked,
        last_holder: snapshot.gil_last_holder,
        switch_number: snapshot.gil_switch_number,
        interval: snapshot.gil_interval,
        sync: snapshot.gil_sync.clone(),
        current: snapshot.gil_current,
        block: snapshot.gil_block.map(|base| (base, layout.gil_fields)),
    };
    let saved = |layout, source| {
        Description::from_parts(
            version,
            layout,
            source,
            snapshot.head,
            snapshot.runtime,
            gil.clone(),
        )
    };
    if let (Some(runtime), false) = (snapshot.runtime, layout.gil == GilPlacement::Globals) {
        let mut located = saved(layout.clone(), source.clone());
        if located.locate_in_runtime(runtime, memory).is_ok() {
            return Some(Interpreter::new(located));
        }
    }
    Some(Interpreter::new(saved(layout, source)))
}

/// Build the interpreter and take `TICKS` ticks' worth of reads over `memory`.
pub fn walk(snapshot: &Snapshot, memory: &dyn Memory) -> Walked {
    let mut walked = Walked::default();
    let Some(mut interpreter) = interpreter(snapshot, memory) else {
        return walked;
    };
    let mut tids = snapshot.live_tids.clone();
    tids.sort_unstable();
    tids.dedup();
    let found = interpreter.description();
    let mut stacks = found.layout.stack.map(StackReader::new);
    let mut names = ThreadNames::new(&found.version, &found.layout);
    for _ in 0..TICKS {
        let (threads, frames) = tick(&mut interpreter, memory, &tids, stacks.as_mut());
        walked.threads = walked.threads.max(threads);
        walked.frames = walked.frames.max(frames);
        let first = interpreter
            .interpreters(memory)
            .ok()
            .and_then(|i| i.first().copied());
        if let (Some(names), Some(interp)) = (names.as_mut(), first) {
            let read = names.read(memory, interp).map_or(0, |n| n.len());
            walked.names = walked.names.max(read);
        }
    }
    if let Some(reader) = stacks {
        for id in 0..reader.table.len() as u32 {
            reader
                .table
                .frames(id)
                .for_each(|f| drop(crate::formats::labels::frame(f)));
        }
    }
    walked
}

/// The memory reads of one observer tick: GIL, threads, GIL again, then stacks. Returns the
/// threads and the stack frames read.
fn tick(
    interpreter: &mut Interpreter,
    memory: &dyn Memory,
    tids: &[i32],
    stacks: Option<&mut StackReader>,
) -> (usize, usize) {
    let Ok(gil) = interpreter.gil_state(memory) else {
        return (0, 0);
    };
    let Ok(threads) = interpreter.threads(memory, tids) else {
        return (0, 0);
    };
    for thread in &threads {
        is_holder(thread, &gil);
    }
    let _ = interpreter.gil_state(memory);
    let Some(reader) = stacks else {
        return (threads.len(), 0);
    };
    let mut frames = 0;
    for thread in &threads {
        let mut read = reader.read(memory, thread.tstate);
        for _ in 1..STACK_ATTEMPTS {
            if read != Err(StackError::Moved) {
                break;
            }
            read = reader.read(memory, thread.tstate);
        }
        if let Ok(stack) = read {
            frames += reader.table.stack(stack).len();
        }
    }
    (threads.len(), frames)
}

/// Memory that remembers every successful read, to save as a snapshot's regions.
pub struct Recording<M: Memory> {
    inner: M,
    reads: RefCell<BTreeMap<u64, Vec<u8>>>,
}

impl<M: Memory> Recording<M> {
    pub fn new(inner: M) -> Recording<M> {
        Recording {
            inner,
            reads: RefCell::new(BTreeMap::new()),
        }
    }

    /// Every byte read, as sorted regions with overlapping and touching reads joined (so a
    /// read that spanned two earlier ones is still one region).
    pub fn regions(&self) -> Vec<(u64, Vec<u8>)> {
        let mut regions: Vec<(u64, Vec<u8>)> = Vec::new();
        for (&addr, bytes) in self.reads.borrow().iter() {
            if let Some((start, joined)) = regions.last_mut() {
                let end = *start + joined.len() as u64;
                if addr <= end {
                    let skip = (end - addr) as usize;
                    if let Some(rest) = bytes.get(skip..) {
                        joined.extend_from_slice(rest);
                    }
                    continue;
                }
            }
            regions.push((addr, bytes.clone()));
        }
        regions
    }
}

impl<M: Memory> Memory for Recording<M> {
    fn read_exact(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.inner.read_exact(addr, buf)?;
        let mut reads = self.reads.borrow_mut();
        let known = reads.entry(addr).or_default();
        if known.len() < buf.len() {
            *known = buf.to_vec();
        }
        Ok(())
    }
}

/// Read an ELF file from `bytes` as gilscope reads a mapped interpreter: symbols, sections,
/// section data, the version helpers, and the uprobe reader's symbols and file offsets.
pub fn read_elf_bytes(bytes: &[u8]) {
    if let Ok(symbols) = elf::function_symbols(bytes) {
        for (_, value) in symbols.iter().take(64) {
            let _ = elf::file_offset(bytes, *value);
        }
    }
    let _ = elf::file_offset(bytes, 0x1000);
    let mapping = Mapping {
        start: 0x7f00_0000_0000,
        end: 0x7f00_0100_0000,
        readable: true,
        writable: false,
        executable: false,
        offset: 0,
        inode: 1,
        path: "/fuzz/libpython3.11.so".into(),
        deleted: false,
    };
    let Ok(binary) = ElfFile::parse(
        mapping.path.clone(),
        ElfData::Owned(bytes.to_vec()),
        &[&mapping],
    ) else {
        return;
    };
    for name in [
        "_PyRuntime",
        "Py_Version",
        "interp_head",
        "gil_locked",
        "_PyThreadState_Current",
    ] {
        let _ = binary.address_of(name);
    }
    let _ = binary
        .symbols_matching(|n| n.starts_with("take_gil"))
        .count();
    for section in [".bss", ".data", ".PyRuntime", ".text"] {
        let _ = binary.section_data(section).len();
    }
    // The file's own bytes as the target's memory at the load bias: what the version
    // detection would find in .data and .bss of a process that mapped it.
    let mut image = MemoryImage::new();
    image.add(binary.load_bias, bytes.to_vec());
    let _ = version::detect(&binary, &image);
    let _ = version::parse_version_buffer(bytes);
}
