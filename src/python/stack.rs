//! Python call stacks of the target's threads: from a consistent chain of frames
//! (frame_copy.rs) to frames with names and lines, line tables, and caches of what does not
//! change. It must not report a stack that was not read consistently.

use std::collections::HashMap;
use std::sync::Arc;

use super::frame_copy::{Chain, FrameReader, FrameRecord};
use super::layout::{EvalCalls, FrameFields, LineTable, StackLayout, ThreadLocalBytecode};
use super::objects;
use crate::stack::{Frame, FrameId, StackId, StackTable, NOT_CAPTURED, TRUNCATED};
use crate::target::memory::{check_pointer, u64_at, Memory, ReadError};

/// Deepest stack read: deeper recursion keeps its innermost frames, under a marker frame.
pub const MAX_FRAMES: usize = 4096;
/// Code objects remembered; past this the cache starts over.
const MAX_CODE_CACHE: usize = 65_536;
/// (code, instruction) -> frame entries remembered; past this the cache starts over.
const MAX_LINE_CACHE: usize = 1 << 20;
/// Largest instruction offset believed: beyond it the frame is not what it was.
const MAX_CODE_BYTES: u64 = 1 << 26;
/// Most copies of one code object's bytecode believed (one per thread index in use).
const MAX_BYTECODE_COPIES: u64 = 1 << 20;
/// (code, copy index) -> bytecode copy addresses remembered; past this they start over.
const MAX_COPY_CACHE: usize = 1 << 16;
/// Thread states whose last stack's calls are remembered; past this the memory starts over.
const MAX_REMEMBERED: usize = 65_536;

/// Why a stack was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackError {
    /// The thread's stack changed while it was read: dropped, never reported.
    Moved,
    Read(ReadError),
}

impl From<ReadError> for StackError {
    fn from(e: ReadError) -> StackError {
        StackError::Read(e)
    }
}

/// What a code object says about itself, read once.
#[derive(Debug, Clone)]
struct Code {
    /// The pointer fields it was read from: a different code object at a recycled address
    /// has different ones.
    fingerprint: [u64; 4],
    function: Arc<str>,
    file: Arc<str>,
    firstlineno: i32,
    linetable: Arc<[u8]>,
    /// Length in code units (`ob_size`), where thread-local bytecode needs it.
    code_units: u64,
}

/// The Python frames that one call of the evaluation loop runs, in a stack read by
/// [`StackReader::read`]: `--native` puts them where that call's native frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalCall {
    /// How many frames of the stack, counted from the innermost frame on, the call runs
    /// (the calls of a stack follow one another, innermost first).
    pub frames: u32,
    /// An address in that call's own native stack frame (a local variable of
    /// `_PyEval_EvalFrameDefault`: 3.11 its `_PyCFrame`, 3.12+ its entry frame), which finds
    /// it among native frames without symbols; None where the version has none (3.10 and
    /// older) or it could not be read.
    pub anchor: Option<u64>,
}

/// How a frame stands to the calls of the evaluation loop ([`EvalCalls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallEdge {
    /// It is run by the same call as the next frame outwards.
    Inside,
    /// It is the first (outermost) frame its call runs.
    Entry,
    /// It is an entry shim (3.12+): the frames before it were run by the call that pushed it.
    Shim,
}

/// Where one Python frame of a stack is: the frame and its code object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameAt {
    pub frame: u64,
    pub code: u64,
}

/// Reads stacks of one interpreter, remembering code objects and lines across ticks.
pub struct StackReader {
    layout: StackLayout,
    /// Chains of frames, read consistently.
    frames: FrameReader,
    /// Bytes to read of each code object.
    code_size: usize,
    codes: HashMap<u64, Code>,
    lines: HashMap<(u64, u64), FrameId>,
    /// Type objects known to be (or not to be) `code`.
    code_types: HashMap<u64, bool>,
    /// Free-threaded 3.14+: (code object, copy index) -> where that copy of its bytecode is.
    bytecode_copies: HashMap<(u64, i32), u64>,
    /// Group frames into [`EvalCall`]s (for `--native`): 3.11 reads the cframe chain too.
    eval_calls: bool,
    /// Each thread state's last stack read and its calls of the evaluation loop, while
    /// calls are grouped.
    last: HashMap<u64, (StackId, Arc<[EvalCall]>)>,
    pub table: StackTable,
}

impl StackReader {
    pub fn new(layout: StackLayout) -> StackReader {
        let c = layout.code;
        let code_size = [
            layout.ob_type,
            c.filename,
            c.name,
            c.qualname.unwrap_or(0),
            c.firstlineno,
            c.linetable,
            c.thread_local_bytecode.map_or(0, |t| t.code_units),
        ]
        .into_iter()
        .max()
        .unwrap_or(0) as usize
            + 8;
        StackReader {
            layout,
            frames: FrameReader::new(layout, code_size),
            code_size,
            codes: HashMap::new(),
            lines: HashMap::new(),
            code_types: HashMap::new(),
            bytecode_copies: HashMap::new(),
            eval_calls: false,
            last: HashMap::new(),
            table: StackTable::new(),
        }
    }

    /// The stack of samples whose stack could not be read consistently: one marker frame,
    /// so that every format shows them with their true weight.
    pub fn not_captured(&mut self) -> StackId {
        let marker = self.table.intern_frame(Frame::marker(NOT_CAPTURED));
        self.table.intern_stack(&[marker])
    }

    /// Is `ty` the `code` type? Learned once per type object.
    fn is_code_type(&mut self, memory: &dyn Memory, ty: u64) -> Result<bool, ReadError> {
        if let Some(&known) = self.code_types.get(&ty) {
            return Ok(known);
        }
        let name = memory.read_pointer(ty + self.layout.tp_name, 1)?;
        let is_code = objects::read_c_string(memory, name, 64)? == "code";
        if self.code_types.len() < 4096 {
            self.code_types.insert(ty, is_code);
        }
        Ok(is_code)
    }

    /// The code object at `addr`, from the cache if it is still the same object (its
    /// `header` read now says so, or is read here). None if it is not a code object (a shim
    /// or entry frame's placeholder).
    fn code(
        &mut self,
        memory: &dyn Memory,
        addr: u64,
        header: Option<&[u8]>,
    ) -> Result<Option<Code>, ReadError> {
        check_pointer(addr, 8)?;
        let read;
        let block = match header {
            Some(block) => block,
            None => {
                read = memory.read_bytes(addr, self.code_size)?;
                &read[..]
            }
        };
        let c = self.layout.code;
        let field = |offset| u64_at(block, offset).ok_or(ReadError::BadPointer { addr });
        let ty = field(self.layout.ob_type)?;
        check_pointer(ty, 8)?;
        if !self.is_code_type(memory, ty)? {
            return Ok(None);
        }
        let name_field = c.qualname.unwrap_or(c.name);
        let fingerprint = [
            field(c.filename)?,
            field(name_field)?,
            field(c.linetable)?,
            field(c.firstlineno)? & 0xffff_ffff,
        ];
        if let Some(code) = self
            .codes
            .get(&addr)
            .filter(|k| k.fingerprint == fingerprint)
        {
            return Ok(Some(code.clone()));
        }
        let code_units = match c.thread_local_bytecode {
            Some(t) => field(t.code_units)?,
            None => 0,
        };
        let function = objects::read_name(memory, fingerprint[1], &self.layout)?;
        let file = objects::read_name(memory, fingerprint[0], &self.layout)?;
        let linetable = objects::read_bytes_object(memory, fingerprint[2], &self.layout)?;
        let code = Code {
            fingerprint,
            function: function.into(),
            file: file.into(),
            firstlineno: fingerprint[3] as u32 as i32,
            linetable: linetable.into(),
            code_units,
        };
        if self.codes.len() >= MAX_CODE_CACHE {
            self.codes.clear();
            self.lines.clear();
            self.bytecode_copies.clear();
        }
        self.codes.insert(addr, code.clone());
        Ok(Some(code))
    }

    /// The frame entry for an instruction of a code object.
    fn frame_id(&mut self, code_addr: u64, code: &Code, instr: u64) -> FrameId {
        if let Some(&id) = self.lines.get(&(code_addr, instr)) {
            if self.table.frame(id).is_some_and(|f| {
                Arc::ptr_eq(&f.function, &code.function) || f.function == code.function
            }) {
                return id;
            }
        }
        let line = match self.layout.code.line_table {
            LineTable::LnotabUnsigned => {
                lnotab_line(&code.linetable, code.firstlineno, instr, false)
            }
            LineTable::Lnotab => lnotab_line(&code.linetable, code.firstlineno, instr, true),
            LineTable::Lines310 => lines310_line(&code.linetable, code.firstlineno, instr),
            LineTable::Locations => locations_line(&code.linetable, code.firstlineno, instr / 2),
        };
        let id = self.table.intern_frame(Frame::python(
            code.function.clone(),
            code.file.clone(),
            line.unwrap_or(0).max(0) as u32,
        ));
        if self.lines.len() >= MAX_LINE_CACHE {
            self.lines.clear();
        }
        self.lines.insert((code_addr, instr), id);
        id
    }

    /// Free-threaded 3.14+: the byte offset of a frame's instruction in the copy of its
    /// code's bytecode that its thread runs (`tlbc_index` != 0). Where the copy was found
    /// before and the instruction lies inside it, no read; else the code object's
    /// `_PyCodeArray` is read again (it moves when it grows). An index the array does not
    /// have, or an instruction outside the copy, is a frame read as it changed.
    fn copy_offset(
        &mut self,
        memory: &dyn Memory,
        code_addr: u64,
        code: &Code,
        record: FrameRecord,
    ) -> Result<u64, StackError> {
        let (Some(tlbc), Some(first)) = (
            self.layout.code.thread_local_bytecode,
            self.layout.code.first_instruction,
        ) else {
            return Err(StackError::Moved);
        };
        let bytes = code.code_units.saturating_mul(2);
        let inside = |base: u64| {
            record.instr >= base && record.instr - base < bytes.max(2) && bytes <= MAX_CODE_BYTES
        };
        let key = (code_addr, record.tlbc_index);
        if let Some(&base) = self.bytecode_copies.get(&key) {
            if inside(base) {
                return Ok(record.instr - base);
            }
        }
        let base = match copy_address(memory, code_addr, tlbc, record.tlbc_index)? {
            // Not made yet: the thread runs the code object's own bytecode (as CPython's
            // own remote unwinder also assumes).
            0 => code_addr + first,
            base => base,
        };
        if !inside(base) {
            return Err(StackError::Moved);
        }
        if self.bytecode_copies.len() >= MAX_COPY_CACHE {
            self.bytecode_copies.clear();
        }
        self.bytecode_copies.insert(key, base);
        Ok(record.instr - base)
    }

    /// Read the stack of the thread state at `tstate` and intern it: one attempt, which
    /// fails with `StackError::Moved` where the thread's stack changed under the read (the
    /// caller may try again at once). An empty stack (a thread state with no Python frame)
    /// is a stack too.
    pub fn read(&mut self, memory: &dyn Memory, tstate: u64) -> Result<StackId, StackError> {
        self.walk(memory, tstate, None)
    }

    /// Like [`StackReader::read`], with where each Python frame of the stack is, innermost
    /// first (for readers of what frames hold: their variables). A marker frame (a cut
    /// stack) has no entry.
    pub fn read_frames(
        &mut self,
        memory: &dyn Memory,
        tstate: u64,
    ) -> Result<(StackId, Vec<FrameAt>), StackError> {
        let mut at = Vec::new();
        let stack = self.walk(memory, tstate, Some(&mut at))?;
        Ok((stack, at))
    }

    /// Group the frames of each stack read from now on into calls of the evaluation loop
    /// ([`StackReader::eval_calls`]), for `--native`.
    pub fn group_eval_calls(&mut self) {
        self.eval_calls = true;
        self.last.clear();
    }

    /// The calls of the evaluation loop of `stack`, innermost first, if it is the last stack
    /// read of the thread state at `tstate` and calls are grouped.
    pub fn eval_calls(&self, tstate: u64, stack: StackId) -> Option<&[EvalCall]> {
        let (last, calls) = self.last.get(&tstate)?;
        (*last == stack && self.eval_calls).then_some(&calls[..])
    }

    /// How the frame `record` stands to the calls of the evaluation loop.
    fn edge(&self, record: &FrameRecord) -> CallEdge {
        match (self.layout.frame, self.layout.eval_calls) {
            (FrameFields::Object { .. }, _) | (_, EvalCalls::OnePerFrame) => CallEdge::Entry,
            (_, EvalCalls::EntryFlag { .. }) if record.is_entry => CallEdge::Entry,
            (_, EvalCalls::EntryFlag { .. }) => CallEdge::Inside,
            (_, EvalCalls::EntryFrames { entry_owner }) if record.owner == entry_owner => {
                CallEdge::Shim
            }
            (_, EvalCalls::EntryFrames { .. }) => CallEdge::Inside,
        }
    }

    /// The frame layout the walk follows.
    pub fn layout(&self) -> &StackLayout {
        &self.layout
    }

    fn walk(
        &mut self,
        memory: &dyn Memory,
        tstate: u64,
        mut frames_at: Option<&mut Vec<FrameAt>>,
    ) -> Result<StackId, StackError> {
        let chain = self.frames.read(memory, tstate)?;
        let mut frames: Vec<FrameId> = Vec::with_capacity(chain.frames.len() + 1);
        let mut seen_codes: HashMap<u64, Option<Code>> = HashMap::new();
        // Calls of the evaluation loop, innermost first (for `--native`): the frames each
        // runs, its anchor, and (3.11) its innermost frame's address, which its cframe must
        // point at.
        let mut calls: Vec<(EvalCall, u64)> = Vec::new();
        let new_call = |innermost: u64| {
            (
                EvalCall {
                    frames: 0,
                    anchor: None,
                },
                innermost,
            )
        };
        let mut call = new_call(chain.frames.first().map_or(0, |f| f.0));
        for &(frame, record) in &chain.frames {
            let shown = self.shown_frame(memory, &chain, record, &mut seen_codes)?;
            if let Some((code_addr, id)) = shown {
                frames.push(id);
                call.0.frames += 1;
                if let Some(at) = frames_at.as_deref_mut() {
                    at.push(FrameAt {
                        frame,
                        code: code_addr,
                    });
                }
            }
            if self.eval_calls {
                match self.edge(&record) {
                    CallEdge::Inside => {}
                    CallEdge::Entry => {
                        calls.push(std::mem::replace(&mut call, new_call(record.previous)))
                    }
                    CallEdge::Shim => {
                        call.0.anchor = Some(frame);
                        calls.push(std::mem::replace(&mut call, new_call(record.previous)));
                    }
                }
            }
        }
        if chain.truncated {
            frames.push(self.table.intern_frame(Frame::marker(TRUNCATED)));
        }
        frames.reverse();
        let stack = self.table.intern_stack(&frames);
        if self.eval_calls {
            if call.0.frames > 0 {
                calls.push(call);
            }
            if let EvalCalls::EntryFlag {
                cframe_previous, ..
            } = self.layout.eval_calls
            {
                self.anchor_cframes(memory, tstate, cframe_previous, &mut calls);
            }
            if self.last.len() >= MAX_REMEMBERED {
                self.last.clear();
            }
            let calls: Arc<[EvalCall]> = calls.into_iter().map(|(c, _)| c).collect();
            self.last.insert(tstate, (stack, calls));
        }
        Ok(stack)
    }

    /// A frame of `chain` to show: its code object's address and its frame entry. None for
    /// a shim, an entry frame's placeholder or a frame without code.
    fn shown_frame(
        &mut self,
        memory: &dyn Memory,
        chain: &Chain,
        record: FrameRecord,
        seen_codes: &mut HashMap<u64, Option<Code>>,
    ) -> Result<Option<(u64, FrameId)>, StackError> {
        let code_addr = record.code;
        if !record.shown || code_addr == 0 {
            return Ok(None);
        }
        let code = match seen_codes.get(&code_addr) {
            Some(code) => code.clone(),
            None => {
                let header = chain.code_header(code_addr, self.code_size);
                let code = self.code(memory, code_addr, header)?;
                seen_codes.insert(code_addr, code.clone());
                code
            }
        };
        let Some(code) = code else {
            return Ok(None);
        };
        let offset = match self.layout.code.first_instruction {
            Some(_) if record.tlbc_index != 0 => {
                self.copy_offset(memory, code_addr, &code, record)?
            }
            // 3.11-3.12 point one unit before the first instruction until it runs.
            Some(first) => record.instr.saturating_sub(code_addr + first),
            None => record.instr,
        };
        if offset > MAX_CODE_BYTES {
            return Err(StackError::Moved);
        }
        Ok(Some((code_addr, self.frame_id(code_addr, &code, offset))))
    }

    /// 3.11: give each call the address of its `_PyCFrame`, from the thread state's chain of
    /// them, where the cframe's `current_frame` is the call's innermost frame (a chain that
    /// does not fit leaves the calls from there on without an anchor).
    fn anchor_cframes(
        &self,
        memory: &dyn Memory,
        tstate: u64,
        cframe_previous: u64,
        calls: &mut [(EvalCall, u64)],
    ) {
        let Some(current_frame) = self.layout.cframe_frame else {
            return;
        };
        let Ok(mut cframe) = memory.read_u64(tstate + self.layout.tstate_frame) else {
            return;
        };
        for (call, innermost) in calls.iter_mut() {
            if cframe == 0 || check_pointer(cframe, 8).is_err() {
                return;
            }
            match memory.read_u64(cframe + current_frame) {
                Ok(frame) if frame == *innermost => call.anchor = Some(cframe),
                _ => return,
            }
            match memory.read_u64(cframe + cframe_previous) {
                Ok(previous) if previous != cframe => cframe = previous,
                _ => return,
            }
        }
    }
}

/// Entry `index` of the `_PyCodeArray` of the code object at `code` (0 where the copy does
/// not exist yet).
fn copy_address(
    memory: &dyn Memory,
    code: u64,
    tlbc: ThreadLocalBytecode,
    index: i32,
) -> Result<u64, StackError> {
    let array = memory.read_u64(code + tlbc.array)?;
    check_pointer(array, 8)?;
    let size = memory.read_u64(array)?;
    let index = u64::try_from(index).map_err(|_| StackError::Moved)?;
    if size > MAX_BYTECODE_COPIES || index >= size {
        return Err(StackError::Moved);
    }
    let entry = memory.read_u64(array + 8 + 8 * index)?;
    if entry != 0 {
        check_pointer(entry, 2)?;
    }
    Ok(entry)
}

/// 2.7-3.9: the line of the instruction at byte `offset`, from `co_lnotab`. Line increments
/// are signed from 3.6 (`signed_lines`), unsigned before.
pub fn lnotab_line(table: &[u8], firstlineno: i32, offset: u64, signed_lines: bool) -> Option<i32> {
    let mut line = firstlineno;
    let mut addr = 0u64;
    for pair in table.chunks_exact(2) {
        addr += pair[0] as u64;
        if addr > offset {
            break;
        }
        let delta = if signed_lines {
            pair[1] as i8 as i32
        } else {
            pair[1] as i32
        };
        line = line.saturating_add(delta);
    }
    Some(line)
}

/// 3.10: the line of the instruction at byte `offset`, from `co_linetable`.
pub fn lines310_line(table: &[u8], firstlineno: i32, offset: u64) -> Option<i32> {
    let mut line = firstlineno;
    let mut start = 0u64;
    for pair in table.chunks_exact(2) {
        let end = start + pair[0] as u64;
        let delta = pair[1] as i8;
        let this = if delta == -128 {
            None
        } else {
            line = line.saturating_add(delta as i32);
            Some(line)
        };
        if (start..end).contains(&offset) {
            return this;
        }
        start = end;
    }
    None
}

/// 3.11+: the line of the code unit at `index`, from the location table.
pub fn locations_line(table: &[u8], firstlineno: i32, index: u64) -> Option<i32> {
    let mut bytes = table.iter().copied().peekable();
    let mut line = firstlineno;
    let mut unit = 0u64;
    while let Some(first) = bytes.next() {
        if first & 0x80 == 0 {
            return None;
        }
        let code = (first >> 3) & 15;
        let length = (first & 7) as u64 + 1;
        let mut varint = || -> Option<u64> {
            let mut value = 0u64;
            let mut shift = 0;
            loop {
                let b = *bytes.peek()?;
                if b & 0x80 != 0 || shift > 60 {
                    return None;
                }
                bytes.next();
                value |= ((b & 63) as u64) << shift;
                shift += 6;
                if b & 64 == 0 {
                    return Some(value);
                }
            }
        };
        let this = match code {
            15 => None,
            14 | 13 => {
                let raw = varint()?;
                let delta = if raw & 1 == 1 {
                    -((raw >> 1) as i64)
                } else {
                    (raw >> 1) as i64
                };
                line = line.wrapping_add(delta as i32);
                if code == 14 {
                    varint()?;
                    varint()?;
                    varint()?;
                }
                Some(line)
            }
            10..=12 => {
                line = line.saturating_add((code - 10) as i32);
                bytes.next()?;
                bytes.next()?;
                Some(line)
            }
            _ => {
                bytes.next()?;
                Some(line)
            }
        };
        if (unit..unit + length).contains(&index) {
            return this;
        }
        unit += length;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::layout::FrameFields;

    #[test]
    fn lnotab_counts_lines_up_to_the_offset() {
        // 0: line 10, 6: line 11, 20: line 9 (a loop back), 30: line 15.
        let table = [6, 1, 14, (-2i8) as u8, 10, 6];
        assert_eq!(lnotab_line(&table, 10, 0, true), Some(10));
        assert_eq!(lnotab_line(&table, 10, 5, true), Some(10));
        assert_eq!(lnotab_line(&table, 10, 6, true), Some(11));
        assert_eq!(lnotab_line(&table, 10, 25, true), Some(9));
        assert_eq!(lnotab_line(&table, 10, 300, true), Some(15));
    }

    #[test]
    fn python_2_lnotab_line_increments_are_unsigned() {
        // 2.7 splits a jump of 300 lines into 255 + 45; a byte of 0xfe is +254, not -2.
        let table = [0, 255, 4, 45, 6, 0xfe];
        assert_eq!(lnotab_line(&table, 1, 0, false), Some(256));
        assert_eq!(lnotab_line(&table, 1, 4, false), Some(301));
        assert_eq!(lnotab_line(&table, 1, 10, false), Some(555));
        assert_eq!(lnotab_line(&table, 1, 10, true), Some(43));
    }

    #[test]
    fn lines310_finds_the_range_of_the_offset() {
        // [0,4): line 5+1, [4,10): no line, [10,14): line 6+2.
        let table = [4, 1, 6, 0x80, 4, 2];
        assert_eq!(lines310_line(&table, 5, 0), Some(6));
        assert_eq!(lines310_line(&table, 5, 3), Some(6));
        assert_eq!(lines310_line(&table, 5, 4), None);
        assert_eq!(lines310_line(&table, 5, 12), Some(8));
        assert_eq!(lines310_line(&table, 5, 14), None);
    }

    #[test]
    fn location_table_entries_of_every_form() {
        let mut table = Vec::new();
        // Short form (code 0), 2 units, line stays 20.
        table.extend_from_slice(&[0x80 | 1, 0x05]);
        // One-line form (code 11): +1 line, 1 unit.
        table.extend_from_slice(&[0x80 | (11 << 3), 0x02, 0x08]);
        // No-column form (code 13): line delta -3 (svarint 7), 3 units.
        table.extend_from_slice(&[0x80 | (13 << 3) | 2, 7]);
        // Long form (code 14): +40 lines (svarint 80 = 0x50: two 6-bit chunks), 1 unit.
        table.extend_from_slice(&[0x80 | (14 << 3), 0x40 | (80 & 63), 80 >> 6, 0, 1, 2]);
        // No location (code 15), 1 unit.
        table.push(0x80 | (15 << 3));
        assert_eq!(locations_line(&table, 20, 0), Some(20));
        assert_eq!(locations_line(&table, 20, 1), Some(20));
        assert_eq!(locations_line(&table, 20, 2), Some(21));
        assert_eq!(locations_line(&table, 20, 3), Some(18));
        assert_eq!(locations_line(&table, 20, 5), Some(18));
        assert_eq!(locations_line(&table, 20, 6), Some(58));
        assert_eq!(locations_line(&table, 20, 7), None);
        assert_eq!(locations_line(&table, 20, 8), None);
    }

    #[test]
    fn garbage_line_tables_end_without_panicking() {
        let mut state = 12345u64;
        for _ in 0..2000 {
            let table: Vec<u8> = (0..64)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 33) as u8
                })
                .collect();
            let _ = locations_line(&table, 1, 40);
            let _ = lines310_line(&table, 1, 40);
            let _ = lnotab_line(&table, 1, 40, true);
            let _ = lnotab_line(&table, 1, 40, false);
        }
    }

    #[test]
    fn a_first_line_at_the_end_of_the_int_range_does_not_overflow() {
        // co_firstlineno comes from the target: garbage may be i32::MAX.
        assert_eq!(lnotab_line(&[2, 1], i32::MAX, 4, true), Some(i32::MAX));
        assert_eq!(lnotab_line(&[2, 255], i32::MAX, 4, false), Some(i32::MAX));
        assert_eq!(lines310_line(&[4, 1], i32::MAX, 0), Some(i32::MAX));
        assert_eq!(
            locations_line(&[0x80 | (12 << 3), 0, 0], i32::MAX, 0),
            Some(i32::MAX)
        );
    }

    use crate::python::layout::table_for;
    use crate::python::version::Version;
    use crate::target::memory::MemoryImage;
    use std::cell::Cell;

    /// Memory that is one image for the first `switch_at` reads and another after: a
    /// thread that moved while its stack was read.
    struct Racing {
        before: MemoryImage,
        after: MemoryImage,
        reads: Cell<usize>,
        switch_at: usize,
    }

    impl Memory for Racing {
        fn read_exact(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
            let n = self.reads.get();
            self.reads.set(n + 1);
            if n < self.switch_at {
                self.before.read_exact(addr, buf)
            } else {
                self.after.read_exact(addr, buf)
            }
        }
    }

    const TSTATE: u64 = 0x10000;
    const CFRAME: u64 = 0x20000;
    const OUTER: u64 = 0x30000;
    const GEN: u64 = 0x30100;

    fn put(image: &mut [(u64, Vec<u8>)], addr: u64, offset: usize, value: u64) {
        let region = image.iter_mut().find(|(a, _)| *a == addr).unwrap();
        region.1[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// A 3.12 thread whose stack is outer() -> gen(); `linked` says whether gen's frame
    /// points back at outer's (a generator that yielded is unlinked).
    fn thread_3_12(linked: bool) -> (StackLayout, MemoryImage) {
        let (layout, regions) = regions_3_12(linked);
        (layout, image_of(regions))
    }

    fn image_of(regions: Vec<(u64, Vec<u8>)>) -> MemoryImage {
        let mut image = MemoryImage::new();
        for (addr, bytes) in regions {
            image.add(addr, bytes);
        }
        image
    }

    /// [`thread_3_12`]'s memory, as regions to change before making the image.
    fn regions_3_12(linked: bool) -> (StackLayout, Vec<(u64, Vec<u8>)>) {
        let layout = table_for(&Version::new(3, 12, 1)).unwrap().stack.unwrap();
        let mut regions: Vec<(u64, Vec<u8>)> = Vec::new();
        regions.push((TSTATE, vec![0; 512]));
        put(&mut regions, TSTATE, 56, CFRAME);
        regions.push((CFRAME, vec![0; 16]));
        put(&mut regions, CFRAME, 0, GEN);
        let ty = 0x50000;
        regions.push((ty, vec![0; 64]));
        put(&mut regions, ty, 24, ty + 32);
        regions.last_mut().unwrap().1[32..37].copy_from_slice(b"code\0");
        let empty_bytes = 0x58000;
        regions.push((empty_bytes, vec![0; 40]));
        for (i, (frame, name, previous)) in [
            (OUTER, "outer", 0),
            (GEN, "gen", if linked { OUTER } else { 0 }),
        ]
        .into_iter()
        .enumerate()
        {
            let code = 0x60000 + 0x1000 * i as u64;
            let text = 0x70000 + 0x1000 * i as u64;
            let mut string = vec![0u8; 40];
            string[16..24].copy_from_slice(&(name.len() as u64).to_le_bytes());
            string[32..36].copy_from_slice(&((1u32 << 2) | (1 << 5) | (1 << 6)).to_le_bytes());
            string.extend_from_slice(name.as_bytes());
            regions.push((text, string));
            regions.push((code, vec![0; 256]));
            put(&mut regions, code, 8, ty);
            for field in [112, 120, 128] {
                put(&mut regions, code, field, text);
            }
            put(&mut regions, code, 136, empty_bytes);
            regions.push((frame, vec![0; 80]));
            put(&mut regions, frame, 0, code);
            put(&mut regions, frame, 8, previous);
            put(&mut regions, frame, 56, code + 192);
        }
        // gen()'s frame is its generator's (`owner` 1, FRAME_OWNED_BY_GENERATOR).
        regions.iter_mut().find(|(a, _)| *a == GEN).unwrap().1[70] = 1;
        (layout, regions)
    }

    fn functions(reader: &StackReader, id: StackId) -> Vec<String> {
        reader
            .table
            .frames(id)
            .map(|f| f.function.to_string())
            .collect()
    }

    /// Read until a read confirms (a first read learns where the stack lives), at most 3 times.
    fn settled(reader: &mut StackReader, memory: &dyn Memory) -> Result<StackId, StackError> {
        let mut read = reader.read(memory, TSTATE);
        for _ in 1..3 {
            if read.is_ok() {
                break;
            }
            read = reader.read(memory, TSTATE);
        }
        read
    }

    #[test]
    fn a_walk_cut_short_by_a_yielding_generator_is_dropped() {
        let (layout, linked) = thread_3_12(true);
        let mut reader = StackReader::new(layout);
        let first = settled(&mut reader, &linked).unwrap();
        assert_eq!(functions(&reader, first), ["outer", "gen"]);
        // A generator's frame that yielded is unlinked from its caller: read at that moment,
        // the stack would be gen() alone, and is not believed.
        let (layout, unlinked) = thread_3_12(false);
        let mut reader = StackReader::new(layout);
        assert_eq!(settled(&mut reader, &unlinked), Err(StackError::Moved));
    }

    #[test]
    fn a_stack_that_moved_between_the_two_copies_is_not_believed() {
        let (layout, linked) = thread_3_12(true);
        let mut reader = StackReader::new(layout);
        settled(&mut reader, &linked).unwrap();
        let (_, unlinked) = thread_3_12(false);
        // The planned read copies the thread state, its cframe and both frames, then all four
        // again: the generator yields between the two copies.
        let racing = Racing {
            before: linked,
            after: unlinked,
            reads: Cell::new(0),
            switch_at: 4,
        };
        assert_eq!(reader.read(&racing, TSTATE), Err(StackError::Moved));
    }

    #[test]
    fn a_chain_of_frames_that_loops_is_a_torn_walk_not_a_deep_stack() {
        // gen -> outer -> gen -> ...: two frames pointing at each other.
        let (layout, mut regions) = regions_3_12(true);
        put(&mut regions, OUTER, 8, GEN);
        let image = image_of(regions);
        let mut reader = StackReader::new(layout);
        // Never a stack of MAX_FRAMES frames under the "deeper frames not read" marker.
        for _ in 0..3 {
            assert_eq!(reader.read(&image, TSTATE), Err(StackError::Moved));
        }
    }

    /// A 3.12 thread `depth` calls of recurse() deep under outer(), every frame outside
    /// a data-stack chunk (as frames of older chunks and generators are).
    fn deep_thread_3_12(depth: usize) -> (StackLayout, MemoryImage) {
        let (layout, mut regions) = regions_3_12(true);
        let gen_code = 0x61000;
        let first = 0x100000u64;
        let mut previous = OUTER;
        for i in 0..depth {
            let frame = first + 0x80 * i as u64;
            regions.push((frame, vec![0; 80]));
            put(&mut regions, frame, 0, gen_code);
            put(&mut regions, frame, 8, previous);
            put(&mut regions, frame, 56, gen_code + 192);
            previous = frame;
        }
        put(&mut regions, CFRAME, 0, previous);
        (layout, image_of(regions))
    }

    #[test]
    fn a_deep_stack_is_read_whole_up_to_the_frame_limit_and_marked_beyond() {
        // The confirming copy must hold every frame the walk took: a plan that kept only
        // some of them lost every stack deeper than that (2,000 frames in tests/record.rs).
        for depth in [600, 2000, MAX_FRAMES - 1] {
            let (layout, image) = deep_thread_3_12(depth);
            let mut reader = StackReader::new(layout);
            for attempt in 0..3 {
                // The first read learns where the frames are, later ones read by the plan.
                let stack = reader
                    .read(&image, TSTATE)
                    .unwrap_or_else(|e| panic!("depth {depth}, read {attempt}: {e:?}"));
                let names = functions(&reader, stack);
                assert_eq!(names.len(), depth + 1, "depth {depth}, read {attempt}");
                assert_eq!(names[0], "outer");
                assert!(names[1..].iter().all(|n| n == "gen"));
            }
        }
        // Deeper than the limit: the innermost MAX_FRAMES frames under the marker.
        let (layout, image) = deep_thread_3_12(MAX_FRAMES + 100);
        let mut reader = StackReader::new(layout);
        for attempt in 0..3 {
            let stack = reader
                .read(&image, TSTATE)
                .unwrap_or_else(|e| panic!("read {attempt}: {e:?}"));
            let names = functions(&reader, stack);
            assert_eq!(names.len(), MAX_FRAMES + 1, "read {attempt}");
            assert_eq!(names[0], TRUNCATED);
            assert!(names[1..].iter().all(|n| n == "gen"));
        }
    }

    /// Free-threaded 3.14+: gen() runs in its thread's copy of the bytecode (`tlbc_index`
    /// 1), so its line comes from its offset in that copy; outer() runs the code object's
    /// own bytecode (index 0).
    #[test]
    fn an_instruction_in_a_thread_s_bytecode_copy_is_read_from_that_copy() {
        let (mut layout, mut regions) = regions_3_12(true);
        if let FrameFields::Interpreter { tlbc_index, .. } = &mut layout.frame {
            *tlbc_index = Some(72);
        }
        layout.code.thread_local_bytecode = Some(ThreadLocalBytecode {
            array: 224,
            code_units: 16,
        });
        // One one-line entry (code 11: the next line) per code unit: unit i is line i + 1.
        let table = 0x58100;
        let mut bytes = vec![0u8; 32];
        bytes[16..24].copy_from_slice(&24u64.to_le_bytes());
        for _ in 0..8 {
            bytes.extend([0x80 | 11 << 3, 0, 0]);
        }
        regions.push((table, bytes));
        let (array, copy, outer_code, gen_code) = (0x80000, 0x90000, 0x60000, 0x61000);
        regions.push((copy, vec![0; 16]));
        regions.push((array, vec![0; 24]));
        put(&mut regions, array, 0, 2);
        put(&mut regions, array, 8, outer_code + 192);
        put(&mut regions, array, 16, copy);
        for code in [outer_code, gen_code] {
            put(&mut regions, code, 136, table);
            put(&mut regions, code, 16, 8);
            put(&mut regions, code, 224, array);
        }
        put(&mut regions, OUTER, 56, outer_code + 192 + 2);
        put(&mut regions, GEN, 56, copy + 6);
        put(&mut regions, GEN, 72, 1);
        let mut reader = StackReader::new(layout);
        let image = image_of(regions.clone());
        let stack = settled(&mut reader, &image).unwrap();
        let lines: Vec<u32> = reader.table.frames(stack).map(|f| f.line).collect();
        assert_eq!(lines, [2, 4]);
        // An index past the array, or an instruction outside the copy, is a torn read.
        for (index, instr) in [(5, copy + 6), (1, copy + 64)] {
            put(&mut regions, GEN, 72, index);
            put(&mut regions, GEN, 56, instr);
            assert_eq!(
                settled(&mut reader, &image_of(regions.clone())),
                Err(StackError::Moved),
                "index {index}, instruction {instr:#x}"
            );
        }
    }
}
