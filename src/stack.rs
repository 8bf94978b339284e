//! Frames and stacks in the product's own terms, whatever read them: Python frames from the
//! interpreter's memory, native frames from an unwinder, markers gilscope adds. Each frame
//! and stack is stored once and named by an id. Pure data: it reads nothing and draws nothing.

use std::collections::HashMap;
use std::sync::Arc;

/// Where a frame came from, which decides how formats draw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    /// A Python function, read from the interpreter's frames.
    Python,
    /// A machine-code function (C, C++, Rust) of the interpreter or an extension.
    Native,
    /// A frame that stands for something gilscope could not read, such as the deeper frames
    /// of a stack too deep to read whole: its `function` says what.
    Marker,
}

impl FrameKind {
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Python => "python",
            FrameKind::Native => "native",
            FrameKind::Marker => "marker",
        }
    }
}

/// One frame as shown to users.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frame {
    pub kind: FrameKind,
    /// The function's name: qualified on Python 3.11+, demangled for native code.
    pub function: Arc<str>,
    /// The source file ("" when not known: a marker, a native frame without debug info).
    pub file: Arc<str>,
    /// 0 when not known.
    pub line: u32,
    /// The shared object or executable a native frame's code lies in ("" for others).
    pub module: Arc<str>,
}

impl Frame {
    pub fn python(function: Arc<str>, file: Arc<str>, line: u32) -> Frame {
        Frame {
            kind: FrameKind::Python,
            function,
            file,
            line,
            module: "".into(),
        }
    }

    pub fn native(function: Arc<str>, module: Arc<str>, file: Arc<str>, line: u32) -> Frame {
        Frame {
            kind: FrameKind::Native,
            function,
            file,
            line,
            module,
        }
    }

    pub fn marker(what: &str) -> Frame {
        Frame {
            kind: FrameKind::Marker,
            function: what.into(),
            file: "".into(),
            line: 0,
            module: "".into(),
        }
    }
}

/// Where a stack is summed up in one line (a report's "where", blame, findings): a frame,
/// and for a native one the innermost Python frame under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Place {
    pub frame: FrameId,
    /// The innermost Python frame the native `frame` was called from (None for a Python
    /// frame, or native code that no Python called).
    pub caller: Option<FrameId>,
}

/// Is `module` the C library, its loader or the kernel's vDSO: code a program calls into
/// (a system call's wrapper, a lock), rarely the place to blame?
fn is_system_module(module: &str) -> bool {
    let name = module.rsplit('/').next().unwrap_or(module);
    [
        "libc.so",
        "libc-",
        "libpthread",
        "ld-linux",
        "ld64.so",
        "[vdso]",
        "linux-vdso",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
}

/// The function name of the marker frame at the root of a truncated stack.
pub const TRUNCATED: &str = "[deeper frames not read]";
/// The function name of the one frame of the stack of a sample whose stack could not be read
/// consistently (it changed under every read within the tick).
pub const NOT_CAPTURED: &str = "[stack not captured]";

/// The function name of the marker frame that stands for every stack seen after the table
/// was full.
pub const OVER_BUDGET: &str = "[stacks beyond gilscope's memory budget]";

/// Bytes of frames and stacks one table may hold (as counted by [`StackTable`], about half of
/// what they take with the maps' overhead). The target chooses its names and how many
/// distinct ones it makes: a program that makes a function of a new 4,096-character name
/// every millisecond would otherwise grow a root gilscope by 4 MB a second until the host
/// runs out of memory. A large application's stacks over a long recording take a tenth.
pub const MAX_TABLE_BYTES: usize = 256 << 20;

pub type FrameId = u32;
pub type StackId = u32;

/// Every distinct frame and stack seen, each stored once, within a memory budget: past it,
/// new frames and stacks are all the one marker [`OVER_BUDGET`], counted in
/// [`StackTable::over_budget`]. Stacks are root first.
#[derive(Debug, Clone)]
pub struct StackTable {
    frames: Vec<Frame>,
    frame_ids: HashMap<Frame, FrameId>,
    stacks: Vec<Arc<[FrameId]>>,
    stack_ids: HashMap<Arc<[FrameId]>, StackId>,
    bytes: usize,
    budget: usize,
    over_budget: u64,
    /// The marker [`OVER_BUDGET`], once a frame or stack did not fit.
    marker: Option<FrameId>,
}

impl Default for StackTable {
    fn default() -> StackTable {
        StackTable::with_budget(MAX_TABLE_BYTES)
    }
}

impl StackTable {
    pub fn new() -> StackTable {
        StackTable::default()
    }

    /// A table that holds at most `budget` bytes of frames and stacks.
    pub fn with_budget(budget: usize) -> StackTable {
        StackTable {
            frames: Vec::new(),
            frame_ids: HashMap::new(),
            stacks: Vec::new(),
            stack_ids: HashMap::new(),
            bytes: 0,
            budget,
            over_budget: 0,
            marker: None,
        }
    }

    pub fn intern_frame(&mut self, frame: Frame) -> FrameId {
        if let Some(&id) = self.frame_ids.get(&frame) {
            return id;
        }
        // Stored twice (list and map), names counted as if not shared with other frames.
        let cost = 2 * std::mem::size_of::<Frame>()
            + frame.function.len()
            + frame.file.len()
            + frame.module.len()
            + 16;
        if self.bytes.saturating_add(cost) > self.budget {
            self.over_budget += 1;
            return self.over_budget_frame();
        }
        self.bytes += cost;
        self.insert_frame(frame)
    }

    fn insert_frame(&mut self, frame: Frame) -> FrameId {
        let id = self.frames.len() as FrameId;
        self.frames.push(frame.clone());
        self.frame_ids.insert(frame, id);
        id
    }

    /// The marker frame, stored outside the budget (once).
    fn over_budget_frame(&mut self) -> FrameId {
        let marker = Frame::marker(OVER_BUDGET);
        let id = match self.frame_ids.get(&marker) {
            Some(&id) => id,
            None => self.insert_frame(marker),
        };
        self.marker = Some(id);
        id
    }

    /// Intern a stack given root first.
    pub fn intern_stack(&mut self, frames: &[FrameId]) -> StackId {
        if let Some(&id) = self.stack_ids.get(frames) {
            return id;
        }
        let cost = 2 * std::mem::size_of::<Arc<[FrameId]>>()
            + 16
            + std::mem::size_of_val(frames)
            + std::mem::size_of::<StackId>();
        if self.bytes.saturating_add(cost) > self.budget {
            self.over_budget += 1;
            let marker = [self.over_budget_frame()];
            return match self.stack_ids.get(&marker[..]) {
                Some(&id) => id,
                None => self.insert_stack(&marker),
            };
        }
        self.bytes += cost;
        self.insert_stack(frames)
    }

    fn insert_stack(&mut self, frames: &[FrameId]) -> StackId {
        let id = self.stacks.len() as StackId;
        let stack: Arc<[FrameId]> = frames.into();
        self.stacks.push(stack.clone());
        self.stack_ids.insert(stack, id);
        id
    }

    /// The stack of samples whose stack was not captured, if any sample had it.
    pub fn not_captured(&self) -> Option<StackId> {
        let frame = self.frame_ids.get(&Frame::marker(NOT_CAPTURED))?;
        self.stack_ids.get(&[*frame][..]).copied()
    }

    /// How many frames and stacks were seen after the table was full (each stored as the
    /// marker [`OVER_BUDGET`]).
    pub fn over_budget(&self) -> u64 {
        self.over_budget
    }

    /// Was stack `id` cut by the budget: is it the marker [`OVER_BUDGET`], or does it hold
    /// the marker in place of a frame that did not fit?
    pub fn is_over_budget(&self, id: StackId) -> bool {
        self.marker
            .is_some_and(|marker| self.stack(id).contains(&marker))
    }

    pub fn frame(&self, id: FrameId) -> Option<&Frame> {
        self.frames.get(id as usize)
    }

    /// Every frame, in id order.
    pub fn all_frames(&self) -> impl Iterator<Item = (FrameId, &Frame)> + '_ {
        self.frames
            .iter()
            .enumerate()
            .map(|(i, f)| (i as FrameId, f))
    }

    /// A stack's frame ids, root first.
    pub fn stack(&self, id: StackId) -> &[FrameId] {
        self.stacks.get(id as usize).map(|s| &s[..]).unwrap_or(&[])
    }

    /// A stack's frames, root first.
    pub fn frames(&self, id: StackId) -> impl Iterator<Item = &Frame> + '_ {
        self.stack(id).iter().filter_map(|&f| self.frame(f))
    }

    /// The innermost frame of a stack.
    pub fn leaf(&self, id: StackId) -> Option<FrameId> {
        self.stack(id).last().copied()
    }

    /// Where a stack is summed up: its innermost frame; where that is in the C library,
    /// the native function that called into it (else the C library's entry point, such as
    /// `usleep`); and for a native frame, the Python frame it was called from.
    pub fn place(&self, id: StackId) -> Option<Place> {
        let stack = self.stack(id);
        let kind_of = |at: usize| self.frame(stack[at]).map(|f| (f.kind, &*f.module));
        let system = |at: usize| matches!(kind_of(at), Some((FrameKind::Native, module)) if is_system_module(module));
        let mut at = stack.len().checked_sub(1)?;
        if system(at) {
            while at > 0 && system(at - 1) {
                at -= 1;
            }
            if at > 0 && matches!(kind_of(at - 1), Some((FrameKind::Native, _))) {
                at -= 1;
            }
        }
        let caller = match kind_of(at) {
            Some((FrameKind::Native, _)) => stack[..at]
                .iter()
                .rev()
                .copied()
                .find(|&f| self.frame(f).is_some_and(|f| f.kind == FrameKind::Python)),
            _ => None,
        };
        Some(Place {
            frame: stack[at],
            caller,
        })
    }

    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn stacks_and_frames_are_stored_once() {
        let mut table = StackTable::new();
        let frame = |f: &str, line| Frame::python(f.into(), "a.py".into(), line);
        let a = table.intern_frame(frame("main", 1));
        let b = table.intern_frame(frame("spin", 7));
        assert_eq!(table.intern_frame(frame("main", 1)), a);
        let s1 = table.intern_stack(&[a, b]);
        assert_eq!(table.intern_stack(&[a, b]), s1);
        let s2 = table.intern_stack(&[a]);
        assert_ne!(s1, s2);
        assert_eq!(table.leaf(s1), Some(b));
        let functions: Vec<&str> = table.frames(s1).map(|f| &*f.function).collect();
        assert_eq!(functions, ["main", "spin"]);
        assert!(table.frames(99).next().is_none());
    }

    #[test]
    fn a_stack_is_placed_past_the_c_library_at_the_code_that_called_it() {
        let mut table = StackTable::new();
        let py = |t: &mut StackTable, f: &str| {
            t.intern_frame(Frame::python(f.into(), "app.py".into(), 1))
        };
        let native = |t: &mut StackTable, f: &str, m: &str| {
            t.intern_frame(Frame::native(f.into(), m.into(), "".into(), 0))
        };
        let handler = py(&mut table, "handler");
        let nap = native(&mut table, "nap", "libfoo.so");
        let usleep = native(&mut table, "usleep", "libc.so.6");
        let nanosleep = native(&mut table, "clock_nanosleep", "libc.so.6");
        let block = native(&mut table, "compress_block", "libz.so.1");
        let place = |t: &mut StackTable, frames: &[FrameId]| {
            let id = t.intern_stack(frames);
            t.place(id).unwrap()
        };
        // Asleep in the C library under an extension's function: that function.
        let p = place(&mut table, &[handler, nap, usleep, nanosleep]);
        assert_eq!((p.frame, p.caller), (nap, Some(handler)));
        // Called from Python straight into the C library: the library's entry point.
        let p = place(&mut table, &[handler, usleep, nanosleep]);
        assert_eq!((p.frame, p.caller), (usleep, Some(handler)));
        // Native code on a CPU: itself.
        let p = place(&mut table, &[handler, block]);
        assert_eq!((p.frame, p.caller), (block, Some(handler)));
        // A Python frame, or native code no Python called: no caller.
        let p = place(&mut table, &[handler]);
        assert_eq!((p.frame, p.caller), (handler, None));
        let p = place(&mut table, &[nap, usleep]);
        assert_eq!((p.frame, p.caller), (nap, None));
        let empty = table.intern_stack(&[]);
        assert!(table.place(empty).is_none());
    }

    #[test]
    fn the_stack_not_captured_is_found_once_a_sample_had_it() {
        let mut table = StackTable::new();
        assert_eq!(table.not_captured(), None);
        let marker = table.intern_frame(Frame::marker(NOT_CAPTURED));
        let other = table.intern_frame(Frame::python("f".into(), "".into(), 0));
        table.intern_stack(&[marker, other]);
        assert_eq!(table.not_captured(), None);
        let id = table.intern_stack(&[marker]);
        assert_eq!(table.not_captured(), Some(id));
    }

    #[test]
    fn past_its_budget_a_table_stores_new_stacks_as_one_marker_and_keeps_the_old_ones() {
        let budget = 64 << 10;
        let mut table = StackTable::with_budget(budget);
        let name = "f".repeat(1000);
        let frame = |i: u32| Frame::python(format!("{name}{i}").into(), "a.py".into(), i);
        let first_frame = table.intern_frame(frame(0));
        let first = table.intern_stack(&[first_frame]);
        // A target that makes a new long name at every tick: 10,000 of them, 10 MB of names.
        let mut ids = BTreeSet::new();
        for i in 1..10_000 {
            let f = table.intern_frame(frame(i));
            ids.insert(table.intern_stack(&[first_frame, f]));
        }
        let names: usize = table.all_frames().map(|(_, f)| f.function.len()).sum();
        assert!(names < budget, "{names} bytes of names kept");
        assert!(table.len() < 100, "{} stacks kept", table.len());
        let last = *ids.iter().next_back().unwrap();
        // A frame that did not fit is the marker, in whatever stack fits.
        let leaf = table.leaf(last).and_then(|f| table.frame(f)).unwrap();
        assert_eq!(&*leaf.function, OVER_BUDGET);
        assert!(table.over_budget() > 9_000);
        assert!(table.is_over_budget(last));
        assert!(!table.is_over_budget(first));
        // What was stored before stays as it was.
        assert_eq!(table.intern_frame(frame(0)), first_frame);
        assert_eq!(table.intern_stack(&[first_frame]), first);
        assert_eq!(table.frame(first_frame), Some(&frame(0)));
    }

    #[test]
    fn frames_of_different_kinds_are_different_frames() {
        let mut table = StackTable::new();
        let python = table.intern_frame(Frame::python("f".into(), "".into(), 0));
        let marker = table.intern_frame(Frame::marker("f"));
        assert_ne!(python, marker);
    }
}
