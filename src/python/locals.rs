//! A thread's variables frame by frame (`dump --locals`): the names each code object gives its
//! frame's slots, and what the slots hold. Frames come from the stack walk; it never classifies.

use std::collections::HashMap;
use std::sync::Arc;

use super::layout::{Layout, LocalsLayout, StackLayout, VariableNames};
use super::objects;
use super::stack::{FrameAt, StackError, StackReader};
use super::thread_names::object_layout;
use super::values::{Value, ValueReader};
use super::version::Version;
use crate::stack::StackId;
use crate::target::memory::{check_pointer, i32_at, u64_at, Memory, ReadError};

/// Frames whose variables are read, innermost first: the rest of a deep stack is shown
/// without them.
pub const MAX_FRAMES_WITH_VARIABLES: usize = 256;
/// Variables of one frame read; the rest are counted, not read.
pub const MAX_VARIABLES: usize = 1024;
/// Objects read for one thread's variables (each a few bounded reads of the target, at most
/// about 1,100 for one variable: [`super::values::MAX_DEPTH`] levels of previews): past it,
/// the remaining variables and frames are counted, not read, so that a target with deep
/// stacks of large frames cannot make a dump take long.
pub const MAX_OBJECTS_PER_THREAD: usize = 20_000;
/// Walks of a thread's stack before it counts as moving too much to be read.
const ATTEMPTS: usize = 3;
/// Code objects whose names are remembered; past this the cache starts over.
const MAX_CODES: usize = 16_384;
/// `co_flags`: the function takes `*args`, `**kwargs` (each one more argument slot).
const CO_VARARGS: i32 = 0x04;
const CO_VARKEYWORDS: i32 = 0x08;
/// 3.11+ `co_localspluskinds`: a slot that holds a cell (its own, or from the closure), and
/// one that is not a variable of the source (an inlined comprehension's).
const KIND_CELL: u8 = 0x40;
const KIND_FREE: u8 = 0x80;
const KIND_HIDDEN: u8 = 0x10;

/// What a variable is to its function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableKind {
    Argument,
    Local,
    /// A local that inner functions use (the frame holds it in a cell).
    Cell,
    /// A variable of an enclosing function (reached through the closure's cell).
    Free,
}

impl VariableKind {
    pub fn name(self) -> &'static str {
        match self {
            VariableKind::Argument => "argument",
            VariableKind::Local => "local",
            VariableKind::Cell => "cell",
            VariableKind::Free => "free",
        }
    }
}

/// One variable of a frame that has a value.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: Arc<str>,
    pub kind: VariableKind,
    pub value: Value,
}

/// One frame's variables.
#[derive(Debug, Clone, Default)]
pub struct FrameVariables {
    /// Variables with a value, in the code object's order (arguments first); unbound ones
    /// are left out.
    pub variables: Vec<Variable>,
    /// Variables past [`MAX_VARIABLES`], not read.
    pub not_read: usize,
    /// Its code object's names could not be read.
    pub unreadable: bool,
}

/// A thread's stack and each frame's variables.
#[derive(Debug, Clone)]
pub struct ThreadLocals {
    pub stack: StackId,
    /// Innermost first, for the innermost [`MAX_FRAMES_WITH_VARIABLES`] Python frames.
    pub frames: Vec<FrameVariables>,
}

/// A slot of a frame: its name, what the variable is, and whether the slot holds a cell.
#[derive(Debug)]
struct Slot {
    name: Arc<str>,
    kind: VariableKind,
    in_cell: bool,
    /// 3.12+: not a variable of the source (an inlined comprehension's): not shown.
    hidden: bool,
}

/// What a code object says about its frame's slots, read once.
#[derive(Debug)]
struct CodeSlots {
    /// The fields it was read from: another code object at a recycled address differs.
    fingerprint: [u64; 4],
    slots: Vec<Slot>,
    /// Slots past [`MAX_VARIABLES`].
    not_read: usize,
}

/// Reads the variables of one interpreter's frames.
pub struct LocalsReader {
    layout: LocalsLayout,
    strings: StackLayout,
    values: ValueReader,
    codes: HashMap<u64, Arc<CodeSlots>>,
    /// [`ValueReader::objects_read`] when the current read of a thread began.
    thread_start: usize,
}

impl LocalsReader {
    /// None where the version's frames or objects are not known well enough (2.7).
    pub fn new(version: &Version, layout: &Layout) -> Option<LocalsReader> {
        let strings = layout.stack?;
        Some(LocalsReader {
            layout: strings.locals?,
            values: ValueReader::new(strings, object_layout(version, layout.free_threaded)?)?,
            strings,
            codes: HashMap::new(),
            thread_start: 0,
        })
    }

    /// The stack of the thread state at `tstate` and the variables of its frames. The stack
    /// is walked again after the variables are read: the same frames must still be there
    /// (a thread that returned and called again in between gets another try).
    pub fn read(
        &mut self,
        memory: &dyn Memory,
        stacks: &mut StackReader,
        tstate: u64,
    ) -> Result<ThreadLocals, StackError> {
        let mut last = StackError::Moved;
        for _ in 0..ATTEMPTS {
            let (stack, frames) = match stacks.read_frames(memory, tstate) {
                Ok(read) => read,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            self.thread_start = self.values.objects_read();
            let mut variables = Vec::new();
            for at in frames.iter().take(MAX_FRAMES_WITH_VARIABLES) {
                if self.over_budget() {
                    break;
                }
                variables.push(self.frame(memory, at)?);
            }
            match stacks.read_frames(memory, tstate) {
                Ok((_, again)) if again == frames => {
                    return Ok(ThreadLocals {
                        stack,
                        frames: variables,
                    })
                }
                Ok(_) => last = StackError::Moved,
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// One frame's variables. Only the end of the target (or of our right to read it) is
    /// an error; anything else leaves the frame or the value unreadable.
    fn frame(&mut self, memory: &dyn Memory, at: &FrameAt) -> Result<FrameVariables, ReadError> {
        let code = match self.code(memory, at.code) {
            Ok(code) => code,
            Err(e @ (ReadError::Gone | ReadError::Denied)) => return Err(e),
            Err(_) => {
                return Ok(FrameVariables {
                    unreadable: true,
                    ..FrameVariables::default()
                })
            }
        };
        let tagged = self.layout.tagged_slots;
        let mut variables = Vec::new();
        let mut not_read = code.not_read;
        for (i, slot) in code.slots.iter().enumerate() {
            if slot.hidden {
                continue;
            }
            if self.over_budget() {
                not_read += code.slots[i..].iter().filter(|s| !s.hidden).count();
                break;
            }
            let location = at.frame + self.layout.frame_slots + 8 * i as u64;
            let value = match self.slot_value(memory, location, slot.in_cell, tagged) {
                Ok(value) => value,
                Err(e @ (ReadError::Gone | ReadError::Denied)) => return Err(e),
                Err(_) => Some(Value::Unreadable { addr: location }),
            };
            if let Some(value) = value {
                variables.push(Variable {
                    name: slot.name.clone(),
                    kind: slot.kind,
                    value,
                });
            }
        }
        Ok(FrameVariables {
            variables,
            not_read,
            unreadable: false,
        })
    }

    /// This thread's variables have cost [`MAX_OBJECTS_PER_THREAD`] objects already.
    fn over_budget(&self) -> bool {
        self.values.objects_read() - self.thread_start >= MAX_OBJECTS_PER_THREAD
    }

    /// What the slot at `location` holds: for a cell, the cell's content; None if unbound
    /// (or an empty cell).
    fn slot_value(
        &mut self,
        memory: &dyn Memory,
        location: u64,
        in_cell: bool,
        tagged: bool,
    ) -> Result<Option<Value>, ReadError> {
        if in_cell {
            let bits = memory.read_u64(location)?;
            let object = if tagged { bits & !3 } else { bits };
            let content = match bits & 3 {
                3 if tagged => None,
                _ => self.values.cell_content(memory, object)?,
            };
            if let Some(content) = content {
                let value = self.values.value_at(memory, content, false)?;
                // The slot's cell is the frame's for its whole life; another one means the
                // frame is another call's now.
                if memory.read_u64(location)? != bits {
                    return Ok(Some(Value::Changed));
                }
                return Ok(value);
            }
        }
        self.values.value_at(memory, location, tagged)
    }

    /// The slots of the code object at `addr`, from the cache if it is the same object.
    fn code(&mut self, memory: &dyn Memory, addr: u64) -> Result<Arc<CodeSlots>, ReadError> {
        check_pointer(addr, 8)?;
        let layout = self.layout;
        let (first, second, third) = match layout.names {
            VariableNames::Split {
                varnames,
                cellvars,
                freevars,
            } => (varnames, cellvars, freevars),
            VariableNames::Combined { names, kinds } => (names, kinds, names),
        };
        let size = [
            first,
            second,
            third,
            layout.argcount,
            layout.flags,
            layout.kwonlyargcount.unwrap_or(0),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 8;
        let block = memory.read_bytes(addr, size as usize)?;
        let bad = || ReadError::BadPointer { addr };
        let word = |at| u64_at(&block, at).ok_or_else(bad);
        let int = |at| i32_at(&block, at).ok_or_else(bad);
        let counts = |value: i32| u64::try_from(value).map_err(|_| bad());
        let flags = int(layout.flags)?;
        let arguments = counts(int(layout.argcount)?)?
            + match layout.kwonlyargcount {
                Some(at) => counts(int(at)?)?,
                None => 0,
            }
            + u64::from(flags & CO_VARARGS != 0)
            + u64::from(flags & CO_VARKEYWORDS != 0);
        let fingerprint = [word(first)?, word(second)?, word(third)?, arguments];
        if let Some(code) = self
            .codes
            .get(&addr)
            .filter(|c| c.fingerprint == fingerprint)
        {
            return Ok(code.clone());
        }
        let argument = |i: usize, otherwise: VariableKind| {
            if (i as u64) < arguments {
                VariableKind::Argument
            } else {
                otherwise
            }
        };
        let mut slots = Vec::new();
        let mut total = 0;
        match layout.names {
            VariableNames::Split { .. } => {
                // A cell argument's value moves into its cell when the call starts: its
                // own slot is then empty, and the cell has the argument's name.
                for (tuple, kind) in [
                    (fingerprint[0], VariableKind::Local),
                    (fingerprint[1], VariableKind::Cell),
                    (fingerprint[2], VariableKind::Free),
                ] {
                    let (length, names) = self.names(memory, tuple, MAX_VARIABLES - slots.len())?;
                    for name in names {
                        let index = slots.len();
                        slots.push(Slot {
                            name,
                            kind: match kind {
                                VariableKind::Local => argument(index, kind),
                                _ => kind,
                            },
                            in_cell: kind != VariableKind::Local,
                            hidden: false,
                        });
                    }
                    total += length;
                }
            }
            VariableNames::Combined { .. } => {
                let (length, names) = self.names(memory, fingerprint[0], MAX_VARIABLES)?;
                let kinds = objects::read_bytes_object(memory, fingerprint[1], &self.strings)?;
                if kinds.len() as u64 != length {
                    return Err(bad());
                }
                for (i, (name, kind)) in names.into_iter().zip(kinds).enumerate() {
                    let in_cell = kind & (KIND_CELL | KIND_FREE) != 0;
                    let otherwise = match kind {
                        _ if kind & KIND_FREE != 0 => VariableKind::Free,
                        _ if kind & KIND_CELL != 0 => VariableKind::Cell,
                        _ => VariableKind::Local,
                    };
                    slots.push(Slot {
                        name,
                        kind: argument(i, otherwise),
                        in_cell,
                        hidden: kind & KIND_HIDDEN != 0,
                    });
                }
                total = length;
            }
        }
        let code = Arc::new(CodeSlots {
            fingerprint,
            not_read: (total as usize).saturating_sub(slots.len()),
            slots,
        });
        if self.codes.len() >= MAX_CODES {
            self.codes.clear();
        }
        self.codes.insert(addr, code.clone());
        Ok(code)
    }

    /// A tuple of names: its length and its first `most` names.
    fn names(
        &self,
        memory: &dyn Memory,
        tuple: u64,
        most: usize,
    ) -> Result<(u64, Vec<Arc<str>>), ReadError> {
        check_pointer(tuple, 8)?;
        let objects = self.layout.objects;
        let length = memory.read_u64(tuple + objects.var_size)?;
        if length > 1 << 20 {
            return Err(ReadError::BadPointer { addr: tuple });
        }
        let read = length.min(most as u64) as usize;
        let mut names = Vec::with_capacity(read);
        if read > 0 {
            let items = memory.read_bytes(tuple + objects.tuple_items, 8 * read)?;
            for item in items.chunks_exact(8) {
                let name = u64_at(item, 0).unwrap_or(0);
                names.push(objects::read_name(memory, name, &self.strings)?.into());
            }
        }
        Ok((length, names))
    }
}
