//! A recording from start to end, for every command: find or start the target (one process,
//! or a process and the Python processes below it), attach to each interpreter, run the
//! sampling loop until the duration, a stop request or the target's exit, and aggregate.

mod member;
pub mod snapshot;
mod spawn;
mod tree;

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::{EndReason, LayoutInfo, Profile, Recording, SwitchSites, TargetInfo};
use crate::python::discovery::LayoutSource;
use crate::python::interpreter::Interpreter;
use crate::sample::classify::Classifier;
use crate::sample::monotonic_ns;
use crate::sample::observe::{Observation, Observer};
use crate::sample::schedule::{Schedule, Wait};
use crate::target::memory::ProcessMemory;
use crate::target::namespace::ThreadIds;
use crate::target::process::{self, Liveness};

use member::Member;
pub use spawn::Spawned;
use tree::Descendants;

/// How long a started command may take to become a running Python interpreter.
const SPAWN_ATTACH_TIMEOUT: Duration = Duration::from_secs(15);
/// How often thread names are read again (threads often name themselves after they start).
const NAME_REFRESH: Duration = Duration::from_millis(500);
/// Names are refreshed a slice at a time, this many slices per [`NAME_REFRESH`]: on a target
/// with thousands of threads one pass would pause the sampler for tens of milliseconds.
const NAME_SLICES: u32 = 10;

/// What to record: a process that runs, or a command to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Pid(i32),
    Command(Vec<String>),
}

/// How to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub rate_hz: f64,
    pub duration: Option<Duration>,
    /// Read Python stacks at every tick (off with --gil-only).
    pub stacks: bool,
    /// Merge native stacks into them (`--native`; needs `stacks`).
    pub native: bool,
    /// Locate runnable threads by where they left their CPU (`--switch-sites`).
    pub switch_sites: bool,
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

/// The processes of one recording: the target alone, or with `subprocesses` the target and
/// every Python process below it, found as they appear. Made by [`Recorder::open`], sampled
/// by [`Recorder::run`]; a command it started is ended when it is dropped.
pub struct Recorder {
    /// The pid recorded, or the root of the tree.
    pub root: i32,
    /// The root's interpreter, when it is Python (always, without `subprocesses`).
    first: Option<Observer<ProcessMemory>>,
    tree: Option<Descendants>,
    spawned: Option<Spawned>,
}

impl Recorder {
    /// Attach to `source`, or start it and wait until it is a Python gilscope can sample; with
    /// `subprocesses`, the root need not be Python yet (a shell, a launcher, a Python still
    /// setting up): the tree's scans find the Python processes as they come.
    pub fn open(source: &Source, subprocesses: bool, stop: &AtomicBool) -> Result<Recorder> {
        let (spawned, first) = match (source, subprocesses) {
            (Source::Pid(pid), false) => (None, Some(attach(*pid)?)),
            (Source::Command(command), false) => {
                let (spawned, observer) = spawn::spawn(command, stop)?;
                (Some(spawned), Some(observer))
            }
            (Source::Pid(pid), true) => (None, attach_root(*pid, false)?),
            (Source::Command(command), true) => {
                let spawned = spawn::start(command)?;
                match attach_root(spawned.pid(), true) {
                    Ok(first) => (Some(spawned), first),
                    Err(e) => {
                        spawned.finish();
                        return Err(e);
                    }
                }
            }
        };
        let root = match (&first, &spawned, source) {
            (_, Some(spawned), _) => spawned.pid(),
            (Some(observer), None, _) => observer.pid,
            (None, None, Source::Pid(pid)) => *pid,
            (None, None, Source::Command(_)) => unreachable!("a command is always spawned"),
        };
        Ok(Recorder {
            root,
            first,
            tree: subprocesses.then(|| Descendants::new(root)),
            spawned,
        })
    }

    /// A recording of the process `observer` is attached to (and with `subprocesses` of the
    /// Python processes below it).
    pub fn from_observer(observer: Observer<ProcessMemory>, subprocesses: bool) -> Recorder {
        let root = observer.pid;
        Recorder {
            root,
            first: Some(observer),
            tree: subprocesses.then(|| Descendants::new(root)),
            spawned: None,
        }
    }

    /// The root's description, when the root is Python and not yet sampled.
    pub fn target(&self) -> Option<TargetInfo> {
        self.first.as_ref().map(target_info)
    }

    /// The root's Python version, when the root is Python.
    pub fn python_version(&self) -> Option<String> {
        self.first
            .as_ref()
            .map(|o| o.interpreter.description().version.to_string())
    }

    /// Sample until the duration passes, `stop` is raised, or the target exits (with
    /// subprocesses: the root and every process found). A recording per process, in the
    /// order found, each with its observer (which can still read the process's stacks).
    pub fn run(
        &mut self,
        options: &RecordOptions,
        stop: &AtomicBool,
        sink: Option<ObservationSink>,
        slices: Option<Slices>,
    ) -> Vec<(Recording, Observer<ProcessMemory>)> {
        let members = self
            .first
            .take()
            .into_iter()
            .map(|o| Member::new(o, options))
            .collect();
        sample(
            members,
            self.tree.as_mut(),
            self.spawned.as_mut(),
            options,
            stop,
            sink,
            slices,
        )
    }

    /// Every Python process of the recording as it is now, without sampling: the root, and
    /// with subprocesses each Python process below it (for an instant snapshot).
    pub fn observers(&mut self) -> Vec<Observer<ProcessMemory>> {
        let mut found: Vec<Observer<ProcessMemory>> = self.first.take().into_iter().collect();
        if self.tree.is_some() {
            found.extend(
                process::descendants(&[self.root])
                    .into_iter()
                    .filter_map(|pid| attach(pid).ok()),
            );
        }
        found
    }

    /// Processes of the tree that are Python but could not be sampled, and why.
    pub fn refused(&self) -> &[(i32, String)] {
        self.tree.as_ref().map_or(&[], |t| t.refused())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(spawned) = self.spawned.take() {
            spawned.finish();
        }
    }
}

/// The root of a tree: its interpreter if it is Python, None if it may become one or start
/// one (a shell, a launcher, a Python that gilscope `started` and that is still setting up).
fn attach_root(pid: i32, started: bool) -> Result<Option<Observer<ProcessMemory>>> {
    match attach(pid) {
        Ok(observer) => Ok(Some(observer)),
        Err(Error::NotPython { .. } | Error::NotReady { .. }) => Ok(None),
        Err(Error::UnrecognisedLayout { .. }) if started => Ok(None),
        Err(e) => Err(e),
    }
}

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
    let ids = ThreadIds::of(pid).map_err(|e| Error::ForeignNamespace { pid, why: e.why })?;
    let interpreter = Interpreter::attach(pid, &memory)?;
    Ok(Observer::new(pid, memory, interpreter, ids))
}

/// The classifier for an attached target: one that never says "waiting" where waits cannot
/// be seen.
pub(crate) fn classifier_for(observer: &Observer<ProcessMemory>) -> Classifier {
    if observer.interpreter.description().measures_wait() {
        Classifier::new()
    } else {
        Classifier::without_wait()
    }
}

/// Whether `--switch-sites` is in effect on `observer`'s process (None: it was not asked
/// for), and why not where it is not (docs/ACCURACY.md, point 11).
pub fn switch_sites(observer: &Observer<ProcessMemory>) -> Option<SwitchSites> {
    if let Some(why) = observer.switch_outs_refused() {
        return Some(SwitchSites::Unavailable(why.to_string()));
    }
    observer.switch_outs_status().map(|(perf, _)| match perf {
        Some(errno) => SwitchSites::Unavailable(format!(
            "perf_event_open: {}",
            std::io::Error::from_raw_os_error(errno)
        )),
        None => SwitchSites::Perf,
    })
}

/// Describe the attached target for reports.
pub fn target_info(observer: &Observer<ProcessMemory>) -> TargetInfo {
    let interpreter = observer.interpreter.description();
    TargetInfo {
        pid: observer.pid,
        ns_pid: observer.ns_pid(),
        python_version: interpreter.version,
        binary: interpreter.binary.clone(),
        command_line: process::command_line(observer.pid).unwrap_or_default(),
        layout: LayoutInfo {
            table: match interpreter.layout_source {
                LayoutSource::Table => Some(interpreter.layout.family),
                LayoutSource::DebugOffsets => None,
            },
            notes: interpreter.notes.clone(),
        },
        wait_measured: interpreter.measures_wait(),
        free_threaded: interpreter.layout.free_threaded,
        sys_path: observer.sys_path(),
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

pub(super) fn health(errors: u64, schedule: &Schedule) -> Health {
    Health {
        errors,
        late_ticks: schedule.late_ticks,
        total_lag_ns: schedule.total_lag_ns,
    }
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
                        profile: member.profile.take_slice(),
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
