//! The sampling loop: the timer, one tick of the target -> `Observation`, and the rules that
//! turn observations into classified `Sample`s. It knows nothing about how results are shown.

pub mod classify;
pub mod handoff;
pub mod native;
pub mod observe;
pub(crate) mod privileges;
pub(crate) mod schedule;
pub(crate) mod stats;

use serde::Serialize;

use crate::python::interpreter::GilState;
use crate::stack::StackId;

/// What one thread was doing at one tick, in the user's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreadState {
    /// It held the GIL.
    Hold,
    /// It was blocked on the GIL, or on its way into or out of it.
    Wait,
    /// It was on a CPU (or ready for one) without the GIL: native code.
    Running,
    /// It was blocked on something else: sleep, I/O, another lock.
    Idle,
    /// No GIL (a free-threaded build running without one): it was attached, running Python.
    /// Detached threads are running (native code) or idle by their OS state.
    Attached,
    /// No GIL: it was stopped by a stop-the-world pause (GC, fork) on its way to attaching.
    Suspended,
    /// The kernel had stopped it (state T or t: SIGSTOP, job control, a debugger): it could
    /// run no code at all, and neither held nor waited for the GIL as far as its program knew.
    Stopped,
}

impl ThreadState {
    pub const COUNT: usize = 7;
    pub const ALL: [ThreadState; ThreadState::COUNT] = [
        ThreadState::Hold,
        ThreadState::Wait,
        ThreadState::Running,
        ThreadState::Idle,
        ThreadState::Attached,
        ThreadState::Suspended,
        ThreadState::Stopped,
    ];
    /// The states of a thread under a GIL, the columns every report shows.
    pub const WITH_GIL: [ThreadState; 4] = [
        ThreadState::Hold,
        ThreadState::Wait,
        ThreadState::Running,
        ThreadState::Idle,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            ThreadState::Hold => "hold",
            ThreadState::Wait => "wait",
            ThreadState::Running => "running",
            ThreadState::Idle => "idle",
            ThreadState::Attached => "attached",
            ThreadState::Suspended => "suspended",
            ThreadState::Stopped => "stopped",
        }
    }

    pub fn index(&self) -> usize {
        *self as usize
    }
}

/// How the sampler has fared since the recording began (cumulative, for counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// Ticks that could not be read (a torn read of a moving target).
    pub errors: u64,
    /// Ticks taken later than scheduled, and their total lag (ns).
    pub late_ticks: u64,
    pub total_lag_ns: u64,
}

/// One GIL at one tick, in a process with more than one interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GilReading {
    /// Where the GIL's struct lies in the target: its identity from tick to tick.
    pub base: u64,
    /// `interp->id` of the interpreters that use it (None where it cannot be read).
    pub interpreters: Vec<Option<i64>>,
    pub state: GilState,
}

/// One thread at one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSample {
    /// Kernel thread id.
    pub tid: i32,
    /// The id it has in its own PID namespace (a container's), where that differs.
    pub ns_tid: Option<i32>,
    /// `threading.get_ident()`, for Python threads.
    pub thread_id: Option<u64>,
    pub state: ThreadState,
    /// Its Python stack at the tick, in the recording's stack table.
    pub stack: Option<StackId>,
    /// Its stack was not read at this tick but will be (see
    /// [`crate::sample::observe::ThreadObservation::deferred`]): counted without a stack
    /// until a later sample's `resolved` names it.
    pub deferred: bool,
    /// Its interpreter's GIL, an index into [`Sample::gils`] (0: the main interpreter's),
    /// and its interpreter's id; None for threads without a Python thread state, and in a
    /// process with one interpreter.
    pub gil: Option<(u16, Option<i64>)>,
    /// Its CPU time at the tick (ns) and whether that is the exact clock (perf task-clock,
    /// counted from when gilscope opened it) or schedstat's (since the thread began): only
    /// readings of one kind compare. None where not read.
    pub cpu: Option<(bool, u64)>,
}

/// One tick: the GIL and every thread of the target, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// CLOCK_MONOTONIC time of the tick (ns), comparable with perf and ftrace timestamps.
    pub time_ns: u64,
    pub gil: GilState,
    pub threads: Vec<ThreadSample>,
    /// Every GIL, the main interpreter's first, where the process has more than one
    /// interpreter (3.12+ subinterpreters may have a GIL each); empty with one interpreter,
    /// whose GIL is `gil`.
    pub gils: Vec<GilReading>,
    /// Threads whose earlier deferred ticks had this stack (None: unknown after all).
    pub resolved: Vec<(i32, Option<StackId>)>,
}

impl Sample {
    /// Threads waiting for the GIL at this tick.
    pub fn waiters(&self) -> usize {
        self.threads
            .iter()
            .filter(|t| t.state == ThreadState::Wait)
            .count()
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of ticks, perf samples and ftrace timestamps.
pub use crate::target::native::monotonic_ns;
