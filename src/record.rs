//! A recording from start to end: find or start the target, attach to its interpreter, run
//! the sampling loop until the duration, a stop request or the target's exit, and aggregate.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::python::interpreter::{Interpreter, LayoutSource};
use crate::report::{EndReason, Profile, Recording, SamplerStats, TargetInfo};
use crate::sample::classify::Classifier;
use crate::sample::monotonic_ns;
use crate::sample::observe::{Observation, Observer, TickError};
use crate::sample::schedule::{Schedule, Wait};
use crate::sample::stats::Stopwatch;
use crate::target::memory::ProcessMemory;
use crate::target::process::{self, Liveness};

/// How long a process that could no longer be read while alive is given to finish an exec.
const EXEC_SETTLES: Duration = Duration::from_millis(200);
/// How long a started command may take to become a running Python interpreter.
const SPAWN_ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
/// How often thread names are read again (threads often name themselves after they start).
const NAME_REFRESH: Duration = Duration::from_millis(500);
/// Names are refreshed a slice at a time, this many slices per [`NAME_REFRESH`]: on a target
/// with thousands of threads one pass would pause the sampler for tens of milliseconds.
const NAME_SLICES: u32 = 10;
/// Share of the sampling interval a tick may spend on first walks of sleeping threads.
const WALK_SHARE: f64 = 0.25;
/// Python names come from a walk of `threading`'s registry: read again when threads came or
/// went or some thread had no name yet (at most every [`NAME_REFRESH`]), and otherwise this
/// often (a thread renamed).
const PYTHON_NAME_REFRESH: Duration = Duration::from_secs(5);
/// Consecutive failed ticks after which the target is considered unreadable.
const MAX_CONSECUTIVE_ERRORS: u64 = 1000;

/// What to record.
#[derive(Debug, Clone)]
pub enum Target {
    Pid(i32),
    Command(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub target: Target,
    pub rate_hz: f64,
    pub duration: Option<Duration>,
    /// Read Python stacks at every tick (off with --gil-only).
    pub stacks: bool,
    /// Keep each thread's states in time order (for the timeline formats).
    pub timeline: bool,
    /// Told how the recording is going every half second, and once at the end.
    pub progress: Option<fn(&Progress)>,
}

/// How a recording is going, for a progress line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub elapsed_s: f64,
    /// The requested duration, if any.
    pub total_s: Option<f64>,
    pub samples: u64,
    pub errors: u64,
    pub max_lag_s: f64,
    /// The recording is over (the last call).
    pub done: bool,
}

/// Observers of the raw ticks (for `--observations`): gets every observation in order, with
/// the pid of the process it is of.
pub type ObservationSink<'a> = &'a mut dyn FnMut(i32, &Observation);

/// Receivers of a recording in slices (for `top` and `serve`): every `every`, for each
/// process, the profile of the slice just ended. The next slice starts empty, so a
/// `Recording` returned at the end holds only the last one.
pub struct Slices<'a> {
    pub every: Duration,
    pub sink: &'a mut dyn FnMut(ProcessSlice),
}

/// One process's slice of a recording.
pub struct ProcessSlice<'a> {
    /// With its threads named.
    pub profile: Profile,
    /// The sampler's health over the whole recording so far.
    pub health: &'a Health,
    /// The process's observer, which can resolve the profile's stacks.
    pub observer: &'a Observer<ProcessMemory>,
    /// The process exited: this is its last slice.
    pub exited: bool,
}

pub use crate::sample::Health;

/// Check that `pid` is a process we can look at, with the most useful error if not.
pub fn check_target(pid: i32) -> Result<()> {
    if pid <= 0 {
        return Err(Error::Usage(format!("{pid} is not a valid pid")));
    }
    if pid == std::process::id() as i32 {
        return Err(Error::SelfTarget { pid });
    }
    match process::liveness(pid) {
        Liveness::Gone => return Err(Error::NoSuchProcess { pid }),
        Liveness::Zombie => return Err(Error::Zombie { pid }),
        Liveness::KernelThread => return Err(Error::KernelThread { pid }),
        Liveness::Alive => {}
    }
    process::may_inspect(pid).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => Error::NoSuchProcess { pid },
        _ => Error::PermissionDenied {
            pid,
            what: "read the memory".into(),
        },
    })
}

/// Attach to an existing process.
pub fn attach(pid: i32) -> Result<Observer<ProcessMemory>> {
    check_target(pid)?;
    let memory = ProcessMemory::new(pid);
    let interpreter = Interpreter::attach(pid, &memory)?;
    Ok(Observer::new(pid, memory, interpreter))
}

/// A command started by gilscope; killed when the recording is over if still running.
pub struct Spawned {
    child: Child,
}

impl Spawned {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// End the command: SIGTERM, a moment's grace, then SIGKILL; always reaped.
    pub fn finish(mut self) {
        if self.exited() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.pid());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a command.
pub fn start(command: &[String]) -> Result<Spawned> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Error::Usage("no command given after --".into()))?;
    let child = Command::new(program)
        .args(args)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command.join(" "),
            source,
        })?;
    Ok(Spawned { child })
}

/// Start a command and wait until it is a Python interpreter we can sample.
pub fn spawn(command: &[String], stop: &AtomicBool) -> Result<(Spawned, Observer<ProcessMemory>)> {
    let mut spawned = start(command)?;
    let pid = spawned.pid();
    let started = Instant::now();
    loop {
        // The command may be a shell or a shim that execs Python: retry until it is one.
        let last = match attach(pid) {
            Ok(observer) => return Ok((spawned, observer)),
            Err(e) => e,
        };
        let transient = matches!(
            last,
            Error::NotReady { .. } | Error::NotPython { .. } | Error::UnrecognisedLayout { .. }
        );
        if spawned.exited() {
            return Err(Error::Spawn {
                command: command.join(" "),
                source: std::io::Error::other("it exited before a Python interpreter started"),
            });
        }
        if !transient || started.elapsed() > SPAWN_ATTACH_TIMEOUT || stop.load(Ordering::Relaxed) {
            spawned.finish();
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The classifier for an attached target: one that never says "waiting" where waits cannot
/// be seen.
pub fn classifier_for(observer: &Observer<ProcessMemory>) -> Classifier {
    if observer.interpreter.measures_wait() {
        Classifier::new()
    } else {
        Classifier::without_wait()
    }
}

/// Describe the attached target for reports.
pub fn target_info(observer: &Observer<ProcessMemory>) -> TargetInfo {
    let interpreter = &observer.interpreter;
    let mut layout = match interpreter.layout_source {
        LayoutSource::Table => format!("table {}", interpreter.layout.family),
        LayoutSource::DebugOffsets => "_Py_DebugOffsets".to_string(),
    };
    for note in &interpreter.notes {
        layout.push_str("; ");
        layout.push_str(note);
    }
    TargetInfo {
        pid: observer.pid,
        python_version: interpreter.version.to_string(),
        binary: interpreter.binary.clone(),
        command_line: process::command_line(observer.pid).unwrap_or_default(),
        layout,
        wait_measured: interpreter.measures_wait(),
        free_threaded: interpreter.layout.free_threaded,
    }
}

/// Tell the progress callback, if any, how the recording is going.
fn report_progress(
    options: &RecordOptions,
    start_ns: u64,
    members: &[Member],
    schedule: &Schedule,
    done: bool,
) {
    if let Some(progress) = options.progress {
        progress(&Progress {
            elapsed_s: monotonic_ns().saturating_sub(start_ns) as f64 / 1e9,
            total_s: options.duration.map(|d| d.as_secs_f64()),
            samples: members.iter().map(|m| m.profile.samples).sum(),
            errors: members.iter().map(|m| m.errors).sum(),
            max_lag_s: schedule.max_lag_ns as f64 / 1e9,
            done,
        });
    }
}

fn health(errors: u64, schedule: &Schedule) -> Health {
    Health {
        errors,
        late_ticks: schedule.late_ticks,
        total_lag_ns: schedule.total_lag_ns,
    }
}

/// One Python process being sampled: what it is, and what has been gathered from it.
struct Member {
    observer: Observer<ProcessMemory>,
    target: TargetInfo,
    stacks: bool,
    classifier: Classifier,
    profile: Profile,
    errors: u64,
    consecutive_errors: u64,
    stack_errors: u64,
    /// Its process exited (or could no longer be read): it is sampled no more.
    exited: bool,
    /// What its process was when attached: an exec changes it, and so does the pid's reuse
    /// by another process after this one exited (`process::identity`).
    identity: Option<process::Identity>,
    /// It could not be read any more while its process still lived: maybe in the middle of
    /// an exec (the kernel ends every other thread first), said once the exec is over.
    lost_alive: bool,
    /// The program its process exec'd, if it did: its Python is gone (`exited` is set too).
    execed: Option<PathBuf>,
    /// When Python names were last read, the interpreter's lists generation then, and
    /// whether they named every Python thread alive.
    python_names_read: Option<(Instant, u64, bool)>,
    /// Its last slice, the one that says it exited, was given out.
    sliced_out: bool,
}

impl Member {
    fn new(mut observer: Observer<ProcessMemory>, options: &RecordOptions) -> Member {
        let target = target_info(&observer);
        let classifier = classifier_for(&observer);
        let identity = process::identity(observer.pid);
        let stacks = options.stacks && observer.enable_stacks();
        // First walks of sleeping threads (a pool of idle workers seen at attach) may take a
        // quarter of the interval per tick; the rest wait for later ticks (exactly resolved,
        // as a sleeping thread's stack does not change).
        if options.rate_hz > 0.0 {
            observer.set_walk_budget(Some((WALK_SHARE * 1e9 / options.rate_hz) as u64));
        }
        let mut profile = Profile::new();
        if options.timeline {
            profile.record_timeline();
        }
        Member {
            observer,
            target,
            stacks,
            classifier,
            profile,
            errors: 0,
            consecutive_errors: 0,
            stack_errors: 0,
            exited: false,
            identity,
            lost_alive: false,
            execed: None,
            python_names_read: None,
            sliced_out: false,
        }
    }

    /// Has the process exec'd another program since it was attached? Then its Python is gone
    /// and the ticks to come would read a stranger's memory: sample it no more. Its pid taken
    /// by another process means it exited.
    fn check_exec(&mut self) -> bool {
        if self.execed.is_some() {
            return true;
        }
        let (Some(before), Some(now)) = (self.identity, process::identity(self.observer.pid))
        else {
            return false;
        };
        match now.change_from(&before) {
            process::Change::Same => {}
            process::Change::Execed => {
                self.execed =
                    Some(process::executable(self.observer.pid).unwrap_or_else(|| "?".into()));
                self.exited = true;
            }
            process::Change::Reused => self.exited = true,
        }
        self.execed.is_some()
    }

    /// Is this member the process that has its pid now (not one that exited or exec'd, whose
    /// pid now belongs to another process or program)?
    fn is_current(&self) -> bool {
        if self.execed.is_some() {
            return false;
        }
        match (self.identity, process::identity(self.observer.pid)) {
            (Some(before), Some(now)) => now.change_from(&before) == process::Change::Same,
            _ => true,
        }
    }

    /// A member that could no longer be read while its process lived: wait a moment for an
    /// exec under way to finish, so that it is said to have exec'd rather than exited.
    fn settle_exec(&mut self) {
        if !self.lost_alive || self.execed.is_some() {
            return;
        }
        let deadline = Instant::now() + EXEC_SETTLES;
        while Instant::now() < deadline {
            if self.check_exec() || process::liveness(self.observer.pid) != Liveness::Alive {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Take one tick of this process into its profile.
    fn tick(&mut self, sink: &mut Option<ObservationSink>) {
        let mut lap = Stopwatch::start();
        let start_ns = lap.last_ns();
        self.take_tick(sink, &mut lap);
        let stats = &mut self.observer.stats;
        stats.ticks += 1;
        stats.tick_ns += monotonic_ns().saturating_sub(start_ns);
    }

    fn take_tick(&mut self, sink: &mut Option<ObservationSink>, lap: &mut Stopwatch) {
        match self.observer.observe() {
            Ok(observation) => {
                self.consecutive_errors = 0;
                self.stack_errors += observation.stack_errors as u64;
                if let Some(sink) = sink.as_mut() {
                    sink(self.observer.pid, &observation);
                }
                lap.split();
                let observer = &self.observer;
                for sample in self.classifier.push(&observation) {
                    self.profile.add(&sample, |tid| {
                        observer.current_thread_name(tid).unwrap_or_default()
                    });
                }
                self.observer.stats.aggregate_ns += lap.split();
            }
            Err(TickError::Gone) | Err(TickError::Denied) => {
                self.exited = true;
                // Alive but unreadable: an exec from a thread other than the main one makes
                // the kernel end every other thread before the new program is there.
                self.lost_alive = process::liveness(self.observer.pid) == Liveness::Alive;
                self.check_exec();
            }
            Err(TickError::Torn(_)) if self.check_exec() => {}
            Err(TickError::Torn(_)) => {
                self.errors += 1;
                self.consecutive_errors += 1;
                if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS
                    || process::liveness(self.observer.pid) != Liveness::Alive
                {
                    self.exited = true;
                }
            }
        }
    }

    /// Give the profile's threads their current OS and Python names. Not once the process
    /// has exited: its pid may be another process's by now, and the last names stand.
    fn name_threads(&mut self) {
        if self.exited || self.check_exec() {
            return;
        }
        let observer = &mut self.observer;
        self.profile
            .refresh_names(|tid| observer.current_thread_name(tid));
        self.read_python_names();
    }

    /// One slice of [`Member::name_threads`], for the sampling loop: a share of the OS names,
    /// and the Python names if threads came or went (or they are old).
    fn name_some_threads(&mut self) {
        if self.exited || self.check_exec() {
            return;
        }
        let observer = &mut self.observer;
        let budget = self
            .profile
            .threads()
            .len()
            .div_ceil(NAME_SLICES as usize)
            .max(1);
        self.profile
            .refresh_some_names(budget, |tid| observer.current_thread_name(tid));
        let generation = self.observer.interpreter.lists_generation();
        let due = self.python_names_read.is_none_or(|(at, seen, complete)| {
            let age = at.elapsed();
            ((seen != generation || !complete) && age >= NAME_REFRESH) || age >= PYTHON_NAME_REFRESH
        });
        if due {
            self.read_python_names();
        }
    }

    fn read_python_names(&mut self) {
        let observer = &mut self.observer;
        let names = observer.python_thread_names();
        self.profile
            .set_python_names(&names, |tid| observer.thread_alive(tid));
        let complete = !self
            .profile
            .lacks_python_names(&names, |tid| observer.thread_alive(tid));
        self.python_names_read = Some((
            Instant::now(),
            observer.interpreter.lists_generation(),
            complete,
        ));
    }

    /// The recording of this process, once sampling is over.
    fn finish(
        mut self,
        ended: EndReason,
        options: &RecordOptions,
        schedule: &Schedule,
        host_steal: Option<f64>,
        realtime: bool,
    ) -> (Recording, Observer<ProcessMemory>) {
        self.settle_exec();
        // Attached while the program was starting (gilscope started it, or --subprocesses
        // caught a new worker), its version may have come from the library's name alone.
        if self.observer.refine_version() {
            self.target.python_version = self.observer.interpreter.version.to_string();
        }
        let observer = &self.observer;
        for sample in self.classifier.finish() {
            self.profile.add(&sample, |tid| {
                observer.current_thread_name(tid).unwrap_or_default()
            });
        }
        self.name_threads();
        let stacks = if self.stacks {
            self.observer.take_stack_table()
        } else {
            None
        };
        let recording = Recording {
            target: self.target,
            sampler: SamplerStats {
                rate_hz: options.rate_hz,
                errors: self.errors,
                late_ticks: schedule.late_ticks,
                max_lag_s: schedule.max_lag_ns as f64 / 1e9,
                // The schedule is shared by every process sampled: its own figures.
                mean_lag_s: if schedule.ticks > 0 {
                    schedule.total_lag_ns as f64 / schedule.ticks as f64 / 1e9
                } else {
                    0.0
                },
                ended: if self.execed.is_some() {
                    EndReason::TargetExeced
                } else if self.exited {
                    EndReason::TargetExited
                } else {
                    ended
                },
                realtime,
                host_steal: host_steal.map(|s| (s * 1e4).round() / 1e4),
                stack_errors: self.stack_errors,
                stats: self.observer.stats,
                cpu_clock: match self.observer.cpu_clock_unavailable() {
                    None => "perf".into(),
                    Some(errno) => format!(
                        "schedstat (perf_event_open: {})",
                        std::io::Error::from_raw_os_error(errno)
                    ),
                },
            },
            health: health(self.errors, schedule),
            profile: self.profile,
            stacks,
        };
        (recording, self.observer)
    }
}

/// How often the target's process tree is read again for new Python processes.
const RESCAN: Duration = Duration::from_millis(200);

/// How long a process that shows no Python is tried again, in case it is one still loading.
const STARTING: Duration = Duration::from_secs(2);

/// A process of the tree that could not be sampled yet.
struct Tried {
    /// Its program when tried (an exec starts the tries again).
    exe: Option<PathBuf>,
    /// When it was first tried as this program.
    since: Instant,
    /// How long to go on trying.
    patience: Duration,
    /// Why it could not be sampled, if it is a Python (said if it never can be).
    python: Option<String>,
}

impl Tried {
    fn new(exe: Option<PathBuf>, since: Instant) -> Tried {
        Tried {
            exe,
            since,
            patience: STARTING,
            python: None,
        }
    }
}

/// Finds the Python processes below a root as they appear: children forked by the target,
/// and programs that a shell or launcher starts (and execs into Python) at any time.
pub struct Descendants {
    root: i32,
    last_scan: Option<Instant>,
    /// Processes that were not (yet) Python when tried.
    tried: HashMap<i32, Tried>,
    /// Processes that are Python but cannot be sampled, with the reason (said once).
    refused: Vec<(i32, String)>,
}

impl Descendants {
    pub fn new(root: i32) -> Descendants {
        Descendants {
            root,
            last_scan: None,
            tried: HashMap::new(),
            refused: Vec::new(),
        }
    }

    /// Processes of the tree that are Python but could not be sampled, and why.
    pub fn refused(&self) -> &[(i32, String)] {
        &self.refused
    }

    /// Attach to the tree's new Python processes, if a scan is due.
    fn scan(&mut self, members: &mut Vec<Member>, options: &RecordOptions) {
        if self.last_scan.is_some_and(|t| t.elapsed() < RESCAN) {
            return;
        }
        self.last_scan = Some(Instant::now());
        let mut roots = vec![self.root];
        roots.extend(members.iter().filter(|m| !m.exited).map(|m| m.observer.pid));
        let mut candidates = vec![self.root];
        candidates.extend(process::descendants(&roots));
        for pid in candidates {
            // A member that exec'd is gone as that Python; its new program may be another.
            if members
                .iter_mut()
                .filter(|m| m.observer.pid == pid)
                .any(|m| {
                    m.check_exec();
                    m.is_current()
                })
                || self.refused.iter().any(|&(p, _)| p == pid)
                || members.len() >= process::MAX_DESCENDANTS
            {
                continue;
            }
            let exe = process::executable(pid);
            let now = Instant::now();
            if let Some(tried) = self.tried.get_mut(&pid) {
                if tried.exe != exe {
                    // It exec'd another program: that one gets its own chances.
                    *tried = Tried::new(exe.clone(), now);
                } else if tried.since.elapsed() > tried.patience {
                    // A Python that never became readable is said, once; others are let be.
                    if let Some(why) = tried.python.take() {
                        self.refused.push((pid, why));
                    }
                    continue;
                }
            }
            match attach(pid) {
                Ok(observer) => {
                    self.tried.remove(&pid);
                    members.push(Member::new(observer, options));
                }
                // Not Python, or not yet: a Python that is still loading its libraries looks
                // like no Python for a moment, one still initialising for longer.
                Err(
                    Error::NotPython { .. } | Error::NoSuchProcess { .. } | Error::Zombie { .. },
                ) => {
                    self.tried.entry(pid).or_insert(Tried::new(exe, now));
                }
                Err(e @ (Error::NotReady { .. } | Error::UnrecognisedLayout { .. })) => {
                    let tried = self.tried.entry(pid).or_insert(Tried::new(exe, now));
                    tried.patience = SPAWN_ATTACH_TIMEOUT;
                    tried.python = Some(e.to_string());
                }
                Err(e) => self.refused.push((pid, e.to_string())),
            }
        }
        self.tried
            .retain(|&pid, _| process::liveness(pid) == Liveness::Alive);
    }
}

/// Sample `observer` until the duration passes, `stop` is raised or the target exits; the
/// observer is given back, its stacks taken into the recording.
pub fn run(
    observer: Observer<ProcessMemory>,
    spawned: Option<&mut Spawned>,
    options: &RecordOptions,
    stop: &AtomicBool,
    sink: Option<ObservationSink>,
    slices: Option<Slices>,
) -> (Recording, Observer<ProcessMemory>) {
    let members = vec![Member::new(observer, options)];
    let mut finished = sample(members, None, spawned, options, stop, sink, slices);
    finished.remove(0)
}

/// Sample every Python process of a tree: `first` (the root, if it is Python) and each one
/// `descendants` finds, until the duration passes, `stop` is raised, or the root and every
/// process found have exited. A recording per process, in the order they were found, with
/// its observer.
pub fn run_tree(
    first: Option<Observer<ProcessMemory>>,
    descendants: &mut Descendants,
    spawned: Option<&mut Spawned>,
    options: &RecordOptions,
    stop: &AtomicBool,
    sink: Option<ObservationSink>,
    slices: Option<Slices>,
) -> Vec<(Recording, Observer<ProcessMemory>)> {
    let members = first.into_iter().map(|o| Member::new(o, options)).collect();
    sample(
        members,
        Some(descendants),
        spawned,
        options,
        stop,
        sink,
        slices,
    )
}

fn sample(
    mut members: Vec<Member>,
    mut descendants: Option<&mut Descendants>,
    mut spawned: Option<&mut Spawned>,
    options: &RecordOptions,
    stop: &AtomicBool,
    sink: Option<ObservationSink>,
    mut slices: Option<Slices>,
) -> Vec<(Recording, Observer<ProcessMemory>)> {
    let start = monotonic_ns();
    let deadline = options
        .duration
        .map(|d| start + d.as_nanos().min(u64::MAX as u128) as u64);
    let realtime = crate::sample::schedule::sample_on_time();
    let cpu_before = process::cpu_times();
    let mut schedule = Schedule::new(options.rate_hz, start);
    let mut sink = sink;
    let mut names_read = Instant::now();
    let mut progress_shown = Instant::now();
    let mut slice_start = Instant::now();
    let mut busy_ns = 0;
    let ended = loop {
        match schedule.wait(stop, busy_ns, deadline) {
            Wait::Tick => {}
            Wait::Stopped => break EndReason::Interrupted,
            Wait::Deadline => break EndReason::Duration,
        }
        if deadline.is_some_and(|d| monotonic_ns() >= d) {
            break EndReason::Duration;
        }
        let tick_start = monotonic_ns();
        let root_exited = match (spawned.as_mut(), descendants.as_deref()) {
            (Some(spawned), _) => spawned.exited(),
            (None, Some(tree)) => process::liveness(tree.root) != Liveness::Alive,
            (None, None) => false,
        };
        if let Some(tree) = descendants.as_mut() {
            tree.scan(&mut members, options);
        }
        let all_exited = members.iter().all(|m| m.exited);
        // Alone, the target's exit ends the recording; in a tree, the last exit does.
        if (descendants.is_none() && (root_exited || all_exited))
            || (descendants.is_some() && root_exited && all_exited)
        {
            break EndReason::TargetExited;
        }
        for member in members.iter_mut().filter(|m| !m.exited) {
            member.tick(&mut sink);
        }
        busy_ns = monotonic_ns().saturating_sub(tick_start);
        if names_read.elapsed() >= NAME_REFRESH / NAME_SLICES {
            members.iter_mut().for_each(Member::name_some_threads);
            names_read = Instant::now();
        }
        if progress_shown.elapsed() >= NAME_REFRESH {
            report_progress(options, start, &members, &schedule, false);
            progress_shown = Instant::now();
        }
        if let Some(slices) = slices.as_mut() {
            if slice_start.elapsed() >= slices.every {
                for member in members.iter_mut().filter(|m| !m.sliced_out) {
                    member.name_threads();
                    let health = health(member.errors, &schedule);
                    (slices.sink)(ProcessSlice {
                        profile: std::mem::take(&mut member.profile),
                        health: &health,
                        observer: &member.observer,
                        exited: member.exited,
                    });
                    member.sliced_out = member.exited;
                }
                slice_start = Instant::now();
            }
        }
    };
    report_progress(options, start, &members, &schedule, true);
    let host_steal = process::steal_share(cpu_before, process::cpu_times());
    members
        .into_iter()
        .map(|m| m.finish(ended, options, &schedule, host_steal, realtime))
        .collect()
}
