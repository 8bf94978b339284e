//! `gilscope dump`: one snapshot of every thread (GIL state and Python stack) at an instant,
//! optionally after a short recording that adds fractions and blame. Never stops the target.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::python::stack::{Frame, StackTable};
use crate::record::{self, RecordOptions, Target};
use crate::report::{Recording, TargetInfo};
use crate::sample::observe::{Observer, TickError};
use crate::sample::ThreadState;
use crate::target::memory::ProcessMemory;
use crate::target::process;

/// Between the reads a snapshot classifies from: the spacing of a recording's ticks, so that
/// a runnable thread's CPU clock tells native work from a queue for the GIL the same way.
const SNAPSHOT_GAP: Duration = Duration::from_millis(1);
/// Attempts at a snapshot whose reads a moving target tore.
const SNAPSHOT_ATTEMPTS: usize = 20;

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

fn sample_options(pid: i32, duration: Duration) -> RecordOptions {
    RecordOptions {
        target: Target::Pid(pid),
        rate_hz: 1000.0,
        duration: Some(duration),
        stacks: true,
        timeline: false,
        progress: None,
    }
}

/// Take a snapshot of process `pid`, after recording for `sample` if given.
pub fn dump(pid: i32, sample: Option<Duration>) -> Result<Snapshot> {
    let observer = record::attach(pid)?;
    let (recording, observer) = match sample {
        Some(duration) => {
            let stop = AtomicBool::new(false);
            let options = sample_options(pid, duration);
            let (recording, observer) = record::run(observer, None, &options, &stop, None, None);
            (Some(recording), observer)
        }
        None => (None, observer),
    };
    snapshot(observer, recording)
}

/// Snapshots of process `pid` (if it is Python) and of every Python process below it, after
/// recording them all together for `sample` if given; in the order found, `pid` first.
pub fn dump_tree(pid: i32, sample: Option<Duration>) -> Result<Vec<Snapshot>> {
    let root = match record::attach(pid) {
        Ok(observer) => Some(observer),
        Err(Error::NotPython { .. } | Error::NotReady { .. }) => None,
        Err(e) => return Err(e),
    };
    let mut descendants = record::Descendants::new(pid);
    let observed: Vec<(Option<Recording>, _)> = match sample {
        Some(duration) => {
            let stop = AtomicBool::new(false);
            let options = sample_options(pid, duration);
            record::run_tree(root, &mut descendants, None, &options, &stop, None, None)
                .into_iter()
                .map(|(recording, observer)| (Some(recording), observer))
                .collect()
        }
        None => root
            .into_iter()
            .chain(
                process::descendants(&[pid])
                    .into_iter()
                    .filter_map(|p| record::attach(p).ok()),
            )
            .map(|observer| (None, observer))
            .collect(),
    };
    if observed.is_empty() {
        return Err(Error::NoPythonInTree { pid });
    }
    // A process that exited since it was found has no snapshot; the others still do.
    let snapshots: Vec<Snapshot> = observed
        .into_iter()
        .filter_map(|(recording, observer)| snapshot(observer, recording).ok())
        .collect();
    if snapshots.is_empty() {
        return Err(Error::NoSuchProcess { pid });
    }
    Ok(snapshots)
}

/// Every thread of `observer`'s process at one instant.
fn snapshot(
    mut observer: Observer<ProcessMemory>,
    recording: Option<Recording>,
) -> Result<Snapshot> {
    let pid = observer.pid;
    let target = record::target_info(&observer);
    observer.enable_stacks();
    let mut last_error = String::new();
    for _ in 0..SNAPSHOT_ATTEMPTS {
        // Three reads a moment apart: the middle one is classified with a look at what
        // each thread did just before and just after it, as in a recording.
        let mut ticks = Vec::with_capacity(3);
        for i in 0..3 {
            if i > 0 {
                std::thread::sleep(SNAPSHOT_GAP);
            }
            match observer.observe() {
                Ok(o) => ticks.push(o),
                Err(TickError::Torn(why)) => {
                    last_error = why;
                    break;
                }
                Err(_) => return Err(Error::NoSuchProcess { pid }),
            }
        }
        if ticks.len() < 3 {
            continue;
        }
        let mut classifier = record::classifier_for(&observer);
        let mut samples: Vec<_> = ticks.iter().flat_map(|t| classifier.push(t)).collect();
        samples.extend(classifier.finish());
        let Some(sample) = samples.into_iter().nth(1) else {
            continue;
        };
        let first = &ticks[1];
        let python_names = observer.python_thread_names();
        let table = observer.stack_table().cloned().unwrap_or_default();
        let threads: Vec<ThreadSnapshot> = sample
            .threads
            .iter()
            .map(|t| {
                let os_name = observer.current_thread_name(t.tid).unwrap_or_default();
                // A thread that ended since the tick may have passed its ident on.
                let name = t
                    .thread_id
                    .filter(|_| observer.thread_alive(t.tid))
                    .and_then(|id| python_names.get(&id).cloned())
                    .unwrap_or_else(|| os_name.clone());
                ThreadSnapshot {
                    tid: t.tid,
                    ns_tid: t.ns_tid,
                    thread_id: t.thread_id,
                    name,
                    os_name,
                    state: t.state,
                    stack: t.stack.map(|id| innermost_first(&table, id)),
                    interpreter: match t.gil {
                        Some((_, interpreter)) => interpreter,
                        None if sample.gils.is_empty() && t.thread_id.is_some() => Some(0),
                        None => None,
                    },
                    gil: match t.gil {
                        Some((index, _)) => Some(index as usize),
                        None => (sample.gils.is_empty() && t.thread_id.is_some()).then_some(0),
                    },
                }
            })
            .collect();
        let holder_of = |index: usize| {
            threads
                .iter()
                .find(|t| t.state == ThreadState::Hold && t.gil == Some(index))
                .map(|t| t.tid)
        };
        let gils = if sample.gils.is_empty() {
            vec![GilSnapshot {
                interpreters: vec![Some(0)],
                own: false,
                locked: first.locked,
                holder: threads
                    .iter()
                    .find(|t| t.state == ThreadState::Hold)
                    .map(|t| t.tid),
            }]
        } else {
            sample
                .gils
                .iter()
                .enumerate()
                .map(|(index, gil)| {
                    let mut interpreters = gil.interpreters.clone();
                    interpreters.sort_by_key(|id| id.unwrap_or(i64::MAX));
                    GilSnapshot {
                        interpreters,
                        own: index > 0,
                        locked: gil.state.locked,
                        holder: holder_of(index),
                    }
                })
                .collect()
        };
        return Ok(Snapshot {
            target,
            gil_locked: first.locked,
            gil_enabled: first.gil.enabled,
            interval_us: first.gil.interval_us,
            threads,
            gils,
            recording,
        });
    }
    Err(Error::Internal(format!(
        "the target changed under every one of {SNAPSHOT_ATTEMPTS} snapshots ({last_error})"
    )))
}

fn innermost_first(table: &StackTable, id: u32) -> Vec<Frame> {
    let mut frames: Vec<Frame> = table.frames(id).cloned().collect();
    frames.reverse();
    frames
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
            .map(|t| (t.tid, ThreadState::ALL.map(|s| t.fraction(s))))
            .collect()
    }
}
