//! Native (C, C++, Rust) stacks of the target's threads, taken without ever stopping it: capture
//! of registers and stack bytes, CFI unwinding, symbols, and the merge with Python frames.
//! Nothing here knows CPython's structures: python/ supplies the Python frames and the anchors.
//!
//! Two ways to capture a thread's registers and the top of its stack, neither of which stops
//! anything (no ptrace, no signal):
//! - a thread asleep in a system call ([`syscall`]): /proc/PID/task/TID/syscall gives its user
//!   stack pointer and program counter, and its stack does not move while it sleeps, so one
//!   read of the stack and a CFI unwind give its exact native stack;
//! - a thread on a CPU ([`perf`]): the kernel copies its user registers and the top of its
//!   stack at perf sampling interrupts (as `perf record --call-graph dwarf` does).

pub mod merge;
pub mod perf;
pub mod switches;
pub mod symbols;
pub mod syscall;
pub mod unwind;

/// Deepest native stack unwound: deeper stacks keep their innermost frames.
pub const MAX_NATIVE_FRAMES: usize = 512;

/// CLOCK_MONOTONIC now (ns): the clock of the sampler's ticks and of perf samples.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The registers an unwind starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registers {
    /// The instruction pointer.
    pub pc: u64,
    pub sp: u64,
    /// The frame pointer, where known: /proc/PID/task/TID/syscall does not give it.
    pub bp: Option<u64>,
}

/// One native frame, as the unwind found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeFrame {
    /// The instruction pointer (innermost frame) or return address (callers).
    pub address: u64,
    /// The frame was reached through a return address: look up `address - 1`, the call
    /// instruction, not the instruction after it (which may belong to the next function).
    pub is_return: bool,
    /// The stack pointer while this frame ran (its lowest stack address).
    pub stack_pointer: u64,
    /// Where its caller's stack begins (its canonical frame address), when the unwind got
    /// that far: the frame's locals lie in `stack_pointer..frame_end`.
    pub frame_end: Option<u64>,
}

impl NativeFrame {
    /// The address to look symbols up by.
    pub fn lookup_address(&self) -> u64 {
        if self.is_return {
            self.address.saturating_sub(1)
        } else {
            self.address
        }
    }

    /// Does this frame's own stack memory hold `addr` (a local variable of the function)?
    pub fn holds(&self, addr: u64) -> bool {
        self.frame_end
            .is_some_and(|end| (self.stack_pointer..end).contains(&addr))
    }
}

/// How an unwind ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackEnd {
    /// The root function was reached (the thread's start routine or `_start`).
    Root,
    /// The unwind stopped short: the stack copy ended, a frame had no unwind information,
    /// or [`MAX_NATIVE_FRAMES`] were read. The frames found are the innermost ones.
    Truncated,
}

/// How a stack was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Asleep in a system call: the exact stack at the time of the read.
    Syscall,
    /// A perf sample of a thread on a CPU, taken at this CLOCK_MONOTONIC time (ns).
    Perf { time_ns: u64 },
}

/// A thread's native stack, innermost frame first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeStack {
    pub frames: Vec<NativeFrame>,
    pub end: StackEnd,
    pub capture: Capture,
}

/// Why a native stack could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureError {
    /// The thread is on a CPU (or runnable) and no perf sample of it is at hand.
    Running,
    /// The thread woke up or moved while its stack was read: dropped, never reported.
    Moved,
    /// The thread or the process is gone.
    Gone,
    /// perf_event_open was refused (errno): perf_event_paranoid, seccomp, no permission.
    PerfUnavailable(i32),
    /// Another reason, said in words.
    Failed(String),
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CaptureError::Running => write!(f, "the thread is running and has no perf sample"),
            CaptureError::Moved => write!(f, "the thread moved while its stack was read"),
            CaptureError::Gone => write!(f, "the thread has exited"),
            CaptureError::PerfUnavailable(errno) => write!(
                f,
                "perf_event_open refused: {}",
                std::io::Error::from_raw_os_error(*errno)
            ),
            CaptureError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for CaptureError {}
