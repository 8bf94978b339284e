//! What a stuck process looks like, said plainly: findings drawn from a dump after `--sample`
//! (a GIL kept asleep, a deadlock on locks, a stopped holder). Each names its figures.

use crate::model::profile::ThreadProfile;
use crate::model::snapshot::{Snapshot, Syscall, ThreadSnapshot};
use crate::sample::ThreadState;

/// A state "for the whole sample": this share of the thread's ticks at least, over nearly
/// all the sample's ticks. Measured: a thread kept in one state by a hang is in it at
/// every tick but the few a moving target tears.
const WHOLE: f64 = 0.95;
/// Asleep while holding: at most this share of the sampled time on a CPU.
const ASLEEP_CPU: f64 = 0.05;
/// A thread "wants" the GIL when it waited for it this much.
const WANTS: f64 = 0.1;
/// Threads named in one finding, at most.
const MAX_NAMED: usize = 8;

/// Which stuck case a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangKind {
    /// A thread kept the GIL all through the sample while asleep in a system call.
    GilHeldAsleep,
    /// Every Python thread waited on a lock without a timeout, and none held the GIL.
    LockDeadlock,
    /// Threads waited for the GIL all through the sample behind a stopped holder.
    HolderStopped,
}

impl HangKind {
    pub fn name(self) -> &'static str {
        match self {
            HangKind::GilHeldAsleep => "gil_held_asleep",
            HangKind::LockDeadlock => "lock_deadlock",
            HangKind::HolderStopped => "holder_stopped",
        }
    }
}

/// What a thread is to a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It held the GIL.
    Holder,
    /// It waited for the GIL.
    Waiter,
    /// It waited on something else (a lock).
    Blocked,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Holder => "holder",
            Role::Waiter => "waiter",
            Role::Blocked => "blocked",
        }
    }
}

/// One thread named by a finding, with the share of the sample its finding rests on (its
/// hold, wait or idle share).
#[derive(Debug, Clone)]
pub struct Named<'a> {
    pub thread: &'a ThreadSnapshot,
    pub role: Role,
    pub share: f64,
}

/// One finding: the sentence and what it names.
#[derive(Debug, Clone)]
pub struct Hang<'a> {
    pub kind: HangKind,
    pub text: String,
    pub threads: Vec<Named<'a>>,
}

fn pct(f: f64) -> String {
    format!("{:.0}%", 100.0 * f)
}

/// "name (tid)", escaped for a terminal.
fn who(thread: &ThreadSnapshot) -> String {
    let name = if thread.name.is_empty() {
        "?"
    } else {
        &thread.name
    };
    format!("{} ({})", super::printable(name), thread.tid)
}

/// "in function (file:line)": the thread's innermost frame at the snapshot.
fn place(thread: &ThreadSnapshot) -> String {
    match thread.stack.as_deref().and_then(<[_]>::first) {
        Some(frame) => format!("in {}", super::printable(&super::labels::frame(frame))),
        None => "(stack not read)".to_string(),
    }
}

/// The system call a thread sleeps in, by name where known.
pub fn syscall_text(syscall: Syscall) -> String {
    syscall
        .name
        .map_or_else(|| format!("system call {}", syscall.number), str::to_string)
}

/// The stuck cases the dump's sample and snapshot show; empty without a sample, or when
/// nothing is stuck.
pub fn hangs(snapshot: &Snapshot) -> Vec<Hang<'_>> {
    let Some(recording) = &snapshot.recording else {
        return Vec::new();
    };
    let profile = &recording.profile;
    if profile.samples == 0 {
        return Vec::new();
    }
    let rows = profile.threads();
    // A thread's row, if it was there for nearly the whole sample.
    let row = |tid: i32| -> Option<&ThreadProfile> {
        rows.iter()
            .copied()
            .filter(|r| r.tid == tid)
            .max_by_key(|r| r.counts.total())
            .filter(|r| r.counts.total() as f64 >= WHOLE * profile.samples as f64)
    };
    let share = |thread: &ThreadSnapshot, state: ThreadState| {
        row(thread.tid).map_or(0.0, |r| r.fraction(state))
    };
    let duration = profile.duration_s();
    let samples = profile.samples;
    let switches = profile
        .switch_span()
        .map(|((_, first), (_, last))| last.saturating_sub(first))
        .filter(|_| snapshot.target.wait_measured);
    let hand_offs = match switches {
        Some(n) => format!("; the GIL changed hands {n} times"),
        None => String::new(),
    };
    let python: Vec<&ThreadSnapshot> = snapshot
        .threads
        .iter()
        .filter(|t| t.thread_id.is_some())
        .collect();
    let mut found = Vec::new();
    let waiters_of = |holder: &ThreadSnapshot, least: f64| -> Vec<Named<'_>> {
        let mut waiters: Vec<Named> = python
            .iter()
            .filter(|t| t.tid != holder.tid && t.gil == holder.gil)
            .map(|t| Named {
                thread: t,
                role: Role::Waiter,
                share: share(t, ThreadState::Wait),
            })
            .filter(|n| n.share >= least)
            .collect();
        waiters.sort_by(|a, b| b.share.total_cmp(&a.share));
        waiters
    };
    let listed = |named: &[Named]| -> String {
        let mut parts: Vec<String> = named
            .iter()
            .take(MAX_NAMED)
            .map(|n| format!("{} waited {}", who(n.thread), pct(n.share)))
            .collect();
        if named.len() > MAX_NAMED {
            parts.push(format!("{} more", named.len() - MAX_NAMED));
        }
        parts.join(", ")
    };

    for holder in &python {
        let held = share(holder, ThreadState::Hold);
        let Some(condition) = &holder.condition else {
            continue;
        };
        if held < WHOLE {
            continue;
        }
        let stopped = matches!(condition.state, 't' | 'T');
        let asleep = matches!(condition.state, 'S' | 'D');
        let cpu = holder.sampled_cpu_s;
        match condition.syscall {
            Some(syscall)
                if asleep && cpu.is_some_and(|cpu| cpu <= ASLEEP_CPU * duration.max(1e-3)) =>
            {
                let waiters = waiters_of(holder, WANTS);
                let stalled = if waiters.is_empty() {
                    "Any other thread that needs the GIL stalls until it returns.".to_string()
                } else {
                    format!("Every other Python thread stalls: {}.", listed(&waiters))
                };
                let text = format!(
                    "{} kept the GIL through the whole {duration:.1} s sample (held {} of \
                     {samples} samples{hand_offs}) while asleep in {} ({:.1} ms of CPU), {}: a \
                     C call that blocks without releasing the GIL (a C extension, or a \
                     function called through ctypes.PyDLL). {stalled}",
                    who(holder),
                    pct(held),
                    syscall_text(syscall),
                    1e3 * cpu.unwrap_or(0.0),
                    place(holder),
                );
                let mut threads = vec![Named {
                    thread: holder,
                    role: Role::Holder,
                    share: held,
                }];
                threads.extend(waiters);
                found.push(Hang {
                    kind: HangKind::GilHeldAsleep,
                    text,
                    threads,
                });
            }
            _ if stopped => {
                let waiters = waiters_of(holder, WHOLE);
                if waiters.is_empty() {
                    continue;
                }
                let everyone_stopped = snapshot.threads.iter().all(|t| {
                    t.condition
                        .as_ref()
                        .is_none_or(|c| matches!(c.state, 't' | 'T'))
                });
                let why = match (&condition.tracer, condition.state) {
                    (Some((pid, name)), _) => format!(
                        "stopped by its tracer, pid {pid} ({}): it runs again when the tracer \
                         resumes it or detaches",
                        super::printable(name)
                    ),
                    (None, _) if everyone_stopped => "the whole process is stopped (SIGSTOP, \
                         or SIGTSTP from Ctrl-Z): SIGCONT resumes it"
                        .to_string(),
                    (None, 't') => "stopped by a tracer".to_string(),
                    (None, _) => "stopped by a signal".to_string(),
                };
                let text = format!(
                    "{} held the GIL stopped (state {} in /proc) through the whole \
                     {duration:.1} s sample (held {} of {samples} samples{hand_offs}), {}: \
                     {why}. Threads waited for the GIL all along: {}.",
                    who(holder),
                    condition.state,
                    pct(held),
                    place(holder),
                    listed(&waiters),
                );
                let mut threads = vec![Named {
                    thread: holder,
                    role: Role::Holder,
                    share: held,
                }];
                threads.extend(waiters);
                found.push(Hang {
                    kind: HangKind::HolderStopped,
                    text,
                    threads,
                });
            }
            _ => {}
        }
    }

    // Every Python thread asleep on a lock, with no timeout, all through the sample, while
    // the GIL sat free: nothing in the process runs Python to release a lock.
    let untimed_lock = |t: &ThreadSnapshot| {
        t.condition.as_ref().is_some_and(|c| {
            matches!(c.state, 'S' | 'D') && c.syscall.is_some_and(|s| s.untimed_futex)
        })
    };
    let idle_all_along = |t: &&ThreadSnapshot| share(t, ThreadState::Idle) >= WHOLE;
    if !python.is_empty()
        && profile.held() <= 1.0 - WHOLE
        && python.iter().all(|t| untimed_lock(t) && idle_all_along(t))
    {
        let threads: Vec<Named> = python
            .iter()
            .map(|t| Named {
                thread: t,
                role: Role::Blocked,
                share: share(t, ThreadState::Idle),
            })
            .collect();
        let least = threads.iter().map(|n| n.share).fold(1.0, f64::min);
        let mut places: Vec<String> = threads
            .iter()
            .take(MAX_NAMED)
            .map(|n| format!("{} waits {}", who(n.thread), place(n.thread)))
            .collect();
        if threads.len() > MAX_NAMED {
            places.push(format!("{} more", threads.len() - MAX_NAMED));
        }
        let text = format!(
            "Every Python thread ({}) waited on a lock without a timeout through the whole \
             {duration:.1} s sample (idle at least {} of {samples} samples each) while no \
             thread held the GIL (held {}): none of them runs again unless something outside \
             Python releases a lock, a deadlock if they wait for each other. {}.",
            threads.len(),
            pct(least),
            pct(profile.held()),
            places.join("; ")
        );
        found.push(Hang {
            kind: HangKind::LockDeadlock,
            text,
            threads,
        });
    }
    found
}
