//! Snapshots for `gilscope dump`: every thread's GIL state and Python stack at an instant,
//! optionally after a short recording that adds fractions and blame. Never stops the target.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::{RecordOptions, Recorder, Source};
use crate::error::{Error, Result};
use crate::model::snapshot::{GilSnapshot, Snapshot, ThreadSnapshot};
use crate::model::Recording;
use crate::sample::observe::{Observer, TickError};
use crate::sample::ThreadState;
use crate::stack::{Frame, StackTable};
use crate::target::memory::ProcessMemory;

/// Between the reads a snapshot classifies from: the spacing of a recording's ticks, so that
/// a runnable thread's CPU clock tells native work from a queue for the GIL the same way.
const SNAPSHOT_GAP: Duration = Duration::from_millis(1);
/// Attempts at a snapshot whose reads a moving target tore.
const SNAPSHOT_ATTEMPTS: usize = 20;

/// Snapshots of process `pid`, and with `subprocesses` of every Python process below it,
/// after recording them all together for `sample` if given; in the order found, `pid` first.
/// Alone, a process that cannot be snapshot is an error; in a tree, one that exited since it
/// was found is left out.
pub fn dump(pid: i32, subprocesses: bool, sample: Option<Duration>) -> Result<Vec<Snapshot>> {
    let stop = AtomicBool::new(false);
    let mut recorder = Recorder::open(&Source::Pid(pid), subprocesses, &stop)?;
    let observed: Vec<(Option<Recording>, Observer<ProcessMemory>)> = match sample {
        Some(duration) => {
            let options = RecordOptions {
                rate_hz: 1000.0,
                duration: Some(duration),
                stacks: true,
                timeline: false,
                progress: None,
            };
            recorder
                .run(&options, &stop, None, None)
                .into_iter()
                .map(|(recording, observer)| (Some(recording), observer))
                .collect()
        }
        None => recorder
            .observers()
            .into_iter()
            .map(|observer| (None, observer))
            .collect(),
    };
    if !subprocesses {
        let mut observed = observed;
        return match observed.pop() {
            Some((recording, observer)) => Ok(vec![snapshot(observer, recording)?]),
            None => Err(Error::NoSuchProcess { pid }),
        };
    }
    if observed.is_empty() {
        return Err(Error::NoPythonInTree { pid });
    }
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
    let target = super::target_info(&observer);
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
                Err(TickError::Limit(why)) => return Err(Error::Unreadable { pid, why }),
                Err(_) => return Err(Error::NoSuchProcess { pid }),
            }
        }
        if ticks.len() < 3 {
            continue;
        }
        let mut classifier = super::classifier_for(&observer);
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
