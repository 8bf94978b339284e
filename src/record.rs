//! A recording from start to end: find or start the target, attach to its interpreter, run
//! the sampling loop until the duration, a stop request or the target's exit, and aggregate.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::python::interpreter::{Interpreter, LayoutSource};
use crate::report::{EndReason, Profile, Recording, SamplerStats, TargetInfo};
use crate::sample::classify::Classifier;
use crate::sample::monotonic_ns;
use crate::sample::observe::{Observation, Observer, TickError};
use crate::sample::schedule::Schedule;
use crate::target::memory::ProcessMemory;
use crate::target::process::{self, Liveness};

/// How long a started command may take to become a running Python interpreter.
const SPAWN_ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
/// How often thread names are read again (threads often name themselves after they start).
const NAME_REFRESH: Duration = Duration::from_millis(500);
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

/// Observers of the raw ticks (for `--observations`): gets every observation in order.
pub type ObservationSink<'a> = &'a mut dyn FnMut(&Observation);

/// Receivers of a recording in slices (for `top`): every `every`, the profile of the slice
/// just ended, with its threads named, and the observer that can resolve its stacks. The
/// next slice starts empty, so the `Recording` returned at the end holds only the last one.
pub struct Slices<'a> {
    pub every: Duration,
    pub sink: &'a mut dyn FnMut(Profile, &Health, &Observer<ProcessMemory>),
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

/// Start a command and wait until it is a Python interpreter we can sample.
pub fn spawn(command: &[String], stop: &AtomicBool) -> Result<(Spawned, Observer<ProcessMemory>)> {
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
    let mut spawned = Spawned { child };
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
    }
}

/// Tell the progress callback, if any, how the recording is going.
fn report_progress(
    options: &RecordOptions,
    start_ns: u64,
    profile: &Profile,
    errors: u64,
    schedule: &Schedule,
    done: bool,
) {
    if let Some(progress) = options.progress {
        progress(&Progress {
            elapsed_s: monotonic_ns().saturating_sub(start_ns) as f64 / 1e9,
            total_s: options.duration.map(|d| d.as_secs_f64()),
            samples: profile.samples,
            errors,
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

/// Give the profile's threads their current OS and Python names.
fn name_threads(profile: &mut Profile, observer: &mut Observer<ProcessMemory>) {
    profile.refresh_names(|tid| observer.current_thread_name(tid));
    profile.set_python_names(&observer.python_thread_names());
}

/// Sample `observer` until the duration passes, `stop` is raised or the target exits.
pub fn run(
    observer: &mut Observer<ProcessMemory>,
    mut spawned: Option<&mut Spawned>,
    options: &RecordOptions,
    stop: &AtomicBool,
    sink: Option<ObservationSink>,
    mut slices: Option<Slices>,
) -> Recording {
    let target = target_info(observer);
    let stacks = options.stacks && observer.enable_stacks();
    let mut stack_errors = 0u64;
    let mut profile = Profile::new();
    if options.timeline {
        profile.record_timeline();
    }
    let mut classifier = Classifier::new();
    let start = monotonic_ns();
    let deadline = options
        .duration
        .map(|d| start + d.as_nanos().min(u64::MAX as u128) as u64);
    let realtime = crate::sample::schedule::sample_on_time();
    let cpu_before = process::cpu_times();
    let mut schedule = Schedule::new(options.rate_hz, start);
    let mut errors = 0u64;
    let mut consecutive_errors = 0u64;
    let mut sink = sink;
    let mut names_read = Instant::now();
    let mut slice_start = Instant::now();
    let mut busy_ns = 0;
    let ended = loop {
        if !schedule.wait(stop, busy_ns) {
            break EndReason::Interrupted;
        }
        if deadline.is_some_and(|d| monotonic_ns() >= d) {
            break EndReason::Duration;
        }
        if spawned.as_mut().is_some_and(|s| s.exited()) {
            break EndReason::TargetExited;
        }
        let tick_start = monotonic_ns();
        let result = observer.observe();
        busy_ns = monotonic_ns().saturating_sub(tick_start);
        match result {
            Ok(observation) => {
                consecutive_errors = 0;
                stack_errors += observation.stack_errors as u64;
                if let Some(sink) = sink.as_mut() {
                    sink(&observation);
                }
                for sample in classifier.push(&observation) {
                    profile.add(&sample, |tid| {
                        observer.current_thread_name(tid).unwrap_or_default()
                    });
                }
                if names_read.elapsed() >= NAME_REFRESH {
                    report_progress(options, start, &profile, errors, &schedule, false);
                    name_threads(&mut profile, observer);
                    names_read = Instant::now();
                }
                if let Some(slices) = slices.as_mut() {
                    if slice_start.elapsed() >= slices.every {
                        name_threads(&mut profile, observer);
                        let health = health(errors, &schedule);
                        (slices.sink)(std::mem::take(&mut profile), &health, observer);
                        slice_start = Instant::now();
                    }
                }
            }
            Err(TickError::Gone) => break EndReason::TargetExited,
            Err(TickError::Denied) => break EndReason::TargetExited,
            Err(TickError::Torn(_)) => {
                errors += 1;
                consecutive_errors += 1;
                if consecutive_errors >= MAX_CONSECUTIVE_ERRORS
                    || process::liveness(observer.pid) != Liveness::Alive
                {
                    break EndReason::TargetExited;
                }
            }
        }
    };
    for sample in classifier.finish() {
        profile.add(&sample, |tid| {
            observer.current_thread_name(tid).unwrap_or_default()
        });
    }
    name_threads(&mut profile, observer);
    report_progress(options, start, &profile, errors, &schedule, true);
    let host_steal = process::steal_share(cpu_before, process::cpu_times());
    let ticks = profile.samples + errors;
    Recording {
        target,
        sampler: SamplerStats {
            rate_hz: options.rate_hz,
            errors,
            late_ticks: schedule.late_ticks,
            max_lag_s: schedule.max_lag_ns as f64 / 1e9,
            mean_lag_s: if ticks > 0 {
                schedule.total_lag_ns as f64 / ticks as f64 / 1e9
            } else {
                0.0
            },
            ended,
            realtime,
            host_steal: host_steal.map(|s| (s * 1e4).round() / 1e4),
            stack_errors,
            cpu_clock: match observer.cpu_clock_unavailable() {
                None => "perf".into(),
                Some(errno) => format!(
                    "schedstat (perf_event_open: {})",
                    std::io::Error::from_raw_os_error(errno)
                ),
            },
        },
        health: health(errors, &schedule),
        profile,
        stacks: if stacks {
            observer.take_stack_table()
        } else {
            None
        },
    }
}
