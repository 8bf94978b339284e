//! A dump: every thread of a process at one instant (its GIL state and stack), with the
//! recording that may have preceded it. Data only.

use std::collections::HashMap;

use super::{Recording, TargetInfo};
pub use crate::python::locals::{
    FrameVariables, Variable, VariableKind, MAX_FRAMES_WITH_VARIABLES,
};
pub use crate::python::values::{ContainerKind, Value};
use crate::sample::ThreadState;
use crate::stack::Frame;

/// What the kernel said of a thread at the snapshot: what the findings about stuck threads
/// rest on, with the sample's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The scheduler state letter (R running, S asleep, D uninterruptible, T stopped by a
    /// signal, t stopped by a tracer, ...).
    pub state: char,
    /// The system call it was blocked in.
    pub syscall: Option<Syscall>,
    /// The process tracing it (ptrace): its pid and name.
    pub tracer: Option<(i32, String)>,
}

/// A system call a thread was blocked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    pub number: i64,
    /// Its name, for the calls threads are commonly found blocked in.
    pub name: Option<&'static str>,
    /// A futex wait with no time limit: how a Python lock is waited on without a timeout.
    pub untimed_futex: bool,
}

/// With `dump --locals`: what was read of a thread's variables.
#[derive(Debug, Clone)]
pub enum Locals {
    /// Not asked for, or not a Python thread.
    NotAsked,
    /// This interpreter's frames or objects are not known well enough (Python 2.7).
    Unsupported,
    /// The thread's stack moved under every read.
    Moved,
    /// Each frame's variables, innermost first like `stack`: the innermost
    /// [`MAX_FRAMES_WITH_VARIABLES`] frames.
    Read(Vec<FrameVariables>),
}

/// One thread at the snapshot.
#[derive(Debug, Clone)]
pub struct ThreadSnapshot {
    pub tid: i32,
    /// Its id in its own PID namespace (a container's), where that differs.
    pub ns_tid: Option<i32>,
    pub thread_id: Option<u64>,
    pub name: String,
    pub os_name: String,
    pub state: ThreadState,
    /// Innermost frame first; None if the stack could not be read consistently (or the
    /// thread has no Python thread state).
    pub stack: Option<Vec<Frame>>,
    /// Id of the interpreter its thread state belongs to (0: the main one), where known.
    pub interpreter: Option<i64>,
    /// Index in [`Snapshot::gils`] of the GIL its interpreter uses; None without a thread
    /// state.
    pub gil: Option<usize>,
    /// Its frames' variables (`--locals`). With them, `stack` is the stack read together
    /// with the variables, a moment after the instant.
    pub locals: Locals,
    /// What the kernel said of it at the snapshot (None: it has exited since).
    pub condition: Option<Condition>,
    /// CPU time it used during the `--sample` recording (s), where it was there at both
    /// ends.
    pub sampled_cpu_s: Option<f64>,
}

/// One GIL at the instant: with subinterpreters that have their own (3.12+), several.
#[derive(Debug, Clone)]
pub struct GilSnapshot {
    /// Ids of the interpreters that use it, ascending (None: not readable, before 3.12).
    pub interpreters: Vec<Option<i64>>,
    /// A subinterpreter's own GIL (false for the main interpreter's).
    pub own: bool,
    pub locked: bool,
    /// Kernel tid of the thread holding it.
    pub holder: Option<i32>,
}

/// Every thread at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub target: TargetInfo,
    pub gil_locked: bool,
    /// Free-threaded builds: whether the GIL was on at the snapshot (None elsewhere).
    pub gil_enabled: Option<bool>,
    pub interval_us: u64,
    pub threads: Vec<ThreadSnapshot>,
    /// Every GIL, the main interpreter's first (one in a process with one interpreter).
    pub gils: Vec<GilSnapshot>,
    /// The recording made first with `--sample`.
    pub recording: Option<Recording>,
}

impl Snapshot {
    /// The fractions of the `--sample` recording, by tid.
    pub fn fractions(&self) -> HashMap<i32, [f64; ThreadState::COUNT]> {
        let Some(recording) = &self.recording else {
            return HashMap::new();
        };
        recording
            .profile
            .threads()
            .into_iter()
            .map(|t| (t.tid, t.counts.fractions_summing_to_one()))
            .collect()
    }
}
