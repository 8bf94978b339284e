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

/// The function name of the marker frame at the root of a truncated stack.
pub const TRUNCATED: &str = "[deeper frames not read]";
/// The function name of the one frame of the stack of a sample whose stack could not be read
/// consistently (it changed under every read within the tick).
pub const NOT_CAPTURED: &str = "[stack not captured]";

pub type FrameId = u32;
pub type StackId = u32;

/// Every distinct frame and stack seen, each stored once. Stacks are root first.
#[derive(Debug, Clone, Default)]
pub struct StackTable {
    frames: Vec<Frame>,
    frame_ids: HashMap<Frame, FrameId>,
    stacks: Vec<Arc<[FrameId]>>,
    stack_ids: HashMap<Arc<[FrameId]>, StackId>,
}

impl StackTable {
    pub fn new() -> StackTable {
        StackTable::default()
    }

    pub fn intern_frame(&mut self, frame: Frame) -> FrameId {
        if let Some(&id) = self.frame_ids.get(&frame) {
            return id;
        }
        let id = self.frames.len() as FrameId;
        self.frames.push(frame.clone());
        self.frame_ids.insert(frame, id);
        id
    }

    /// Intern a stack given root first.
    pub fn intern_stack(&mut self, frames: &[FrameId]) -> StackId {
        if let Some(&id) = self.stack_ids.get(frames) {
            return id;
        }
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
    fn frames_of_different_kinds_are_different_frames() {
        let mut table = StackTable::new();
        let python = table.intern_frame(Frame::python("f".into(), "".into(), 0));
        let marker = table.intern_frame(Frame::marker("f"));
        assert_ne!(python, marker);
    }
}
