//! Snapshots for `gilscope dump`: every thread's GIL state and Python stack at an instant,
//! optionally after a short recording that adds fractions and blame. Never stops the target.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::{RecordOptions, Recorder, Source};
use crate::error::{Error, Result};
use crate::model::snapshot::{Condition, GilSnapshot, Locals, Snapshot, Syscall, ThreadSnapshot};
use crate::model::Recording;
use crate::python::locals::LocalsReader;
use crate::python::stack::StackError;
use crate::sample::native::NativeOptions;
use crate::sample::observe::{Observation, Observer, TickError};
use crate::sample::ThreadState;
use crate::stack::{Frame, FrameKind, StackId, StackTable};
use crate::target::memory::{ProcessMemory, ReadError};
use crate::target::task;

/// Between the reads a snapshot classifies from: the spacing of a recording's ticks, so that
/// a runnable thread's CPU clock tells native work from a queue for the GIL the same way.
const SNAPSHOT_GAP: Duration = Duration::from_millis(1);
/// Attempts at a snapshot whose reads a moving target tore.
const SNAPSHOT_ATTEMPTS: usize = 20;
/// With native frames: the perf period of a snapshot, and how long perf samples the threads
/// before the snapshot's reads (a runnable thread's stack comes from a sample this recent).
const SNAPSHOT_PERF_PERIOD_NS: u64 = 1_000_000;
const SNAPSHOT_PERF_WARM_UP: Duration = Duration::from_millis(10);

/// What a dump reads besides every thread's state and stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpOptions {
    /// Record this long first (`--sample`).
    pub sample: Option<Duration>,
    /// Read each frame's variables (`--locals`).
    pub locals: bool,
    /// Merge native frames into the stacks (`--native`).
    pub native: bool,
    /// Classify the sample's runnable threads by where they left their CPU
    /// (`--switch-sites`, with `sample` only).
    pub switch_sites: bool,
}

/// Snapshots of process `pid`, and with `subprocesses` of every Python process below it,
/// after recording them all together for `options.sample` if given; in the order found,
/// `pid` first. Alone, a process that cannot be snapshot is an error; in a tree, one that
/// exited since it was found is left out. With `options.native`, stacks have their native
/// frames merged in.
pub fn dump(pid: i32, subprocesses: bool, options: DumpOptions) -> Result<Vec<Snapshot>> {
    let stop = AtomicBool::new(false);
    let mut recorder = Recorder::open(&Source::Pid(pid), subprocesses, &stop)?;
    let sample = options.sample;
    // Each thread's CPU clock when the sample starts: what a thread did with the GIL it
    // held (ran, or slept in a system call) shows in how far its clock moved.
    let mut cpu_before = HashMap::new();
    if sample.is_some() {
        let mut pids = vec![pid];
        if subprocesses {
            pids.extend(crate::target::process::descendants(&[pid]));
        }
        for process in pids {
            for (tid, ns) in task::cpu_times(process) {
                cpu_before.insert((process, tid), ns);
            }
        }
    }
    let observed: Vec<(Option<Recording>, Observer<ProcessMemory>)> = match sample {
        Some(duration) => {
            let options = RecordOptions {
                rate_hz: 1000.0,
                duration: Some(duration),
                stacks: true,
                native: options.native,
                switch_sites: options.switch_sites,
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
            Some((recording, observer)) => {
                Ok(vec![snapshot(observer, recording, options, &cpu_before)?])
            }
            None => Err(Error::NoSuchProcess { pid }),
        };
    }
    if observed.is_empty() {
        return Err(Error::NoPythonInTree { pid });
    }
    let snapshots: Vec<Snapshot> = observed
        .into_iter()
        .filter_map(|(recording, observer)| {
            snapshot(observer, recording, options, &cpu_before).ok()
        })
        .collect();
    if snapshots.is_empty() {
        return Err(Error::NoSuchProcess { pid });
    }
    Ok(snapshots)
}

/// Every thread of `observer`'s process at one instant; with `options.locals`, each frame's
/// variables, with `options.native` native frames merged into the stacks; with `cpu_before` (each thread's CPU clock when a sample started, by pid and
/// tid), the CPU time each used since.
fn snapshot(
    mut observer: Observer<ProcessMemory>,
    recording: Option<Recording>,
    options: DumpOptions,
    cpu_before: &HashMap<(i32, i32), u64>,
) -> Result<Snapshot> {
    let pid = observer.pid;
    let target = super::target_info(&observer);
    observer.enable_stacks();
    if options.native {
        // Every thread followed at once: a snapshot has no time to learn which ones run.
        let options = NativeOptions {
            period_ns: SNAPSHOT_PERF_PERIOD_NS,
            follow_every_thread: true,
        };
        if observer.enable_native(options).is_ok() && observer.observe().is_ok() {
            std::thread::sleep(SNAPSHOT_PERF_WARM_UP);
        }
    }
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
        let mut variables = if options.locals {
            read_locals(&mut observer, first)?
        } else {
            HashMap::new()
        };
        let cpu_now = if cpu_before.is_empty() {
            HashMap::new()
        } else {
            task::cpu_times(pid)
        };
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
                let (locals, stack) = match variables.remove(&t.tid) {
                    // With native frames, the stack of the tick keeps them where its Python
                    // frames are those the variables were read with; else the variables'
                    // own stack is shown, so that every variable is under its frame.
                    Some((locals, Some(stack))) => match t.stack {
                        Some(merged) if same_python_frames(&table, merged, stack) => {
                            (locals, Some(merged))
                        }
                        _ => (locals, Some(stack)),
                    },
                    Some((locals, None)) => (locals, t.stack),
                    None => (Locals::NotAsked, t.stack),
                };
                let sampled_cpu_s = cpu_before
                    .get(&(pid, t.tid))
                    .zip(cpu_now.get(&t.tid))
                    .map(|(before, now)| now.saturating_sub(*before) as f64 / 1e9);
                ThreadSnapshot {
                    tid: t.tid,
                    ns_tid: t.ns_tid,
                    thread_id: t.thread_id,
                    name,
                    os_name,
                    state: t.state,
                    stack: stack.map(|id| innermost_first(&table, id)),
                    locals,
                    condition: task::condition(pid, t.tid).map(condition),
                    sampled_cpu_s,
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

/// The kernel's view of a thread, in the model's terms.
fn condition(condition: task::Condition) -> Condition {
    Condition {
        state: condition.state,
        syscall: condition.syscall.map(|(number, args)| Syscall {
            number,
            name: task::syscall_name(number),
            untimed_futex: number == task::SYS_FUTEX && args[3] == 0,
        }),
        tracer: condition.tracer,
    }
}

/// Each Python thread's variables and the stack they were read with, by tid.
fn read_locals(
    observer: &mut Observer<ProcessMemory>,
    tick: &Observation,
) -> Result<HashMap<i32, (Locals, Option<StackId>)>> {
    let interpreter = &observer.interpreter;
    let mut reader = LocalsReader::new(
        &interpreter.description().version,
        &interpreter.description().layout,
    );
    let mut read = HashMap::new();
    for thread in &tick.threads {
        let Some(tstate) = thread.tstate else {
            continue;
        };
        let Some(reader) = reader.as_mut() else {
            read.insert(thread.tid, (Locals::Unsupported, None));
            continue;
        };
        let entry = match observer.read_locals(reader, tstate) {
            Ok(locals) => (Locals::Read(locals.frames), Some(locals.stack)),
            Err(StackError::Read(ReadError::Gone)) => {
                return Err(Error::NoSuchProcess { pid: observer.pid })
            }
            Err(_) => (Locals::Moved, None),
        };
        read.insert(thread.tid, entry);
    }
    Ok(read)
}

/// Do stacks `a` and `b` of `table` have the same Python frames, in the same order?
fn same_python_frames(table: &StackTable, a: StackId, b: StackId) -> bool {
    let python = |id| {
        table
            .frames(id)
            .filter(|f| f.kind == FrameKind::Python)
            .cloned()
            .collect::<Vec<Frame>>()
    };
    a == b || python(a) == python(b)
}

fn innermost_first(table: &StackTable, id: u32) -> Vec<Frame> {
    let mut frames: Vec<Frame> = table.frames(id).cloned().collect();
    frames.reverse();
    frames
}
