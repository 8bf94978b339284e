//! One tick of the target: read the GIL, the Python thread states and every OS thread's kernel
//! state, as close together in time as possible. Raw facts only; classify.rs interprets them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::handoff::{Handoffs, SchedReader};
use super::native::{NativeOptions, NativeOutcome, NativeStacks};
use super::stats::{Stopwatch, TickStats};
use super::GilReading;
use crate::python::interpreter::{GilState, Interpreter, PyThread};
use crate::python::locals::{LocalsReader, ThreadLocals};
use crate::python::stack::{StackError, StackReader};
use crate::python::thread_names::ThreadNames;
use crate::stack::{StackId, StackTable};
use crate::target::cpu_clock::CpuClocks;
use crate::target::memory::{Memory, ReadError};
use crate::target::namespace::ThreadIds;
use crate::target::native::switches::{SwitchOuts, SwitchStats, SwitchedOut};
use crate::target::pthread_sync::{
    glibc_cond_sleeper, GilSync, MutexWords, COND_BYTES, MUTEX_BYTES,
};
use crate::target::task::{Activity, TaskError, TaskReading, Tasks};

/// Subinterpreters whose `threading` is read for thread names: each costs a few reads per
/// name refresh.
const MAX_NAMED_SUBINTERPRETERS: usize = 16;
/// Reads of one thread's stack per tick before it counts as not captured, whatever the time
/// left ([`Observer::set_retry_budget`])...
const MIN_STACK_ATTEMPTS: usize = 4;
/// ...and at most, however much time is left. A thread that calls and returns flat out
/// moves under one read in a few (see python/frame_copy.rs); 64 reads take 0.1-0.5 ms.
const MAX_STACK_ATTEMPTS: usize = 64;
/// A thread asleep whose exact CPU clock has not moved is still asleep where it was: its
/// /proc reading is reused, but never for longer than this (ns). A thread that ends leaves
/// the task listing at once and is forgotten; this only bounds the case of its tid being
/// given to a new thread between two ticks (the kernel hands tids out in a cycle through
/// pid_max, so that takes tens of thousands of new tasks within the interval), whose frozen
/// counter would otherwise never move.
const REUSE_SLEEPER_NS: u64 = 1_000_000_000;
/// Deferred walks remembered at most (threads seen asleep whose first walk waits for a tick
/// with time to spare); past this, sleepers are walked at once whatever the budget.
const MAX_DEFERRED: usize = 1 << 16;
/// First walks of sleeping threads done at every tick whatever the budget, so that they are
/// all walked in the end even while running threads' walks use the budget up.
const MIN_FIRST_WALKS: usize = 8;

/// One thread at one tick, before classification. Written by `record --observations` and read
/// back by tools that replay the classifier (examples/compare.rs); the kernel reading itself
/// is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadObservation {
    pub tid: i32,
    /// The id the thread knows itself by in its own PID namespace (a container's), where it
    /// differs from `tid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_tid: Option<i32>,
    /// `threading.get_ident()` for threads with a Python thread state.
    pub thread_id: Option<u64>,
    /// The thread state's address, for Python threads.
    pub tstate: Option<u64>,
    #[serde(skip, default)]
    pub task: TaskReading,
    /// The kernel says it is runnable (on a CPU or about to be).
    pub runnable: bool,
    /// Total CPU time so far (ns).
    pub cpu_ns: u64,
    /// `cpu_ns` is exact at the tick (perf task-clock), not as of the last scheduler tick.
    pub cpu_exact: bool,
    /// It is the GIL's holder, by the GIL's state or its own flag.
    pub holder: bool,
    /// It sleeps on a futex inside the GIL (its cond, mutex, switch_cond, switch_mutex).
    pub gil_futex: bool,
    /// It sleeps on some other futex or in another system call or fault.
    pub blocked: bool,
    /// Its own "waiting for the GIL" flag, where the version has one.
    pub gil_requested: Option<bool>,
    /// It owns its GIL's mutex or switch mutex: inside `take_gil` or a release, asleep or not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owns_gil_mutex: bool,
    /// Its GIL is locked in its name (the last holder) while CPython does not count it as
    /// running Python: in `take_gil` after taking the GIL, or in a release before letting go.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gil_in_its_name: bool,
    /// The kernel had stopped it (state T or t: SIGSTOP, job control, a debugger).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// Its interpreter ran without a GIL at this tick (a free-threaded build): nobody holds
    /// or waits; `attach_state` says who runs Python.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_gil: bool,
    /// `tstate->state` on free-threaded builds: attached, detached or suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach_state: Option<u32>,
    /// Its Python stack, read just after the tick (None: not a Python thread, stacks off,
    /// or the stack moved while it was read, or its first walk was deferred).
    pub stack: Option<StackId>,
    /// Its stack was not walked at this tick: it was asleep, had never been walked, and the
    /// tick's walking budget was spent. A later tick's [`Observation::resolved`] says which
    /// stack it had (a thread that has not run since cannot have changed its stack).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
    /// Its interpreter's GIL (an index into [`Observation::gils`]) and interpreter id, where
    /// the process has more than one interpreter.
    #[serde(skip, default)]
    pub gil: Option<(u16, Option<i64>)>,
    /// Runnable and off its CPU since its latest context switch: where it was then, in the
    /// GIL's code or elsewhere (None: on a CPU, not followed, or not known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_out: Option<SwitchedOut>,
}

/// Everything read at one tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// CLOCK_MONOTONIC at the start and end of the tick's reads (ns).
    pub start_ns: u64,
    pub end_ns: u64,
    #[serde(skip, default)]
    pub gil: GilState,
    pub locked: bool,
    pub holder: u64,
    pub switch_number: u64,
    /// The switch interval (µs): a holder is asked to let go once a waiter has waited this
    /// long.
    #[serde(default = "default_interval_us")]
    pub interval_us: u64,
    /// Sorted by tid.
    pub threads: Vec<ThreadObservation>,
    /// Stacks that could not be read consistently at this tick.
    pub stack_errors: u32,
    /// Every GIL, the main one first, where the process has more than one interpreter.
    #[serde(skip, default)]
    pub gils: Vec<GilReading>,
    /// Threads whose walks were deferred at earlier ticks and are walked now: (tid, the
    /// stack they had at every deferred tick), None if they ran in between (then those ticks
    /// stay without a stack).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<(i32, Option<StackId>)>,
    /// For each GIL (the main one first, as in [`Observation::gils`]): how many threads were
    /// inside a wait on its condition variables without the tick seeing them asleep there,
    /// that is woken and queued for a CPU, or on their way in or out. None where the count
    /// cannot be read (another libc, a GIL without its objects, or before a waiter was seen
    /// asleep to show the layout).
    #[serde(default)]
    pub unseen_in_gil: Vec<Option<u32>>,
}

/// CPython's default switch interval (µs), for observations written without one.
fn default_interval_us() -> u64 {
    5000
}

impl Observation {
    /// The instant the tick stands for.
    pub fn time_ns(&self) -> u64 {
        self.start_ns + (self.end_ns.saturating_sub(self.start_ns)) / 2
    }
}

/// Of the thread states that share one kernel tid (a thread that entered a subinterpreter
/// has a thread state in each interpreter it ran in), the one that says what the thread is
/// doing: the one holding its GIL, else the one whose GIL it sleeps on, else the one asking
/// for its GIL, else any. Ties go to `held_last` (the thread state it last held with: two
/// interpreters sharing a GIL share its futexes), else to the oldest interpreter's (the main
/// interpreter is last in the list): 3.12 leaves a subinterpreter's first thread state with
/// the tid of the thread that created it, though that thread runs in the main interpreter.
fn pick_tstate<'a>(
    candidates: impl Iterator<Item = &'a PyThread> + Clone,
    holds: impl Fn(&PyThread) -> bool,
    sleeps_on_its_gil: impl Fn(&PyThread) -> bool,
    held_last: Option<u64>,
) -> Option<&'a PyThread> {
    let last = |keep: &dyn Fn(&PyThread) -> bool| {
        let mut kept = candidates.clone().filter(|t| keep(t));
        let first = kept.next()?;
        let mut chosen = first;
        for t in std::iter::once(first).chain(kept) {
            if Some(t.tstate) == held_last {
                return Some(t);
            }
            chosen = t;
        }
        Some(chosen)
    };
    last(&holds)
        .or_else(|| last(&sleeps_on_its_gil))
        .or_else(|| last(&|t| t.gil_requested == Some(true)))
        .or_else(|| last(&|_| true))
}

/// Does `thread` hold the GIL, in the exact sense (between take_gil's return and the start
/// of the release)? CPython's own record of the running thread says so best; the GIL's
/// `locked`/`last_holder` pair lags it by the length of the hand-off code.
pub fn is_holder(thread: &PyThread, gil: &GilState) -> bool {
    match (thread.active, gil.current, thread.holds_gil) {
        (Some(active), _, _) => active,
        (None, Some(current), _) => current != 0 && current == thread.tstate,
        (None, None, Some(holds)) => holds,
        (None, None, None) => gil.locked && gil.holder == thread.tstate,
    }
}

/// Why a tick could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickError {
    /// The target has exited.
    Gone,
    /// We lost permission (the target changed credentials, e.g. exec of a setuid binary).
    Denied,
    /// A read failed or saw a list being changed: a torn tick, skipped and counted.
    Torn(String),
    /// gilscope itself ran out of something (open files): no use trying again at once.
    Limit(String),
}

impl From<ReadError> for TickError {
    fn from(e: ReadError) -> TickError {
        match e {
            ReadError::Gone => TickError::Gone,
            ReadError::Denied => TickError::Denied,
            other => TickError::Torn(other.to_string()),
        }
    }
}

/// Reads ticks from one interpreter in one process.
pub struct Observer<M: Memory> {
    pub pid: i32,
    memory: M,
    pub interpreter: Interpreter,
    tasks: Tasks,
    /// The target's own thread ids (those the interpreter stores) against ours.
    ids: ThreadIds,
    clocks: CpuClocks,
    stacks: Option<StackReader>,
    /// Native stacks merged into the Python ones (`--native`).
    native: Option<NativeStacks>,
    /// Where runnable threads off their CPU left it ([`Observer::enable_switch_outs`]).
    switch_outs: Option<SwitchOuts>,
    /// Why [`Observer::enable_switch_outs`] could not follow them, where it could not.
    switch_outs_refused: Option<String>,
    /// Without them, the releases cut short by the waiter they woke, dated by the scheduler.
    handoffs: Handoffs,
    thread_names: Option<ThreadNames>,
    /// For a tid with thread states in several interpreters, the one it last held with.
    held_last: HashMap<i32, u64>,
    /// Readers of subinterpreters' `threading` (each caches its own interpreter's objects).
    sub_thread_names: Vec<(u64, ThreadNames)>,
    /// Each thread's last stack and the CPU time at which it was read: a thread whose exact
    /// CPU time has not moved has not run, so its stack has not changed.
    last_stacks: HashMap<i32, (u64, u64, StackId)>,
    /// Time a tick may spend on first walks of sleeping threads (ns); None: no limit.
    walk_budget_ns: Option<u64>,
    /// Time a tick may spend reading stacks again that moved under a read (ns); None: up to
    /// [`MAX_STACK_ATTEMPTS`] reads of each.
    retry_budget_ns: Option<u64>,
    /// Sleeping threads whose first walk was put off: their thread state and CPU time at the
    /// first deferred tick, and whether a later deferred tick saw them elsewhere (ran).
    deferred: HashMap<i32, Deferred>,
    /// Each sleeping thread's last real /proc reading.
    last_sleeps: HashMap<i32, Sleeper>,
    /// The process's threads at the last tick, sorted.
    live: Vec<i32>,
    /// Threads that held a GIL on a CPU at the last tick, and those doing so at this one.
    held_running: Vec<i32>,
    holding_running: Vec<i32>,
    /// A GIL waiter was seen asleep where glibc's condition waits sleep: the GIL's mutexes
    /// are glibc's, and their counts can be read.
    glibc_mutexes: bool,
    /// What the ticks so far cost, phase by phase.
    pub stats: TickStats,
}

impl<M: Memory> Observer<M> {
    /// `ids` translates the thread ids the interpreter stores into ours ([`ThreadIds::of`]).
    pub fn new(pid: i32, memory: M, interpreter: Interpreter, ids: ThreadIds) -> Observer<M> {
        Observer {
            pid,
            memory,
            interpreter,
            tasks: Tasks::new(pid),
            ids,
            clocks: match super::privileges::can_lock_memory() {
                true => CpuClocks::with_pages(),
                false => CpuClocks::new(),
            },
            stacks: None,
            native: None,
            switch_outs: None,
            switch_outs_refused: None,
            handoffs: Handoffs::new(),
            thread_names: None,
            sub_thread_names: Vec::new(),
            held_last: HashMap::new(),
            last_stacks: HashMap::new(),
            walk_budget_ns: None,
            retry_budget_ns: None,
            deferred: HashMap::new(),
            last_sleeps: HashMap::new(),
            live: Vec::new(),
            held_running: Vec::new(),
            holding_running: Vec::new(),
            glibc_mutexes: false,
            stats: TickStats::default(),
        }
    }

    /// The Python names of the threads (`threading.current_thread().name`) by
    /// `threading.get_ident()`, from the main interpreter's `threading` and those of up to
    /// [`MAX_NAMED_SUBINTERPRETERS`] subinterpreters; empty where the version's objects are
    /// not known, before `threading` is imported, or when the target moved under the read.
    pub fn python_thread_names(&mut self) -> HashMap<u64, String> {
        if self.thread_names.is_none() {
            self.thread_names = ThreadNames::new(
                &self.interpreter.description().version,
                &self.interpreter.description().layout,
            );
        }
        let Some(main_names) = self.thread_names.as_mut() else {
            return HashMap::new();
        };
        let interps = self
            .interpreter
            .interpreters(&self.memory)
            .unwrap_or_default();
        // New interpreters are pushed at the head of the list: the main one is last.
        let Some((&main, subs)) = interps.split_last() else {
            return HashMap::new();
        };
        let mut names = HashMap::new();
        let subs = &subs[..subs.len().min(MAX_NAMED_SUBINTERPRETERS)];
        self.sub_thread_names
            .retain(|(interp, _)| subs.contains(interp));
        for &interp in subs {
            let at = match self.sub_thread_names.iter().position(|(i, _)| *i == interp) {
                Some(at) => at,
                None => {
                    let Some(reader) = ThreadNames::new(
                        &self.interpreter.description().version,
                        &self.interpreter.description().layout,
                    ) else {
                        break;
                    };
                    self.sub_thread_names.push((interp, reader));
                    self.sub_thread_names.len() - 1
                }
            };
            let reader = &mut self.sub_thread_names[at].1;
            names.extend(reader.read(&self.memory, interp).unwrap_or_default());
        }
        // A thread the main interpreter's `threading` knows too keeps that name.
        names.extend(main_names.read(&self.memory, main).unwrap_or_default());
        names
    }

    /// The main interpreter's `sys.path` (what short file names are relative to); empty
    /// where the version's objects are not known or the target moved under the read.
    pub fn sys_path(&self) -> Vec<String> {
        let Some(reader) = ThreadNames::new(
            &self.interpreter.description().version,
            &self.interpreter.description().layout,
        ) else {
            return Vec::new();
        };
        let interps = self
            .interpreter
            .interpreters(&self.memory)
            .unwrap_or_default();
        // New interpreters are pushed at the head of the list: the main one is last.
        match interps.last() {
            Some(&main) => reader.sys_path(&self.memory, main).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Read Python stacks at every tick, where the interpreter's layout knows its frames.
    /// Returns whether stacks will be read.
    pub fn enable_stacks(&mut self) -> bool {
        self.stacks = self
            .interpreter
            .description()
            .layout
            .stack
            .map(StackReader::new);
        // Remembered stacks name entries of the previous table.
        self.last_stacks.clear();
        if let Some(native) = self.native.as_mut() {
            native.forget_frames();
            if let Some(reader) = self.stacks.as_mut() {
                reader.group_eval_calls();
            }
        }
        self.stacks.is_some()
    }

    /// Merge each thread's native stack into its Python stack at every tick (`--native`),
    /// and give threads that run no Python their native stacks. Python stacks must be on
    /// ([`Observer::enable_stacks`]) for Python threads to have any stack.
    pub fn enable_native(&mut self, options: NativeOptions) -> std::io::Result<()> {
        let native = NativeStacks::new(
            self.pid,
            &self.memory,
            &self.interpreter.description().binary,
            self.interpreter.description().version.major == 2,
            options,
        )?;
        self.native = Some(native);
        if let Some(reader) = self.stacks.as_mut() {
            reader.group_eval_calls();
        }
        self.last_stacks.clear();
        Ok(())
    }

    /// Tell, for each runnable thread off its CPU, whether it left the CPU inside the GIL's
    /// code (a perf sample at each of its context switches, unwound through the GIL's
    /// functions). Fails where the interpreter has no symbols for them.
    pub fn enable_switch_outs(&mut self) -> Result<(), String> {
        let now = crate::target::native::monotonic_ns();
        match SwitchOuts::new(self.pid, &self.memory, now) {
            Ok(switch_outs) => {
                self.switch_outs = Some(switch_outs);
                self.switch_outs_refused = None;
                Ok(())
            }
            Err(why) => {
                self.switch_outs_refused = Some(why.clone());
                Err(why)
            }
        }
    }

    /// Why switch-outs are not followed, where they were asked for
    /// ([`Observer::enable_switch_outs`]) and the interpreter's symbols or memory map were
    /// missing.
    pub fn switch_outs_refused(&self) -> Option<&str> {
        self.switch_outs_refused.as_deref()
    }

    /// Are switch-outs followed? And why perf refused them (errno), if it did, and what
    /// they found so far.
    pub fn switch_outs_status(&self) -> Option<(Option<i32>, SwitchStats)> {
        self.switch_outs.as_ref().map(|s| (s.unavailable, s.stats))
    }

    /// Are native stacks taken? And why perf cannot sample running threads (errno), if so.
    pub fn native_status(&self) -> Option<Option<i32>> {
        self.native.as_ref().map(|n| n.perf_unavailable())
    }

    /// Bound the time a tick spends walking, for the first time, the stacks of threads that
    /// sleep (the thousand idle workers of a pool seen at attach): past `ns`, such walks are
    /// deferred to later ticks and resolved then (see [`ThreadObservation::deferred`]). The
    /// holder, waiters, runnable threads and threads walked before are always walked.
    pub fn set_walk_budget(&mut self, ns: Option<u64>) {
        self.walk_budget_ns = ns;
    }

    /// Bound the time a tick spends reading again the stacks that moved under a read: past
    /// `ns` since the tick's stacks began, each thread gets [`MIN_STACK_ATTEMPTS`] reads,
    /// and one still unread then is counted as not captured.
    pub fn set_retry_budget(&mut self, ns: Option<u64>) {
        self.retry_budget_ns = ns;
    }

    /// Every stack and frame seen so far.
    pub fn stack_table(&self) -> Option<&StackTable> {
        self.stacks.as_ref().map(|s| &s.table)
    }

    /// Take the stack table out (at the end of a recording).
    pub fn take_stack_table(&mut self) -> Option<StackTable> {
        if let Some(native) = self.native.as_mut() {
            native.forget_frames();
        }
        self.last_stacks.clear();
        self.stacks.as_mut().map(|s| std::mem::take(&mut s.table))
    }

    /// Read the stacks of the Python threads of a tick, after the tick's timed reads (with
    /// `--native`, every thread's merged stack). Returns the number of stacks that could not
    /// be read, and the deferred walks resolved.
    fn read_stacks(
        &mut self,
        threads: &mut [ThreadObservation],
        tick_ns: u64,
    ) -> (u32, Vec<(i32, Option<StackId>)>) {
        let mut resolved = Vec::new();
        if self.stacks.is_none() {
            return (0, resolved);
        }
        if let Some(native) = self.native.as_mut() {
            native.start_tick(
                threads.iter().map(|t| (t.tid, t.runnable)),
                &self.live,
                tick_ns,
            );
        }
        let mut errors = 0;
        let started = crate::sample::monotonic_ns();
        let mut spent = false;
        let mut first_walks = 0;
        for thread in threads.iter_mut() {
            let Some(tstate) = thread.tstate else {
                // A thread that runs no Python has a native stack only.
                if let Some(native) = self.native.as_mut() {
                    if let Some(reader) = self.stacks.as_mut() {
                        let (stack, _) = native.stack(
                            thread.tid,
                            thread.task.activity,
                            None,
                            tick_ns,
                            None,
                            &mut reader.table,
                            &self.memory,
                        );
                        thread.stack = stack;
                    }
                }
                continue;
            };
            if let Some(&(was_tstate, cpu, stack)) = self.last_stacks.get(&thread.tid) {
                if thread.cpu_exact && was_tstate == tstate && cpu == thread.cpu_ns {
                    thread.stack = Some(stack);
                    continue;
                }
            }
            let first_walk_of_sleeper = thread.cpu_exact
                && !thread.holder
                && !thread.runnable
                && !thread.gil_futex
                && thread.gil_requested != Some(true)
                && !self.last_stacks.contains_key(&thread.tid);
            if first_walk_of_sleeper && !spent && first_walks >= MIN_FIRST_WALKS {
                spent = self.walk_budget_ns.is_some_and(|budget| {
                    crate::sample::monotonic_ns().saturating_sub(started) >= budget
                });
            }
            if first_walk_of_sleeper && spent && self.deferred.len() < MAX_DEFERRED {
                let seen = Deferred {
                    tstate,
                    cpu_ns: thread.cpu_ns,
                    ran: false,
                };
                let entry = self.deferred.entry(thread.tid).or_insert(seen);
                entry.ran |= entry.tstate != tstate || entry.cpu_ns != thread.cpu_ns;
                thread.deferred = true;
                self.stats.walks_deferred += 1;
                continue;
            }
            first_walks += usize::from(first_walk_of_sleeper);
            let retry_until = self.retry_budget_ns.map(|b| started.saturating_add(b));
            let read = self.walk(tstate, retry_until);
            let was_deferred = self.deferred.remove(&thread.tid);
            match read {
                Ok(stack) => {
                    let (stack, outcome) = self.merge_native(thread, tstate, stack, tick_ns);
                    thread.stack = stack;
                    // A stack without its native part is not kept for a thread that sleeps
                    // on: its native stack may be had at the next tick.
                    match (thread.cpu_exact, outcome, stack) {
                        (true, NativeOutcome::Merged, Some(stack)) => {
                            self.last_stacks
                                .insert(thread.tid, (tstate, thread.cpu_ns, stack));
                        }
                        _ => {
                            self.last_stacks.remove(&thread.tid);
                        }
                    }
                }
                Err(_) => {
                    errors += 1;
                    // Shown as such, with its weight, rather than as a sample of no stack.
                    thread.stack = self.stacks.as_mut().map(StackReader::not_captured);
                    self.last_stacks.remove(&thread.tid);
                }
            }
            if let Some(was) = was_deferred {
                let still = !was.ran
                    && was.tstate == tstate
                    && thread.cpu_exact
                    && was.cpu_ns == thread.cpu_ns;
                let stack = thread.stack.filter(|_| still);
                self.stats.walks_resolved += u64::from(stack.is_some());
                resolved.push((thread.tid, stack));
            }
        }
        if let Some(native) = self.native.as_ref() {
            self.stats.native = native.stats;
        }
        (errors, resolved)
    }

    /// `stack` (a Python stack just read) with the thread's native frames merged in, when
    /// native stacks are taken.
    fn merge_native(
        &mut self,
        thread: &ThreadObservation,
        tstate: u64,
        stack: StackId,
        tick_ns: u64,
    ) -> (Option<StackId>, NativeOutcome) {
        let (Some(native), Some(reader)) = (self.native.as_mut(), self.stacks.as_mut()) else {
            return (Some(stack), NativeOutcome::Merged);
        };
        let calls: Option<Vec<_>> = reader.eval_calls(tstate, stack).map(<[_]>::to_vec);
        // The tick read the thread's exact clock before its system call: the same clock now
        // means it has not run since, and the registers the tick read are still its own.
        let (clocks, tid, cpu_ns) = (&mut self.clocks, thread.tid, thread.cpu_ns);
        let mut still = || clocks.read(tid) == Some(cpu_ns);
        let still: Option<&mut dyn FnMut() -> bool> = match thread.cpu_exact {
            true => Some(&mut still),
            false => None,
        };
        native.stack(
            thread.tid,
            thread.task.activity,
            still,
            tick_ns,
            Some((stack, calls.as_deref())),
            &mut reader.table,
            &self.memory,
        )
    }

    /// The stack of the thread state at `tstate` and each frame's variables (`dump
    /// --locals`), read with `reader`; interned in this observer's stack table.
    pub fn read_locals(
        &mut self,
        reader: &mut LocalsReader,
        tstate: u64,
    ) -> Result<ThreadLocals, StackError> {
        match self.stacks.as_mut() {
            Some(stacks) => reader.read(&self.memory, stacks, tstate),
            None => Err(StackError::Moved),
        }
    }

    /// Read one thread's stack. A thread calling and returning flat out moves under one
    /// read in a few: it is read again at once, [`MIN_STACK_ATTEMPTS`] times at least, more
    /// until `until` (CLOCK_MONOTONIC ns; None: [`MAX_STACK_ATTEMPTS`] times).
    fn walk(&mut self, tstate: u64, until: Option<u64>) -> Result<StackId, StackError> {
        let Some(reader) = self.stacks.as_mut() else {
            return Err(StackError::Moved);
        };
        let mut attempts = 0;
        self.stats.stack_walks += 1;
        loop {
            let read = reader.read(&self.memory, tstate);
            attempts += 1;
            self.stats.stack_attempts += 1;
            let out_of_time = attempts >= MIN_STACK_ATTEMPTS
                && until.is_some_and(|t| crate::sample::monotonic_ns() >= t);
            // A read that faulted or found garbage raced the thread as much as one that saw
            // it move (a pointer read before the frame it named was freed): both retry.
            let raced = match &read {
                Ok(_) => false,
                Err(StackError::Moved) => true,
                Err(StackError::Read(e)) => !matches!(e, ReadError::Gone | ReadError::Denied),
            };
            if !raced || attempts >= MAX_STACK_ATTEMPTS || out_of_time {
                return read;
            }
        }
    }

    /// The target's pid in its own PID namespace (a container seen from outside), where it
    /// differs from [`Observer::pid`].
    pub fn ns_pid(&self) -> Option<i32> {
        self.ids.own_pid()
    }

    /// Why exact CPU clocks are not available (errno of perf_event_open), if they are not.
    pub fn cpu_clock_unavailable(&self) -> Option<i32> {
        self.clocks.unavailable
    }

    /// Read a version known only from the library's name again
    /// ([`Interpreter::refine_version`]); true if it is now exact.
    pub fn refine_version(&mut self) -> bool {
        self.interpreter.refine_version(&self.memory)
    }

    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// The OS name of a thread now, if it is still alive. (Read when a thread is first seen
    /// and every half second after: threads often name themselves after they start.)
    pub fn current_thread_name(&self, tid: i32) -> Option<String> {
        self.tasks.name(tid)
    }

    /// Is thread `tid` of the target alive now?
    /// As of the last tick (which lists the threads); before any, from /proc now.
    pub fn thread_alive(&self, tid: i32) -> bool {
        if self.live.is_empty() {
            return std::path::Path::new(&format!("/proc/{}/task/{tid}", self.pid)).exists();
        }
        self.live.binary_search(&tid).is_ok()
    }

    /// Take one tick, and count what it cost in `stats`.
    pub fn observe(&mut self) -> Result<Observation, TickError> {
        let reads = self.memory.reads();
        let stack_reads = self.stats.stack_reads;
        let result = self.read_tick();
        let stats = &mut self.stats;
        // A torn tick counts as far as it went.
        let this_tick = self.memory.reads() - reads;
        stats.memory_reads += this_tick - (stats.stack_reads - stack_reads);
        stats.proc_reads = self.tasks.reads;
        stats.listings_reused = self.tasks.listings_reused;
        stats.clock_reads = self.clocks.reads;
        stats.proc_reads += self.ids.reads();
        result
    }

    fn read_tick(&mut self) -> Result<Observation, TickError> {
        let mut lap = Stopwatch::start();
        let start_ns = lap.last_ns();
        let state = self.interpreter.read_state(&self.memory)?;
        let (gil, others, python, syncs) = (state.gil, state.others, state.threads, state.syncs);
        self.stats.memory_ns += lap.split();
        let mut live = self
            .tasks
            .list_unless_unchanged(self.interpreter.lists_unchanged(), start_ns)
            .map_err(|_| TickError::Gone)?;
        // A main thread that has exited (`pthread_exit`) stays listed, a zombie, until the
        // whole process exits: it is a thread that ended.
        if matches!(self.tasks.leader_state(), Some('Z' | 'X')) {
            live.retain(|&tid| tid != self.pid);
        }
        // A stop (SIGSTOP, job control, a debugger attaching) stops the main thread with the
        // others: only then are the threads' own states read, one by one.
        let stops_seen = matches!(self.tasks.leader_state(), Some('T' | 't'));
        self.stats.proc_ns += lap.split();
        if live.is_empty() {
            return Err(TickError::Gone);
        }
        self.ids.update(&live);
        let python = self
            .interpreter
            .resolve_threads(&self.memory, python, &live, &self.ids);
        self.stats.memory_ns += lap.split();
        let mut by_tid: HashMap<i32, &PyThread> = HashMap::with_capacity(python.len());
        // Thread states whose tid another one has too: rare (threads that entered a
        // subinterpreter), so kept aside rather than making every entry a list.
        let mut shared_tids: Vec<&PyThread> = Vec::new();
        for thread in &python {
            if let Some(tid) = thread.native_id {
                shared_tids.extend(by_tid.insert(tid, thread));
            }
        }
        let interpreter = &self.interpreter;
        let gils = gil_readings(interpreter, gil, &others);
        let state_of = |index: usize| match index.checked_sub(1) {
            Some(i) => others.get(i).copied().unwrap_or_default(),
            None => gil,
        };
        let sync_of = |index: usize| syncs.get(index).copied().flatten();
        // Where each GIL's mutexes and condition variables start, to count the threads seen
        // asleep on each.
        let objects: Vec<Option<[u64; 4]>> = std::iter::once(interpreter.gil())
            .chain(interpreter.other_gils().iter().map(|g| &g.addresses))
            .map(|g| g.sync_objects())
            .collect();
        let mut asleep_on = vec![[0u32; 4]; objects.len()];
        let mut threads = Vec::with_capacity(live.len());
        lap.split();
        self.holding_running.clear();
        for &tid in &live {
            // A thread that held a GIL on a CPU at the last tick is read without its exact
            // clock while it still holds: reading the counter of a thread on another CPU
            // interrupts that CPU (an IPI per read, the main cost gilscope put on a busy
            // target), and the classifier never looks at a holder's clock unless the thread
            // was runnable without the GIL at its tick before (a hold right after that ends
            // the look-ahead of [`crate::sample::classify`], which needs it exact). One that
            // no longer holds is read below, once the tick shows it.
            let skip_clock = self.held_running.contains(&tid);
            // Read before its clock (see `CpuClocks::schedules`).
            let schedules = match skip_clock {
                true => None,
                false => self.clocks.schedules(tid),
            };
            let exact_cpu = if skip_clock {
                self.stats.clock_reads_skipped += 1;
                None
            } else if let Some(cpu) =
                unscheduled_sleeper(&self.last_sleeps, tid, schedules, start_ns)
            {
                // A sleeper not put on a CPU since its reading: its clock stands.
                self.stats.clock_reads_unscheduled += 1;
                Some(cpu)
            } else {
                let cpu = self.clocks.read(tid);
                // Read anyway (its reading was old): the page must have told the truth.
                if let (Some(cpu), Some(was)) = (cpu, self.last_sleeps.get(&tid)) {
                    if schedules.is_some() && was.schedules == schedules {
                        self.clocks.check_schedules(was.cpu_ns, cpu);
                    }
                }
                cpu
            };
            let task = match sleeper_reading(&self.last_sleeps, tid, exact_cpu, start_ns) {
                Some(task) => {
                    self.stats.proc_reads_reused += 1;
                    // Its clock, read after this count, had not moved: the count stands for
                    // that clock too (a thread first read before its counter was open had
                    // none).
                    if let (Some(count), Some(was)) = (schedules, self.last_sleeps.get_mut(&tid)) {
                        was.schedules = Some(count);
                    }
                    Ok(task)
                }
                None => self.tasks.read(tid, exact_cpu.is_none()).inspect(|&task| {
                    remember_sleeper(
                        &mut self.last_sleeps,
                        tid,
                        (exact_cpu, schedules),
                        start_ns,
                        task,
                    );
                }),
            };
            let task = match task {
                Ok(task) => task,
                Err(TaskError::Gone) => {
                    // Its counter would go on reading the dead thread's frozen clock.
                    self.clocks.forget(tid);
                    self.last_sleeps.remove(&tid);
                    continue;
                }
                Err(TaskError::Denied) => return Err(TickError::Denied),
                Err(TaskError::Io(errno @ (libc::EMFILE | libc::ENFILE))) => {
                    return Err(TickError::Limit(crate::target::fds::exhausted(errno)))
                }
                Err(TaskError::Io(errno)) => {
                    return Err(TickError::Torn(format!(
                        "task {tid}: {}",
                        std::io::Error::from_raw_os_error(errno)
                    )))
                }
            };
            let futex = task.activity.futex_addr();
            let sleeps_on_its_gil = |t: &PyThread| {
                futex.is_some_and(|addr| interpreter.gil_at(t.gil).is_sync_address(addr))
            };
            let holds = |t: &PyThread| is_holder(t, &state_of(t.gil));
            let py = match by_tid.get(&tid) {
                Some(&only) if shared_tids.is_empty() => Some(only),
                Some(&last) => pick_tstate(
                    shared_tids
                        .iter()
                        .copied()
                        .filter(|t| t.native_id == Some(tid))
                        .chain([last]),
                    holds,
                    sleeps_on_its_gil,
                    self.held_last.get(&tid).copied(),
                ),
                None => None,
            };
            // Without a GIL, `_status.active` still marks attached threads: not holders.
            let no_gil = match py {
                Some(t) => state_of(t.gil).off(),
                None => gil.off(),
            };
            let holder = !no_gil && py.is_some_and(holds);
            if let Some(t) = py.filter(|_| holder && !shared_tids.is_empty()) {
                if shared_tids.iter().any(|s| s.native_id == Some(tid)) {
                    self.held_last.insert(tid, t.tstate);
                }
            }
            let gil_futex = match py {
                _ if no_gil => false,
                Some(t) => sleeps_on_its_gil(t),
                // A thread without a thread state cannot wait for a GIL; it may still have
                // been caught on one of their futexes on its way to getting a thread state.
                None => futex.is_some_and(|addr| {
                    interpreter.gil().is_sync_address(addr)
                        || interpreter
                            .other_gils()
                            .iter()
                            .any(|g| g.addresses.is_sync_address(addr))
                }),
            };
            let gil_requested = py.and_then(|t| t.gil_requested);
            let gil_index = py.map_or(0, |t| t.gil);
            if let (Some(addr), false) = (futex, no_gil) {
                let sizes = [COND_BYTES, MUTEX_BYTES, COND_BYTES, MUTEX_BYTES];
                let object = objects
                    .get(gil_index)
                    .copied()
                    .flatten()
                    .and_then(|starts| {
                        (0..4).find_map(|i| {
                            let offset = addr.checked_sub(starts[i])?;
                            (offset < sizes[i] as u64).then_some((i, offset))
                        })
                    });
                if let Some((i, offset)) = object {
                    asleep_on[gil_index][i] += 1;
                    // Asleep on `cond` or `switch_cond` where glibc's waiters sleep.
                    self.glibc_mutexes |= i % 2 == 0 && glibc_cond_sleeper(offset);
                }
            }
            let owns_gil_mutex =
                !no_gil && sync_of(gil_index).is_some_and(|sync| sync.owned_by(tid));
            let gil_in_its_name = !no_gil
                && !holder
                && py.is_some_and(|t| {
                    let gil = state_of(t.gil);
                    gil.locked
                        && gil.holder == t.tstate
                        && (t.active.is_some() || gil.current.is_some())
                });
            // Left out above, the clock is wanted after all if the tick does not say "holds":
            // the thread let the GIL go, or sleeps on a GIL futex inside the release (off its
            // CPU: no interrupt), and the classifier compares its clock with the next tick's.
            let exact_cpu = match exact_cpu {
                None if skip_clock && (!holder || gil_futex || gil_requested == Some(true)) => {
                    self.stats.clock_reads_skipped -= 1;
                    self.clocks.read(tid)
                }
                read => read,
            };
            let runnable = task.activity == Activity::Running;
            // A stopped thread is never runnable: its system call file shows where it sleeps.
            let stopped =
                stops_seen && !runnable && matches!(self.tasks.state_letter(tid), Some('T' | 't'));
            if holder && runnable {
                self.holding_running.push(tid);
            }
            threads.push(ThreadObservation {
                tid,
                ns_tid: self.ids.own_id(tid),
                thread_id: py.map(|t| t.thread_id),
                tstate: py.map(|t| t.tstate),
                task,
                runnable,
                cpu_ns: exact_cpu.unwrap_or(task.cpu_ns),
                cpu_exact: exact_cpu.is_some(),
                holder,
                gil_futex,
                blocked: !gil_futex && task.activity != Activity::Running,
                gil_requested,
                owns_gil_mutex,
                gil_in_its_name,
                stopped,
                no_gil,
                attach_state: py.and_then(|t| t.attach_state),
                stack: None,
                deferred: false,
                gil: py
                    .filter(|_| !gils.is_empty())
                    .map(|t| (t.gil as u16, interpreter_id(interpreter, t.interp))),
                switched_out: None,
            });
        }
        self.stats.proc_ns += lap.split();
        let unseen_in_gil = (0..objects.len())
            .map(|index| {
                let sync = sync_of(index).filter(|_| self.glibc_mutexes)?;
                unseen_inside(&sync, asleep_on[index], live.len())
            })
            .collect();
        std::mem::swap(&mut self.held_running, &mut self.holding_running);
        self.tasks.retain(&live);
        self.clocks.retain(&live);
        self.last_sleeps
            .retain(|tid, _| live.binary_search(tid).is_ok());
        if !self.held_last.is_empty() {
            self.held_last
                .retain(|tid, _| live.binary_search(tid).is_ok());
        }
        self.last_stacks
            .retain(|tid, _| live.binary_search(tid).is_ok());
        if !self.deferred.is_empty() {
            self.deferred
                .retain(|tid, _| live.binary_search(tid).is_ok());
        }
        self.live = live;
        lap.split();
        let end_ns = lap.last_ns();
        // After the timed reads: the switches up to the tick are all in the rings by now.
        if let Some(switches) = self.switch_outs.as_mut() {
            switches.follow(&self.live);
            switches.drain();
            for thread in threads.iter_mut() {
                if thread.runnable && !thread.holder && !thread.no_gil && !thread.stopped {
                    thread.switched_out = switches.located(thread.tid, end_ns, &self.memory);
                }
            }
        } else {
            self.handoffs.retain(&self.live);
            let mut reader = KernelSched {
                tasks: &mut self.tasks,
                clocks: &mut self.clocks,
            };
            let before = self.handoffs.counts;
            // Threads asleep in a release's forced-switch wait (the main GIL's switch
            // condition or mutex): they leave it without taking the GIL.
            let switch_objects = self.interpreter.gil().sync_objects().map(|o| {
                use crate::target::pthread_sync::{COND_BYTES, MUTEX_BYTES};
                [
                    (o[2], o[2] + COND_BYTES as u64),
                    (o[3], o[3] + MUTEX_BYTES as u64),
                ]
            });
            let in_release: Vec<i32> = threads
                .iter()
                .filter(|t| {
                    let futex = t.task.activity.futex_addr();
                    switch_objects.is_some_and(|objects| {
                        objects
                            .iter()
                            .any(|(start, end)| futex.is_some_and(|a| (*start..*end).contains(&a)))
                    })
                })
                .map(|t| t.tid)
                .collect();
            self.handoffs
                .locate(&mut threads, (gil.switch_number, &in_release), &mut reader);
            self.stats.handoff_reads += self.handoffs.counts.reads - before.reads;
            self.stats.handoffs_located += self.handoffs.counts.located - before.located;
            self.stats.proc_ns += lap.split();
        }
        let reads = self.memory.reads();
        let (stack_errors, resolved) = self.read_stacks(&mut threads, start_ns);
        self.stats.stack_ns += lap.split();
        self.stats.stack_reads += self.memory.reads() - reads;
        Ok(Observation {
            start_ns,
            end_ns,
            gil,
            locked: gil.locked,
            holder: gil.holder,
            switch_number: gil.switch_number,
            interval_us: gil.interval_us,
            threads,
            stack_errors,
            gils,
            resolved,
            unseen_in_gil,
        })
    }
}

/// The kernel's scheduler figures, as [`Handoffs`] reads them.
struct KernelSched<'a> {
    tasks: &'a mut Tasks,
    clocks: &'a mut CpuClocks,
}

impl SchedReader for KernelSched<'_> {
    fn run_totals(&mut self, tid: i32) -> Option<(u64, u64)> {
        self.tasks.run_totals(tid)
    }

    fn last_accounted(&mut self, tid: i32) -> Option<crate::target::task::SchedClocks> {
        self.tasks.last_accounted(tid)
    }

    fn exact_clock(&mut self, tid: i32) -> Option<u64> {
        self.clocks.read(tid)
    }
}

/// The threads inside the GIL's mutexes (`take_gil`'s critical section with its condition
/// wait, a forced release's wait) that a tick did not see: their users, less those seen
/// asleep on each mutex or its condition (`asleep`: cond, mutex, switch_cond, switch_mutex)
/// or owning it. A thread asleep taking a mutex it never held is no user: subtracting it may
/// undercount, never overcount. None for a count no process of `threads` could have (a torn
/// read, or not glibc's mutex after all).
fn unseen_inside(sync: &GilSync, asleep: [u32; 4], threads: usize) -> Option<u32> {
    let [cond, mutex, switch_cond, switch_mutex] = asleep;
    let unseen = |m: MutexWords, asleep: u32| {
        m.users()
            .saturating_sub(asleep)
            .saturating_sub(m.owner().is_some() as u32)
    };
    let users = sync.mutex.users() as usize + sync.switch_mutex.users() as usize;
    (users <= threads).then(|| {
        unseen(sync.mutex, cond + mutex) + unseen(sync.switch_mutex, switch_cond + switch_mutex)
    })
}

/// A sleeping thread whose first walk was put off (see [`Observer::set_walk_budget`]).
#[derive(Debug, Clone, Copy)]
struct Deferred {
    tstate: u64,
    cpu_ns: u64,
    /// A later deferred tick saw another CPU time or thread state: it ran in between.
    ran: bool,
}

/// Every GIL at this tick, the main one first, where the process has more than one
/// interpreter; empty (no allocation) in the usual process with one.
fn gil_readings(interpreter: &Interpreter, main: GilState, others: &[GilState]) -> Vec<GilReading> {
    let groups = interpreter.other_gils();
    let main_interps = interpreter.main_interpreters();
    if groups.is_empty() && main_interps.len() <= 1 {
        return Vec::new();
    }
    let ids = |interps: &[(u64, Option<i64>)]| interps.iter().map(|&(_, id)| id).collect();
    let main_base = interpreter.gil().block.map_or(0, |(base, _)| base);
    std::iter::once(GilReading {
        base: main_base,
        interpreters: ids(main_interps),
        state: main,
    })
    .chain(groups.iter().zip(others).map(|(group, &state)| GilReading {
        base: group.base(),
        interpreters: ids(&group.interps),
        state,
    }))
    .collect()
}

/// The id of the interpreter at `interp`, as the last walk read it.
fn interpreter_id(interpreter: &Interpreter, interp: u64) -> Option<i64> {
    interpreter
        .main_interpreters()
        .iter()
        .chain(
            interpreter
                .other_gils()
                .iter()
                .flat_map(|g| g.interps.iter()),
        )
        .find(|&&(at, _)| at == interp)
        .and_then(|&(_, id)| id)
}

/// A sleeping thread's last real /proc reading, with its exact CPU clock then, when it was
/// taken, and its counter page's schedule count read before that clock (if mapped).
#[derive(Debug, Clone, Copy)]
struct Sleeper {
    cpu_ns: u64,
    read_ns: u64,
    reading: TaskReading,
    schedules: Option<u32>,
}

/// The last reading of a thread that was asleep then and, by its exact CPU clock, has not
/// run since: it cannot have left the system call it slept in (a thread woken but not yet
/// on a CPU is still where it slept as far as its state goes). Saves most of a tick's
/// /proc reads on targets whose threads mostly sleep.
fn sleeper_reading(
    last_sleeps: &HashMap<i32, Sleeper>,
    tid: i32,
    exact_cpu: Option<u64>,
    now_ns: u64,
) -> Option<TaskReading> {
    let cpu = exact_cpu?;
    recent_sleeper(last_sleeps, tid, now_ns)
        .filter(|was| was.cpu_ns == cpu)
        .map(|was| was.reading)
}

/// A sleeper's last reading, unless it is too old to stand for now ([`REUSE_SLEEPER_NS`]).
fn recent_sleeper(last_sleeps: &HashMap<i32, Sleeper>, tid: i32, now_ns: u64) -> Option<&Sleeper> {
    last_sleeps
        .get(&tid)
        .filter(|was| now_ns.saturating_sub(was.read_ns) <= REUSE_SLEEPER_NS)
}

/// The clock of a sleeper whose counter page counts no schedule since its last reading: it
/// has not been on a CPU since, so its clock is the one read then, and [`sleeper_reading`]
/// will reuse that reading, without the system call that reads the counter.
fn unscheduled_sleeper(
    last_sleeps: &HashMap<i32, Sleeper>,
    tid: i32,
    schedules: Option<u32>,
    now_ns: u64,
) -> Option<u64> {
    let schedules = schedules?;
    recent_sleeper(last_sleeps, tid, now_ns)
        .filter(|was| was.schedules == Some(schedules))
        .map(|was| was.cpu_ns)
}

/// Keep a real reading of a sleeping thread for [`sleeper_reading`], with its exact clock and
/// its schedule count before it.
fn remember_sleeper(
    last_sleeps: &mut HashMap<i32, Sleeper>,
    tid: i32,
    (exact_cpu, schedules): (Option<u64>, Option<u32>),
    now_ns: u64,
    task: TaskReading,
) {
    let asleep = matches!(
        task.activity,
        Activity::Syscall { .. } | Activity::Blocked { .. }
    );
    match exact_cpu {
        Some(cpu_ns) if asleep => {
            last_sleeps.insert(
                tid,
                Sleeper {
                    cpu_ns,
                    read_ns: now_ns,
                    reading: task,
                    schedules,
                },
            );
        }
        _ => {
            last_sleeps.remove(&tid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(activity: Activity) -> TaskReading {
        TaskReading {
            tid: 7,
            activity,
            cpu_ns: 0,
            runqueue_ns: 0,
        }
    }

    /// A GIL whose mutex has `users` users and is owned by `owner` (0: unlocked), and whose
    /// switch mutex has `switch_users`.
    fn gil_sync(users: u32, owner: i32, switch_users: u32) -> GilSync {
        let mut bytes = vec![0u8; GilSync::BYTES];
        let mutex = COND_BYTES;
        bytes[mutex] = (owner != 0) as u8;
        bytes[mutex + 8..mutex + 12].copy_from_slice(&owner.to_le_bytes());
        bytes[mutex + 12..mutex + 16].copy_from_slice(&users.to_le_bytes());
        let switch_mutex = 2 * COND_BYTES + MUTEX_BYTES;
        bytes[switch_mutex + 12..switch_mutex + 16].copy_from_slice(&switch_users.to_le_bytes());
        GilSync::from_bytes(&bytes).unwrap()
    }

    #[test]
    fn the_threads_inside_the_gil_that_a_tick_did_not_see_are_counted() {
        // Four users of the GIL's mutex: two asleep on its condition, one owning it; one
        // is unseen (woken and queued for a CPU).
        assert_eq!(unseen_inside(&gil_sync(4, 42, 0), [2, 0, 0, 0], 8), Some(1));
        // A forced release waiting for the switch, seen asleep there: none unseen.
        assert_eq!(unseen_inside(&gil_sync(0, 0, 1), [0, 0, 1, 0], 8), Some(0));
        // More seen than counted (the tick saw them go in after it read the mutex): none.
        assert_eq!(unseen_inside(&gil_sync(1, 0, 0), [3, 0, 0, 0], 8), Some(0));
        // A count larger than the process's threads is not glibc's mutex, or torn: unknown.
        assert_eq!(unseen_inside(&gil_sync(40, 0, 0), [0, 0, 0, 0], 8), None);
    }

    #[test]
    fn a_sleeper_is_not_read_again_until_its_clock_moves_or_the_reading_is_old() {
        let mut last = HashMap::new();
        let futex = reading(Activity::Syscall {
            nr: 202,
            args: [0x1000, 0x189, 0],
            sp: 1,
            pc: 2,
        });
        remember_sleeper(&mut last, 7, (Some(500), None), 1_000, futex);
        assert_eq!(sleeper_reading(&last, 7, Some(500), 2_000), Some(futex));
        // It ran (however briefly): it may be anywhere now.
        assert_eq!(sleeper_reading(&last, 7, Some(501), 2_000), None);
        // No exact clock: nothing can be known.
        assert_eq!(sleeper_reading(&last, 7, None, 2_000), None);
        assert_eq!(sleeper_reading(&last, 8, Some(500), 2_000), None);
        // Too old: read again (a thread that ended has a frozen clock too).
        let late = 1_000 + REUSE_SLEEPER_NS + 1;
        assert_eq!(sleeper_reading(&last, 7, Some(500), late), None);
        // A runnable thread is never reused, and forgets what it was.
        remember_sleeper(
            &mut last,
            7,
            (Some(900), None),
            3_000,
            reading(Activity::Running),
        );
        assert_eq!(sleeper_reading(&last, 7, Some(900), 3_000), None);
        let fault = reading(Activity::Blocked { sp: 1, pc: 2 });
        remember_sleeper(&mut last, 7, (Some(900), None), 3_000, fault);
        assert_eq!(sleeper_reading(&last, 7, Some(900), 4_000), Some(fault));
        remember_sleeper(&mut last, 7, (None, Some(3)), 5_000, fault);
        assert!(last.is_empty());
    }

    #[test]
    fn a_sleeper_not_put_on_a_cpu_since_keeps_its_clock_unread() {
        let mut last = HashMap::new();
        let futex = reading(Activity::Syscall {
            nr: 202,
            args: [0x1000, 0x189, 0],
            sp: 1,
            pc: 2,
        });
        remember_sleeper(&mut last, 7, (Some(500), Some(40)), 1_000, futex);
        // The same count of schedules: the clock read then, and so the reading.
        assert_eq!(unscheduled_sleeper(&last, 7, Some(40), 2_000), Some(500));
        assert_eq!(sleeper_reading(&last, 7, Some(500), 2_000), Some(futex));
        // Put on a CPU since (the kernel wrote its page): its clock is read.
        assert_eq!(unscheduled_sleeper(&last, 7, Some(42), 2_000), None);
        // No page, another thread, a reading too old: read.
        assert_eq!(unscheduled_sleeper(&last, 7, None, 2_000), None);
        assert_eq!(unscheduled_sleeper(&last, 8, Some(40), 2_000), None);
        let late = 1_000 + REUSE_SLEEPER_NS + 1;
        assert_eq!(unscheduled_sleeper(&last, 7, Some(40), late), None);
        // A reading without a page never matches one.
        remember_sleeper(&mut last, 7, (Some(500), None), 3_000, futex);
        assert_eq!(unscheduled_sleeper(&last, 7, Some(40), 3_000), None);
    }
}
