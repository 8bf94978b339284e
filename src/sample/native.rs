//! `--native`: each thread's native stack at a tick, merged with its Python stack (each call of
//! the evaluation loop replaced by the Python frames it runs), and which threads perf follows.
//! Never stops the target; a stack that cannot be had leaves the Python stack alone, unguessed.
//!
//! A thread asleep in a system call is unwound from /proc/PID/task/TID/syscall and its stack
//! memory; a runnable one from its latest perf sample, if that is recent. perf follows only
//! threads seen runnable lately (at most [`MAX_FOLLOWED`]): a sleeping thread costs nothing,
//! and one that has slept for [`UNFOLLOW_AFTER_NS`] is let go.

use std::collections::HashMap;
use std::sync::Arc;

use super::stats::NativeStats;
use crate::python::stack::EvalCall;
use crate::stack::{Frame, FrameId, FrameKind, StackId, StackTable};
use crate::target::memory::Memory;
use crate::target::native::merge::{self, Fit, Merged, PythonRun};
use crate::target::native::perf::PerfStacks;
use crate::target::native::symbols::Symbols;
use crate::target::native::syscall::Sleepers;
use crate::target::native::unwind::Modules;
use crate::target::native::{monotonic_ns, CaptureError, NativeStack, Registers, StackEnd};
use crate::target::task::Activity;

/// Stack bytes the kernel copies at each perf sample: deep enough for dozens of nested calls
/// of the evaluation loop, cheap enough to copy in the sampled thread's timer interrupt.
pub const PERF_STACK_BYTES: u32 = 16 * 1024;
/// Threads perf follows at most: each holds a ring buffer (about 128 KiB of locked memory).
pub const MAX_FOLLOWED: usize = 64;
/// A followed thread not seen runnable for this long is no longer followed (ns).
pub const UNFOLLOW_AFTER_NS: u64 = 2_000_000_000;
/// Shortest and longest perf period (ns of the thread's CPU time between two samples).
const MIN_PERIOD_NS: u64 = 100_000;
const MAX_PERIOD_NS: u64 = 10_000_000;
/// Oldest perf sample that stands for a runnable thread's stack (ns of wall time): its latest
/// sample is at most one period of its CPU time behind (see [`PerfStacks::latest`]), and a
/// thread that slept longer than this is no longer followed anyway.
const MAX_SAMPLE_AGE_NS: u64 = UNFOLLOW_AFTER_NS;
/// Entries remembered for native code addresses; past this the memory starts over.
const MAX_CODE_CACHE: usize = 1 << 18;

/// Functions of the interpreter itself that stay in merged stacks, for what they say about the
/// GIL or sleep; every other frame of the interpreter's own binary is left out, as py-spy does
/// (the evaluation loop's frames are replaced by the Python frames they run).
const INTERPRETER_FRAMES_SHOWN: &[&str] = &[
    "take_gil",
    "drop_gil",
    "PyEval_RestoreThread",
    "PyEval_AcquireThread",
    "PyEval_SaveThread",
    "PyGILState_Ensure",
    "PyGILState_Release",
    "time_sleep",
    "pysleep",
    "lock_PyThread_acquire_lock",
    "rlock_acquire",
    "PyThread_acquire_lock_timed",
];

/// Where every thread of a C program starts: left out of merged stacks (they are in all).
const THREAD_START_FRAMES: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
];

/// What one native code address is, as frames of the stack table.
#[derive(Debug, Clone)]
struct NativeCode {
    /// Innermost first: functions inlined at the address, then the function itself.
    frames: Arc<[FrameId]>,
    /// The function is the interpreter's evaluation loop.
    evaluator: bool,
    /// Left out of merged stacks (the interpreter's own, or a thread's start).
    hidden: bool,
}

/// How a thread's stack came out at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeOutcome {
    /// Native and Python frames merged (or the native stack alone, for a thread that runs
    /// no Python).
    Merged,
    /// No native stack at this tick: the Python stack alone.
    PythonOnly,
}

/// How `--native` samples: the perf period, and whether to follow every thread at once
/// (a snapshot, which has no time to learn which threads run).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NativeOptions {
    pub period_ns: u64,
    pub follow_every_thread: bool,
}

impl NativeOptions {
    /// One perf sample per sampling interval of a thread's CPU time (at most 10 ms apart).
    pub fn for_rate(rate_hz: f64) -> NativeOptions {
        let interval = if rate_hz > 0.0 { 1e9 / rate_hz } else { 1e7 };
        NativeOptions {
            period_ns: (interval as u64).clamp(MIN_PERIOD_NS, MAX_PERIOD_NS),
            follow_every_thread: false,
        }
    }
}

/// Native stacks of one process's threads, merged with their Python stacks.
pub struct NativeStacks {
    options: NativeOptions,
    modules: Modules,
    symbols: Symbols,
    sleepers: Sleepers,
    perf: PerfStacks,
    /// File names of the interpreter's binary (and a python executable beside a libpython).
    interpreter_modules: Vec<Arc<str>>,
    python2: bool,
    /// By lookup address, in the current stack table.
    codes: HashMap<u64, NativeCode>,
    /// Followed threads and when each was last seen runnable (ns).
    followed: HashMap<i32, u64>,
    pub stats: NativeStats,
}

impl NativeStacks {
    /// Ready to take native stacks of process `pid`, whose interpreter lives in `interpreter`
    /// (the ELF file's path, as the process maps it).
    pub fn new(
        pid: i32,
        memory: &dyn Memory,
        interpreter: &str,
        python2: bool,
        options: NativeOptions,
    ) -> std::io::Result<NativeStacks> {
        let modules = Modules::new(pid, memory, monotonic_ns())?;
        let mut interpreter_modules: Vec<Arc<str>> =
            vec![crate::target::elf::file_name(interpreter).into()];
        // A python executable beside a libpython is a `main` that calls it; an embedding
        // program (uwsgi, blender) is the user's own code and stays.
        if let Some(exe) = crate::target::process::executable(pid) {
            let name = exe.file_name().map(|n| n.to_string_lossy().into_owned());
            if let Some(name) = name.filter(|n| n.starts_with("python")) {
                interpreter_modules.push(name.into());
            }
        }
        Ok(NativeStacks {
            options,
            modules,
            symbols: Symbols::new(pid),
            sleepers: Sleepers::new(pid),
            perf: PerfStacks::new(options.period_ns, PERF_STACK_BYTES),
            interpreter_modules,
            python2,
            codes: HashMap::new(),
            followed: HashMap::new(),
            stats: NativeStats::default(),
        })
    }

    /// Why perf cannot sample the target's threads (errno), if it cannot: running threads
    /// then get their Python stacks only.
    pub fn perf_unavailable(&self) -> Option<i32> {
        self.perf.unavailable
    }

    /// The stack table was replaced: frames remembered belong to the old one.
    pub fn forget_frames(&mut self) {
        self.codes.clear();
    }

    /// Before a tick's stacks: follow its runnable threads with perf, let go of those that
    /// slept long or ended, and read what perf sampled since the last tick (the tick that
    /// began at `tick_ns`: no stack from before it will be asked for again).
    pub fn start_tick(
        &mut self,
        threads: impl Iterator<Item = (i32, bool)>,
        live: &[i32],
        tick_ns: u64,
    ) {
        let now = monotonic_ns();
        for (tid, runnable) in threads {
            if !(runnable || self.options.follow_every_thread) {
                continue;
            }
            if let Some(seen) = self.followed.get_mut(&tid) {
                *seen = now;
                continue;
            }
            if self.followed.len() >= MAX_FOLLOWED {
                self.stats.not_followed += 1;
                continue;
            }
            match self.perf.follow(tid) {
                Ok(()) => {
                    self.followed.insert(tid, now);
                    self.stats.followed_max = self.stats.followed_max.max(self.followed.len());
                }
                Err(CaptureError::PerfUnavailable(_)) => break,
                Err(_) => {}
            }
        }
        let before = self.followed.len();
        self.followed.retain(|tid, seen| {
            live.binary_search(tid).is_ok() && now.saturating_sub(*seen) < UNFOLLOW_AFTER_NS
        });
        if self.followed.len() != before {
            let mut kept: Vec<i32> = self.followed.keys().copied().collect();
            kept.sort_unstable();
            self.perf.retain(&kept);
        }
        self.sleepers.retain(live);
        self.perf.drain(tick_ns);
        self.stats.perf_samples = self.perf.read;
        self.stats.perf_lost = self.perf.lost;
    }

    /// Thread `tid`'s stack at the tick that began at `tick_ns` (when the GIL was read) and
    /// saw it doing `activity`:
    /// its native stack merged with its Python stack (`python`: the stack and its calls of
    /// the evaluation loop, read since; None for a thread that runs no Python), interned in
    /// `table`. None where neither stack is known.
    ///
    /// `still`, where the tick read the thread's exact CPU clock before its system call, says
    /// whether that clock still reads the same: a thread asleep then and still is unwound from
    /// the registers the tick read, with no file read of its own.
    #[allow(clippy::too_many_arguments)]
    pub fn stack(
        &mut self,
        tid: i32,
        activity: Activity,
        still: Option<&mut dyn FnMut() -> bool>,
        tick_ns: u64,
        python: Option<(StackId, Option<&[EvalCall]>)>,
        table: &mut StackTable,
        memory: &dyn Memory,
    ) -> (Option<StackId>, NativeOutcome) {
        let started = monotonic_ns();
        let native = self.capture(tid, activity, still, tick_ns, memory, started);
        let merged = native.and_then(|native| self.merge(&native, python, table, memory));
        let stack = match merged {
            Some(frames) => {
                self.stats.merged += 1;
                (Some(table.intern_stack(&frames)), NativeOutcome::Merged)
            }
            None => (python.map(|(id, _)| id), NativeOutcome::PythonOnly),
        };
        self.stats.native_ns += monotonic_ns().saturating_sub(started);
        stack
    }

    /// The native stack of a thread, asleep or from a recent perf sample.
    fn capture(
        &mut self,
        tid: i32,
        activity: Activity,
        still: Option<&mut dyn FnMut() -> bool>,
        tick_ns: u64,
        memory: &dyn Memory,
        now: u64,
    ) -> Option<NativeStack> {
        // The tick saw the thread asleep or runnable a moment ago: it may have changed since
        // (its Python stack was read now). Each way falls back on the other.
        let asleep = matches!(
            activity,
            Activity::Syscall { .. } | Activity::Blocked { .. }
        );
        let at_tick = match (activity, still) {
            (Activity::Syscall { sp, pc, .. } | Activity::Blocked { sp, pc }, Some(still)) => {
                let regs = Registers { pc, sp, bp: None };
                self.sleepers
                    .capture_since_tick(regs, still, memory, &mut self.modules, now)
                    .inspect(|_| self.stats.asleep += 1)
                    .ok()
            }
            _ => None,
        };
        let result = match (at_tick, asleep) {
            (Some(stack), _) => Ok(stack),
            // It ran since the tick (or no clock says): its files say where it is now.
            (None, true) => match self.asleep_stack(tid, memory, now) {
                Err(CaptureError::Running) => self.perf_stack(tid, tick_ns, memory, now),
                other => other,
            },
            (None, false) => match self.perf_stack(tid, tick_ns, memory, now) {
                Err(CaptureError::Running) => self.asleep_stack(tid, memory, now),
                other => other,
            },
        };
        match result {
            Ok(stack) => {
                self.learn_modules(tid, &stack, memory, now);
                Some(stack)
            }
            Err(CaptureError::Running) => {
                self.stats.no_sample += 1;
                None
            }
            Err(CaptureError::Moved) => {
                self.stats.moved += 1;
                None
            }
            Err(_) => {
                self.stats.failed += 1;
                None
            }
        }
    }

    /// A sleeping thread's stack, from its system call.
    fn asleep_stack(
        &mut self,
        tid: i32,
        memory: &dyn Memory,
        now: u64,
    ) -> Result<NativeStack, CaptureError> {
        let stack = self.sleepers.capture(tid, memory, &mut self.modules, now)?;
        self.stats.asleep += 1;
        Ok(stack)
    }

    /// A runnable thread's stack at the tick that began at `tick_ns`, from its latest perf
    /// sample by then, if that still stands for it (a sample from before it last slept, or
    /// one from after the GIL was read, when it may hold or wait otherwise, would not).
    fn perf_stack(
        &mut self,
        tid: i32,
        tick_ns: u64,
        memory: &dyn Memory,
        now: u64,
    ) -> Result<NativeStack, CaptureError> {
        // Read its ring now: it may have gone to sleep since the last reading.
        self.perf.drain_thread(tid, tick_ns);
        let sample = *self
            .perf
            .latest(tid, tick_ns, MAX_SAMPLE_AGE_NS)
            .ok_or(CaptureError::Running)?;
        if self.modules.module_at(sample.regs.pc).is_none() {
            self.modules.refresh_for(sample.regs.pc, memory, now);
        }
        let stack = self.perf.unwind(tid, &sample, &mut self.modules);
        self.stats.from_perf += 1;
        Ok(stack)
    }

    /// A stack that ran into code no module holds (a library loaded since the memory map was
    /// read): read the map again (at most once a second) so that the next capture goes on.
    fn learn_modules(&mut self, tid: i32, stack: &NativeStack, memory: &dyn Memory, now: u64) {
        if stack.end == StackEnd::Root {
            return;
        }
        let Some(last) = stack.frames.last() else {
            return;
        };
        let address = last.lookup_address();
        if self.modules.module_at(address).is_none()
            && self.modules.refresh_for(address, memory, now)
        {
            // Its stack as read is remembered while it sleeps: read it again next time.
            self.sleepers.forget(tid);
        }
    }

    /// The merged stack, root first; None if the two stacks do not fit (read at moments too
    /// far apart) or the Python stack has no calls to place.
    fn merge(
        &mut self,
        native: &NativeStack,
        python: Option<(StackId, Option<&[EvalCall]>)>,
        table: &mut StackTable,
        memory: &dyn Memory,
    ) -> Option<Vec<FrameId>> {
        let codes: Vec<NativeCode> = native
            .frames
            .iter()
            .map(|f| self.code_at(f.lookup_address(), table, memory))
            .collect();
        let (root_rest, runs) = match python {
            None => (Vec::new(), Vec::new()),
            Some((stack, calls)) => match split_into_calls(table.stack(stack), calls?) {
                Some(split) => split,
                None => {
                    self.stats.mismatched += 1;
                    return None;
                }
            },
        };
        let (merged, fit) = merge::merge(&native.frames, |i| codes[i].evaluator, &runs);
        if matches!(fit, Fit::Partial { unplaced_runs } if unplaced_runs > 0)
            && native.end == StackEnd::Root
        {
            // The native stack is whole, yet some Python calls have no evaluation frame in
            // it: the two were read at different moments.
            self.stats.mismatched += 1;
            return None;
        }
        let mut frames = root_rest;
        for part in merged {
            match part {
                Merged::Python(id) => frames.push(id),
                Merged::Native(i) if !codes[i].hidden => {
                    frames.extend(codes[i].frames.iter().rev());
                }
                Merged::Native(_) => {}
            }
        }
        Some(frames)
    }

    /// The frames of a native code address, named once (an address in no known module is
    /// named again once the memory map has been read again).
    fn code_at(&mut self, address: u64, table: &mut StackTable, memory: &dyn Memory) -> NativeCode {
        if let Some(code) = self.codes.get(&address) {
            return code.clone();
        }
        if self.modules.module_at(address).is_none() {
            self.modules.refresh_for(address, memory, monotonic_ns());
        }
        let symbols = self.symbols.lookup(&self.modules, address);
        let mut frames = Vec::with_capacity(symbols.len());
        for symbol in symbols.iter() {
            let function: Arc<str> = match &symbol.function {
                Some(name) => name.clone(),
                None => format!("{:#x}", symbol.module_offset).into(),
            };
            frames.push(table.intern_frame(Frame {
                kind: FrameKind::Native,
                function,
                file: symbol.file.clone().unwrap_or_else(|| "".into()),
                line: symbol.line,
                module: symbol.module.clone(),
            }));
        }
        let real = symbols.last();
        let name = real.and_then(|s| s.function.as_deref()).unwrap_or("");
        let base = name.split('.').next().unwrap_or(name);
        let module = real.map(|s| &*s.module).unwrap_or("?");
        let interpreter = self.interpreter_modules.iter().any(|m| &**m == module);
        if interpreter {
            // The interpreter's functions that are shown stand for themselves, without the
            // helpers inlined into them (`take_gil`, not its `PyCOND_TIMEDWAIT`).
            frames.drain(..frames.len().saturating_sub(1));
        }
        let code = NativeCode {
            frames: frames.into(),
            evaluator: merge::is_evaluator_name(name, self.python2),
            hidden: (interpreter && !INTERPRETER_FRAMES_SHOWN.contains(&base))
                || THREAD_START_FRAMES.contains(&base),
        };
        if self.codes.len() >= MAX_CODE_CACHE {
            self.codes.clear();
        }
        // An address in no known module is not remembered: its module may be read later.
        if module != "?" {
            self.codes.insert(address, code.clone());
        }
        code
    }
}

/// A Python stack (root first) cut into its calls of the evaluation loop, innermost first,
/// and the frames outside every call (the marker of a stack too deep to read), root first.
/// None if the calls do not add up to the stack.
fn split_into_calls(
    stack: &[FrameId],
    calls: &[EvalCall],
) -> Option<(Vec<FrameId>, Vec<PythonRun<FrameId>>)> {
    let mut innermost_first = stack.iter().rev().copied();
    let mut runs = Vec::with_capacity(calls.len());
    let mut counted = 0usize;
    for call in calls {
        let frames: Vec<FrameId> = innermost_first
            .by_ref()
            .take(call.frames as usize)
            .collect();
        if frames.len() != call.frames as usize {
            return None;
        }
        counted += frames.len();
        runs.push(PythonRun {
            frames,
            anchor: call.anchor,
        });
    }
    let rest = stack[..stack.len() - counted].to_vec();
    Some((rest, runs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stack_is_cut_into_its_calls_innermost_first_with_the_rest_at_the_root() {
        // Root first: marker, <module>, main, handler, leaf.
        let stack = [9, 1, 2, 3, 4];
        let calls = [
            EvalCall {
                frames: 2,
                anchor: Some(0x10),
            },
            EvalCall {
                frames: 2,
                anchor: None,
            },
        ];
        let (rest, runs) = split_into_calls(&stack, &calls).unwrap();
        assert_eq!(rest, [9]);
        assert_eq!(runs[0].frames, [4, 3]);
        assert_eq!(runs[0].anchor, Some(0x10));
        assert_eq!(runs[1].frames, [2, 1]);
        // Calls that claim more frames than the stack has: not this stack's.
        let too_many = [EvalCall {
            frames: 6,
            anchor: None,
        }];
        assert!(split_into_calls(&stack, &too_many).is_none());
    }

    #[test]
    fn the_perf_period_follows_the_rate_within_bounds() {
        assert_eq!(NativeOptions::for_rate(1000.0).period_ns, 1_000_000);
        assert_eq!(NativeOptions::for_rate(100.0).period_ns, 10_000_000);
        assert_eq!(NativeOptions::for_rate(1.0).period_ns, MAX_PERIOD_NS);
        assert_eq!(NativeOptions::for_rate(100_000.0).period_ns, MIN_PERIOD_NS);
    }
}
