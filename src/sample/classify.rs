//! The rules that turn raw ticks into hold / wait / running / idle per thread, measured against
//! the uprobe reference (docs/ACCURACY.md). Pure functions of observations: no reads here.
//!
//! A thread's own tick decides most cases: the holder holds; a thread asleep on a futex inside
//! the GIL, or owning the GIL's mutex, or in whose name the GIL is locked while it runs no
//! Python, is inside `take_gil` or a release: it waits; a thread asleep on anything else is
//! idle. A *runnable* thread that does not hold the GIL is the hard case: it may run native
//! code, or sit on its way into or out of the GIL, queued for a CPU.
//!
//! Where the GIL's mutexes can be read (glibc), they say how many threads are inside
//! `take_gil`'s critical section and a forced release's wait ([`Observation::unseen_in_gil`]
//! counts those the tick did not see asleep there): that many runnable threads, the likeliest
//! first, are queued inside the GIL; the others are not. Two places of the GIL's code lie
//! outside those sections: a release's last steps after it hands the mutex on (where a
//! waiter woken by the release often preempts the releasing thread), and the door of
//! `take_gil`. A thread last seen inside the GIL's code, or released from a hold of a whole
//! switch interval (a forced switch, which goes straight back into `take_gil`), and unseen
//! since, is still there; anything else runnable and uncounted runs outside the GIL.
//!
//! Where the count cannot be read, history decides, as measured before it existed: a thread
//! that was *executing* just before the tick runs native code (GIL hand-off code runs for
//! microseconds, native work for as long as it has a CPU); one that was not is still wherever
//! it was last seen doing something. A runnable thread that next shows up in the GIL without
//! having used the CPU in between was already on its way in ([`LOOKAHEAD`]).

use std::collections::{HashMap, VecDeque};

use super::observe::{Observation, ThreadObservation};
use super::{Sample, ThreadSample, ThreadState};
use crate::python::layout::{ATTACHED, SUSPENDED};
use crate::target::native::switches::SwitchedOut;

/// A runnable thread is executing if it used at least this share of the interval on a CPU.
/// GIL hand-off code never comes close; measured plateau 0.1-0.3 (docs/ACCURACY.md).
pub const EXECUTING_SHARE: f64 = 0.1;
/// ...and at least this much CPU (ns), so that very high rates do not mistake hand-off code
/// (a few futex calls: tens of µs at most) for work.
pub const EXECUTING_FLOOR_NS: u64 = 100_000;
/// A thread that goes from a tick into the GIL's futex using less CPU than this (ns) was
/// already entering `take_gil`: locking its mutex and sleeping on its condition costs 7-45 µs
/// (measured against the uprobe reference on a 2-core VM, docs/ACCURACY.md), while native code
/// preempted that close to its end is rare (the chance is this over the length of the call).
pub const ENTERING_GIL_CPU_NS: u64 = 50_000;
/// How many ticks the classifier looks ahead (and so how many it holds back): a thread queued
/// for a CPU is seen within a few scheduler slices of a few ms each.
pub const LOOKAHEAD: usize = 24;

/// Which rule decided a thread's state at a tick (for tools that compare ticks with the
/// reference: examples/compare.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// The kernel had stopped it (SIGSTOP, job control, a debugger).
    Stopped,
    /// A free-threaded build without its GIL: the thread's own attach state.
    NoGil,
    /// The GIL's holder.
    Holder,
    /// Asleep on a GIL futex, or its own "requested" flag set.
    InGil,
    /// Owns the GIL's mutex, or the GIL is locked in its name while it is not running Python.
    InGilCode,
    /// Runnable, and among the threads the GIL's mutexes count inside it.
    QueuedInGil,
    /// Runnable, not among them: outside the GIL, though history put it inside.
    OutsideGil,
    /// Runnable, not among them, but last seen inside the GIL's code, or released from a
    /// forced switch, and not seen to leave: in the parts of the GIL the count does not cover.
    StillInGil,
    /// Asleep somewhere else.
    Asleep,
    /// Runnable, and reached the GIL next without using the CPU on the way.
    EntersGil,
    /// Runnable and using the CPU: native code.
    Executing,
    /// Runnable, idle on its CPU, last seen in the GIL: still there.
    LastInGil,
    /// Runnable, idle on its CPU, last seen elsewhere.
    LastElsewhere,
    /// Runnable, off its CPU since it left it inside `take_gil` or a release.
    SwitchedOutInGil,
    /// Runnable, off its CPU since it left it elsewhere.
    SwitchedOutElsewhere,
}

/// What a tick says on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evidence {
    Hold,
    Wait,
    Idle,
    Runnable,
}

fn evidence(thread: &ThreadObservation) -> Evidence {
    // Asleep on the GIL's own mutex or condition variables means inside take_gil or
    // drop_gil, whatever the holder fields say: that is waiting.
    if thread.gil_futex || thread.gil_requested == Some(true) {
        Evidence::Wait
    } else if thread.holder {
        Evidence::Hold
    } else if thread.owns_gil_mutex || (thread.runnable && thread.gil_in_its_name) {
        // Inside take_gil or a release, runnable or not.
        Evidence::Wait
    } else if thread.runnable {
        Evidence::Runnable
    } else {
        Evidence::Idle
    }
}

/// A thread's state at a tick without a GIL (a free-threaded build): attached threads run
/// Python, suspended ones are held in a stop-the-world pause, and detached ones run native
/// code or sleep, as the kernel says.
fn no_gil_state(thread: &ThreadObservation) -> ThreadState {
    match thread.attach_state {
        Some(ATTACHED) => ThreadState::Attached,
        Some(SUSPENDED) => ThreadState::Suspended,
        _ if thread.runnable => ThreadState::Running,
        _ => ThreadState::Idle,
    }
}

/// A thread the kernel had stopped (SIGSTOP, job control, a debugger) is stopped, whatever
/// its GIL flags say: it could run nothing, so it neither held nor waited for the GIL in any
/// sense the program could feel, and its process's time stopped is not GIL time.
fn stopped_sample(thread: &ThreadObservation) -> Option<ThreadSample> {
    thread.stopped.then_some(ThreadSample {
        tid: thread.tid,
        ns_tid: thread.ns_tid,
        thread_id: thread.thread_id,
        state: ThreadState::Stopped,
        stack: thread.stack,
        deferred: thread.deferred,
        gil: thread.gil,
        cpu: Some((thread.cpu_exact, thread.cpu_ns)),
    })
}

/// Did the thread spend a real share of [from, to] on a CPU? (ns; cpu from schedstat)
fn executing(cpu_from: u64, cpu_to: u64, from_ns: u64, to_ns: u64) -> bool {
    let cpu = cpu_to.saturating_sub(cpu_from);
    let wall = to_ns.saturating_sub(from_ns);
    wall > 0 && cpu >= EXECUTING_FLOOR_NS && cpu as f64 >= EXECUTING_SHARE * wall as f64
}

/// Can two readings of a thread's CPU time be subtracted? A perf counter counts from when it
/// was opened, schedstat from the thread's start: a thread read from one at one tick and from
/// the other at the next (a counter refused, or left unread for a holder) has no interval.
fn same_clock(a: &ThreadObservation, b: &ThreadObservation) -> bool {
    a.cpu_exact == b.cpu_exact
}

/// Does the thread, runnable at this tick, next show up in the GIL (waiting or holding) without
/// having used [`ENTERING_GIL_CPU_NS`] of CPU on the way? Then it was already in (or at the
/// door of) `take_gil`. Unknown futures (the thread gone, a different thread on the tid, an
/// inexact clock, the look ahead exhausted) say no.
fn enters_gil_without_cpu<'a>(
    thread: &ThreadObservation,
    future: impl IntoIterator<Item = &'a Observation>,
) -> bool {
    if !thread.cpu_exact {
        return false;
    }
    for tick in future {
        let Ok(i) = tick.threads.binary_search_by_key(&thread.tid, |t| t.tid) else {
            return false;
        };
        let later = &tick.threads[i];
        if later.thread_id != thread.thread_id || !later.cpu_exact || later.stopped {
            return false;
        }
        if later.cpu_ns.saturating_sub(thread.cpu_ns) >= ENTERING_GIL_CPU_NS {
            return false;
        }
        match evidence(later) {
            Evidence::Wait | Evidence::Hold => return true,
            Evidence::Idle => return false,
            Evidence::Runnable => {}
        }
    }
    false
}

/// A thread's tick with the time it stands for.
#[derive(Debug, Clone, Copy)]
struct Seen {
    time_ns: u64,
    thread: ThreadObservation,
}

#[derive(Debug, Default)]
struct Track {
    /// The state of the thread's last tick that was not an unexplained runnable one.
    anchor: Option<ThreadState>,
    /// Its previous tick.
    previous: Option<Seen>,
    /// Its previous tick put it inside the GIL (asleep there, in its code, or counted).
    was_in_gil: bool,
    /// Its latest run of holding ticks: when the first was, and how long from the first to
    /// the last.
    hold_since: u64,
    held_ns: u64,
    /// Its anchor came from seeing it inside the GIL's code (owning its mutex, or the GIL
    /// locked in its name while not running Python): a thread seen there and unseen since
    /// has not been seen to leave.
    in_gil_code: bool,
}

/// The main GIL as a tick read it.
#[derive(Debug, Clone, Copy)]
struct LastGil {
    time_ns: u64,
    locked: bool,
    holder: u64,
    switch_number: u64,
}

/// Turns a stream of observations into samples, [`LOOKAHEAD`] ticks behind (it looks ahead).
#[derive(Default)]
pub struct Classifier {
    tracks: HashMap<i32, Track>,
    /// The previous tick's main GIL: when it was, whether it was locked, by whom, and its
    /// switch count.
    last_gil: Option<LastGil>,
    pending: VecDeque<Observation>,
    /// Waiting cannot be seen on this interpreter (2.7, a stripped 3.6): no tick is waiting.
    no_wait: bool,
}

impl Classifier {
    pub fn new() -> Classifier {
        Classifier::default()
    }

    /// For interpreters whose GIL waits cannot be seen: a runnable thread without the GIL
    /// that the rules would place on its way into it is counted as running (on a CPU or
    /// ready for one, without the GIL), which is all that can be known of it there.
    pub fn without_wait() -> Classifier {
        Classifier {
            no_wait: true,
            ..Classifier::default()
        }
    }

    /// Add a tick; returns the samples now complete (those with enough ticks after them).
    pub fn push(&mut self, observation: &Observation) -> Vec<Sample> {
        self.push_explained(observation)
            .into_iter()
            .map(|(sample, _)| sample)
            .collect()
    }

    /// The ticks held back, classified with whatever look ahead they have.
    pub fn finish(&mut self) -> Vec<Sample> {
        self.finish_explained()
            .into_iter()
            .map(|(sample, _)| sample)
            .collect()
    }

    /// [`Classifier::push`], with the rule that decided each thread's state (in the order of
    /// the sample's threads).
    pub fn push_explained(&mut self, observation: &Observation) -> Vec<(Sample, Vec<Rule>)> {
        self.pending.push_back(observation.clone());
        let mut done = Vec::new();
        while self.pending.len() > LOOKAHEAD {
            done.extend(self.classify_oldest());
        }
        done
    }

    /// [`Classifier::finish`], with the rules.
    pub fn finish_explained(&mut self) -> Vec<(Sample, Vec<Rule>)> {
        std::iter::from_fn(|| self.classify_oldest()).collect()
    }

    fn classify_oldest(&mut self) -> Option<(Sample, Vec<Rule>)> {
        let tick = self.pending.pop_front()?;
        Some(self.classify(&tick))
    }

    /// Classify `tick`; the ticks after it are `self.pending`.
    fn classify(&mut self, tick: &Observation) -> (Sample, Vec<Rule>) {
        let next = self.pending.front();
        let time_ns = tick.time_ns();
        let next_time = next.map(|n| n.time_ns()).unwrap_or(time_ns);
        // Each thread on its own evidence and history first...
        let mut decisions = Vec::with_capacity(tick.threads.len());
        for thread in &tick.threads {
            let track = self.tracks.entry(thread.tid).or_default();
            if track
                .previous
                .is_some_and(|p| p.thread.thread_id != thread.thread_id)
            {
                // A new thread that was given a recycled tid (or a thread that just got its
                // Python thread state): its history is not this one's.
                *track = Track::default();
            }
            if thread.stopped {
                // Its history stands as it was for when it runs again (the last loop starts
                // the interval after this tick here).
                decisions.push(Decision {
                    state: ThreadState::Stopped,
                    rule: Rule::Stopped,
                    likely: Likelihood {
                        switched_out_taking: false,
                        not_handed_on: false,
                        woken: false,
                        stayed: false,
                        entering: false,
                        anchor: 0,
                        cpu_before_ns: std::cmp::Reverse(u64::MAX),
                    },
                    not_seen_leaving: false,
                    native_on: false,
                });
                continue;
            }
            // A tick's threads are sorted by tid.
            let after = next.and_then(|n| {
                let i = n
                    .threads
                    .binary_search_by_key(&thread.tid, |t| t.tid)
                    .ok()?;
                n.threads.get(i)
            });
            let entering = evidence(thread) == Evidence::Runnable
                && !thread.no_gil
                && enters_gil_without_cpu(thread, &self.pending);
            let (state, rule) = match evidence(thread) {
                _ if thread.no_gil => (no_gil_state(thread), Rule::NoGil),
                // Off its CPU since it left it: where it left it is where it is, whatever
                // history and the CPU it used before suggest.
                Evidence::Runnable if thread.switched_out.is_some() => match thread.switched_out {
                    Some(SwitchedOut::Elsewhere) => {
                        (ThreadState::Running, Rule::SwitchedOutElsewhere)
                    }
                    _ => (ThreadState::Wait, Rule::SwitchedOutInGil),
                },
                Evidence::Runnable if entering && track.anchor != Some(ThreadState::Idle) => {
                    (ThreadState::Wait, Rule::EntersGil)
                }
                Evidence::Hold => (ThreadState::Hold, Rule::Holder),
                Evidence::Wait if thread.gil_futex || thread.gil_requested == Some(true) => {
                    (ThreadState::Wait, Rule::InGil)
                }
                Evidence::Wait => (ThreadState::Wait, Rule::InGilCode),
                Evidence::Idle => (ThreadState::Idle, Rule::Asleep),
                Evidence::Runnable => {
                    let executing = match track.previous {
                        // Nearest evidence first: the interval that ends at this tick...
                        Some(p)
                            if evidence(&p.thread) != Evidence::Hold
                                && same_clock(&p.thread, thread) =>
                        {
                            executing(p.thread.cpu_ns, thread.cpu_ns, p.time_ns, time_ns)
                        }
                        // ...unless it was spent holding (Python code), or its two ends were
                        // read from different clocks: then the one after.
                        _ => after.is_some_and(|a| {
                            evidence(a) != Evidence::Hold
                                && same_clock(thread, a)
                                && executing(thread.cpu_ns, a.cpu_ns, time_ns, next_time)
                        }),
                    };
                    if executing {
                        (ThreadState::Running, Rule::Executing)
                    } else {
                        match track.anchor {
                            Some(ThreadState::Hold) | Some(ThreadState::Wait) => {
                                (ThreadState::Wait, Rule::LastInGil)
                            }
                            _ => (ThreadState::Running, Rule::LastElsewhere),
                        }
                    }
                }
            };
            // A runnable thread whose exact CPU clock has not moved since the last tick has
            // not run: it is wherever that tick found it.
            let stayed = evidence(thread) == Evidence::Runnable
                && thread.cpu_exact
                && track.was_in_gil
                && track.previous.is_some_and(|p| {
                    same_clock(&p.thread, thread) && p.thread.cpu_ns == thread.cpu_ns
                });
            // Asleep in the GIL (or in its code) by its own tick last time, and next to no CPU
            // since: woken there and not yet run far enough to have left. Leaving takes the
            // GIL, runs Python and lets go again, while waking and queueing for a CPU costs the
            // few µs of a futex return.
            let woken = evidence(thread) == Evidence::Runnable
                && thread.cpu_exact
                && track.previous.is_some_and(|p| {
                    evidence(&p.thread) == Evidence::Wait
                        && same_clock(&p.thread, thread)
                        && thread.cpu_ns.saturating_sub(p.thread.cpu_ns) < ENTERING_GIL_CPU_NS
                });
            // Asleep in the GIL at the previous tick while another thread held it, and the GIL
            // has not changed hands since (CPython counts every take by a thread other than
            // the last holder): it cannot have taken the GIL, so it has not left take_gil,
            // whatever CPU it used (retrying its mutex, woken by a signal that was not for it).
            let not_handed_on = evidence(thread) == Evidence::Runnable
                && thread.gil.is_none_or(|(g, _)| g == 0)
                && track.previous.is_some_and(|p| {
                    p.thread.gil_futex
                        && self.last_gil.is_some_and(|g| {
                            g.time_ns == p.time_ns
                                && g.locked
                                && g.holder != 0
                                && Some(g.holder) != p.thread.tstate
                                && g.switch_number == tick.switch_number
                        })
                });
            let likely = Likelihood {
                switched_out_taking: thread.switched_out == Some(SwitchedOut::Taking),
                not_handed_on,
                woken,
                stayed,
                entering,
                anchor: match track.anchor {
                    Some(ThreadState::Wait) => 2,
                    Some(ThreadState::Hold) => 1,
                    _ => 0,
                },
                // A thread seen for the first time exists to run Python, and the first thing
                // it does is take the GIL: as likely as one that has not run since.
                cpu_before_ns: std::cmp::Reverse(match track.previous {
                    None => 0,
                    Some(p) if same_clock(&p.thread, thread) => {
                        thread.cpu_ns.saturating_sub(p.thread.cpu_ns)
                    }
                    Some(_) => u64::MAX,
                }),
            };
            // A holder asked to let go (it held for a whole switch interval, so another thread
            // waited that long) goes from the release straight back into take_gil; one last
            // seen inside the GIL's code has not been seen to leave it.
            let gap = track
                .previous
                .map_or(0, |p| time_ns.saturating_sub(p.time_ns));
            let forced_switch = track.anchor == Some(ThreadState::Hold)
                && track.held_ns + gap >= tick.interval_us.saturating_mul(1000);
            // A thread seen in the GIL's code whose exact clock has since moved by more than
            // that code ever takes has left it unseen (took the GIL, ran, let go again: an I/O
            // thread between its ping-pongs), and is now wherever that run took it.
            let ran_since = thread.cpu_exact
                && track.previous.is_some_and(|p| {
                    same_clock(&p.thread, thread)
                        && thread.cpu_ns.saturating_sub(p.thread.cpu_ns) >= EXECUTING_FLOOR_NS
                });
            let not_seen_leaving = forced_switch || (track.in_gil_code && !ran_since);
            // Using the CPU after the tick too, without holding the GIL at the next one: native
            // code, surely (the CPU before the tick may have been Python, held in between).
            let native_on = rule == Rule::Executing
                && after.is_some_and(|a| {
                    evidence(a) == Evidence::Runnable
                        && same_clock(thread, a)
                        && executing(thread.cpu_ns, a.cpu_ns, time_ns, next_time)
                });
            decisions.push(Decision {
                state,
                rule,
                likely,
                not_seen_leaving,
                native_on,
            });
        }
        // ...then the GIL's own count of the threads inside it settles the runnable ones,
        // where it can be read: the likeliest that many are there; of the others, those not
        // seen leaving the GIL are in the parts the count does not cover, the rest outside.
        for (gil, unseen) in tick.unseen_in_gil.iter().enumerate() {
            let Some(unseen) = *unseen else { continue };
            let mut candidates: Vec<usize> = (0..tick.threads.len())
                .filter(|&i| {
                    let t = &tick.threads[i];
                    evidence(t) == Evidence::Runnable
                        && !t.no_gil
                        && !t.stopped
                        && t.thread_id.is_some()
                        && t.gil.map_or(0, |(g, _)| g as usize) == gil
                })
                .collect();
            candidates.sort_by_key(|&i| std::cmp::Reverse(decisions[i].likely));
            let mut unseen = unseen as usize;
            for i in candidates {
                let d = &mut decisions[i];
                // Located by its switch-out: decided. Inside take_gil it is one of those the
                // count includes (but at the door, which no count covers); in a release or
                // elsewhere it is none of them, but a release located by when it was cut
                // short may have gone on into a forced switch's wait, which the count includes.
                match tick.threads[i].switched_out {
                    Some(SwitchedOut::Taking | SwitchedOut::HandedOff) => {
                        unseen = unseen.saturating_sub(1);
                        continue;
                    }
                    Some(_) => continue,
                    None => {}
                }
                // A thread running native code on both sides of the tick is not one of those
                // counted (that may be a thread the tick saw leaving, between its reads).
                if unseen > 0 && !d.native_on {
                    unseen -= 1;
                    (d.state, d.rule) = (ThreadState::Wait, Rule::QueuedInGil);
                } else if d.likely.not_handed_on
                    || ((d.not_seen_leaving || d.likely.stayed) && d.rule != Rule::Executing)
                {
                    (d.state, d.rule) = (ThreadState::Wait, Rule::StillInGil);
                } else if d.state == ThreadState::Wait {
                    (d.state, d.rule) = (ThreadState::Running, Rule::OutsideGil);
                }
            }
        }
        let mut threads = Vec::with_capacity(tick.threads.len());
        let mut rules = Vec::with_capacity(tick.threads.len());
        for (thread, Decision { state, rule, .. }) in tick.threads.iter().zip(decisions) {
            let track = self.tracks.entry(thread.tid).or_default();
            if state == ThreadState::Stopped {
                track.previous = Some(Seen {
                    time_ns,
                    thread: *thread,
                });
                rules.push(rule);
                threads.extend(stopped_sample(thread));
                continue;
            }
            let queued_in_gil =
                evidence(thread) == Evidence::Runnable && state == ThreadState::Wait;
            if state == ThreadState::Hold {
                if track.anchor != Some(ThreadState::Hold) {
                    track.hold_since = time_ns;
                }
                track.held_ns = time_ns.saturating_sub(track.hold_since);
            }
            if !queued_in_gil {
                track.anchor = Some(state);
                track.in_gil_code = rule == Rule::InGilCode;
            }
            track.previous = Some(Seen {
                time_ns,
                thread: *thread,
            });
            track.was_in_gil = state == ThreadState::Wait;
            let state = match state {
                ThreadState::Wait if self.no_wait => ThreadState::Running,
                state => state,
            };
            rules.push(rule);
            threads.push(ThreadSample {
                tid: thread.tid,
                ns_tid: thread.ns_tid,
                thread_id: thread.thread_id,
                state,
                stack: thread.stack,
                deferred: thread.deferred,
                gil: thread.gil,
                cpu: Some((thread.cpu_exact, thread.cpu_ns)),
            });
        }
        self.last_gil = Some(LastGil {
            time_ns,
            locked: tick.locked,
            holder: tick.holder,
            switch_number: tick.switch_number,
        });
        let alive: std::collections::HashSet<i32> = tick.threads.iter().map(|t| t.tid).collect();
        self.tracks.retain(|tid, _| alive.contains(tid));
        let sample = Sample {
            time_ns,
            gil: tick.gil,
            threads,
            gils: tick.gils.clone(),
            resolved: tick.resolved.clone(),
        };
        (sample, rules)
    }
}

/// One thread's state at a tick before the GIL's count is applied, and what the count needs.
struct Decision {
    state: ThreadState,
    rule: Rule,
    likely: Likelihood,
    /// Last seen inside the GIL's code, or released from a forced switch, and not since.
    not_seen_leaving: bool,
    /// Runs native code on both sides of the tick.
    native_on: bool,
}

/// How likely a runnable thread is to be inside the GIL (woken and queued for a CPU), for
/// choosing which ones the GIL's count names: compared field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Likelihood {
    /// Its switch-out was inside take_gil: it is there, surely.
    switched_out_taking: bool,
    /// It was asleep in the GIL at the last tick and the GIL has not changed hands since:
    /// it is still in take_gil, certainly.
    not_handed_on: bool,
    /// Its own last tick had it inside the GIL (asleep there or in its code) and it has used
    /// next to no CPU since: woken there, queued for a CPU. This outranks a thread that
    /// reaches the GIL next with little CPU ([`Likelihood::entering`]): that one may be
    /// preempted just outside it (in `send()`, after a brief release), which the count does
    /// not include, while a woken waiter is inside `take_gil` until it has run.
    woken: bool,
    /// It was placed in the GIL at the last tick and has not run since: it cannot have left.
    stayed: bool,
    /// It reached the GIL next with next to no CPU on the way.
    entering: bool,
    /// Where it was last seen: 2 in the GIL, 1 holding it, 0 elsewhere.
    anchor: u8,
    /// Less CPU since the last tick is likelier (a sleeper uses none): compared reversed.
    cpu_before_ns: std::cmp::Reverse<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::interpreter::GilState;
    use crate::target::task::{Activity, TaskReading};

    /// A thread observation: `kind` is h(older), w(aiting on the GIL), i(dle), r(unnable).
    fn thread(tid: i32, kind: char, cpu_ns: u64) -> ThreadObservation {
        let activity = match kind {
            'r' => Activity::Running,
            _ => Activity::Syscall {
                nr: 202,
                args: [0; 3],
                sp: 0,
                pc: 0,
            },
        };
        ThreadObservation {
            tid,
            ns_tid: None,
            thread_id: Some(tid as u64),
            tstate: Some(0x1000),
            task: TaskReading {
                tid,
                activity,
                cpu_ns,
                runqueue_ns: 0,
            },
            runnable: kind == 'r',
            cpu_ns,
            cpu_exact: true,
            holder: kind == 'h',
            gil_futex: kind == 'w',
            blocked: kind == 'i',
            gil_requested: None,
            owns_gil_mutex: false,
            gil_in_its_name: false,
            stopped: false,
            no_gil: false,
            attach_state: None,
            stack: None,
            deferred: false,
            gil: None,
            switched_out: None,
        }
    }

    fn tick(ms: u64, threads: Vec<ThreadObservation>) -> Observation {
        Observation {
            start_ns: ms * 1_000_000,
            end_ns: ms * 1_000_000,
            gil: GilState::default(),
            locked: false,
            holder: 0,
            switch_number: 0,
            interval_us: 5000,
            threads,
            stack_errors: 0,
            gils: Vec::new(),
            resolved: Vec::new(),
            unseen_in_gil: Vec::new(),
        }
    }

    /// Run one thread through ticks 1 ms apart: (kind, cpu µs at the tick).
    fn states(ticks: &[(char, u64)]) -> Vec<ThreadState> {
        let mut classifier = Classifier::new();
        let mut out = Vec::new();
        for (i, &(kind, cpu_us)) in ticks.iter().enumerate() {
            let obs = tick(i as u64, vec![thread(7, kind, cpu_us * 1000)]);
            out.extend(classifier.push(&obs));
        }
        out.extend(classifier.finish());
        out.iter().map(|s| s.threads[0].state).collect()
    }

    use ThreadState::{Hold as H, Idle as I, Running as R, Wait as W};

    /// Like [`states`], with the GIL's count of unseen threads inside it at each tick:
    /// (kind, cpu µs, unseen). Kind 'o' is runnable and owns the GIL's mutex.
    fn counted(ticks: &[(char, u64, u32)]) -> Vec<(ThreadState, Rule)> {
        let mut classifier = Classifier::new();
        let mut out = Vec::new();
        for (i, &(kind, cpu_us, unseen)) in ticks.iter().enumerate() {
            let mut t = thread(7, if kind == 'o' { 'r' } else { kind }, cpu_us * 1000);
            t.owns_gil_mutex = kind == 'o';
            let mut obs = tick(i as u64, vec![t]);
            obs.unseen_in_gil = vec![Some(unseen)];
            out.extend(classifier.push_explained(&obs));
        }
        out.extend(classifier.finish_explained());
        out.iter()
            .map(|(s, rules)| (s.threads[0].state, rules[0]))
            .collect()
    }

    fn just_states(found: Vec<(ThreadState, Rule)>) -> Vec<ThreadState> {
        found.into_iter().map(|(state, _)| state).collect()
    }

    #[test]
    fn a_runnable_thread_the_gil_counts_inside_it_waits_from_its_first_tick() {
        // A new thread, runnable with no history, counted by the GIL's mutex: queued in
        // take_gil (woken from its condition, waiting for a CPU), not running.
        let found = counted(&[('r', 0, 1), ('r', 0, 1), ('h', 10, 0)]);
        assert_eq!(just_states(found.clone()), vec![W, W, H]);
        assert_eq!(found[0].1, Rule::QueuedInGil);
    }

    #[test]
    fn a_runnable_thread_the_gil_does_not_count_is_outside_it() {
        // Holds briefly, lets go, is preempted outside the GIL (in send(), say) with no CPU
        // since: history alone would put it in the GIL; the count says it is not there.
        let found = counted(&[('h', 0, 0), ('r', 900, 0), ('r', 900, 0), ('w', 910, 0)]);
        assert_eq!(just_states(found.clone()), vec![H, R, R, W]);
        assert_eq!(found[1].1, Rule::OutsideGil);
        // Without the count, history decides as before.
        assert_eq!(
            states(&[('h', 0), ('r', 900), ('r', 900), ('w', 910)]),
            vec![H, W, W, W]
        );
    }

    /// Two runnable threads at one tick with the GIL counting `unseen` inside it: 7 was
    /// switched out at `sites.0`, 8 at `sites.1`, both holding at the tick before.
    fn located(sites: (Option<SwitchedOut>, Option<SwitchedOut>), unseen: u32) -> [Rule; 2] {
        let mut classifier = Classifier::new();
        let mut first = tick(0, vec![thread(7, 'h', 0), thread(8, 'i', 0)]);
        first.unseen_in_gil = vec![Some(0)];
        let mut a = thread(7, 'r', 900_000);
        a.switched_out = sites.0;
        let mut b = thread(8, 'r', 0);
        b.switched_out = sites.1;
        let mut second = tick(1, vec![a, b]);
        second.unseen_in_gil = vec![Some(unseen)];
        classifier.push(&first);
        classifier.push(&second);
        let out = classifier.finish_explained();
        [out[1].1[0], out[1].1[1]]
    }

    #[test]
    fn where_a_runnable_thread_left_its_cpu_decides_where_it_is() {
        use SwitchedOut::{Elsewhere, HandedOff, Releasing, Taking};
        // Preempted in send() after a brief release, uncounted: elsewhere, as before...
        assert_eq!(
            located((Some(Elsewhere), None), 0),
            [Rule::SwitchedOutElsewhere, Rule::LastElsewhere]
        );
        // ...and never one of those the count names, which goes to the other thread.
        assert_eq!(
            located((Some(Elsewhere), None), 1),
            [Rule::SwitchedOutElsewhere, Rule::QueuedInGil]
        );
        // Preempted in a release's last steps, which no count covers: waiting, where history
        // said it ran (it had used the CPU, it was not forced out).
        assert_eq!(
            located((Some(Releasing), None), 0),
            [Rule::SwitchedOutInGil, Rule::LastElsewhere]
        );
        // Queued in take_gil: it is the one counted, not the other thread.
        assert_eq!(
            located((Some(Taking), None), 1),
            [Rule::SwitchedOutInGil, Rule::LastElsewhere]
        );
        // In a release it is not counted: the count names the other.
        assert_eq!(
            located((Some(Releasing), None), 1),
            [Rule::SwitchedOutInGil, Rule::QueuedInGil]
        );
        // Cut short by the waiter it woke (dated, not sampled): waiting, and possibly gone
        // on into a forced release's wait, which the count covers: the other is not named.
        assert_eq!(
            located((Some(HandedOff), None), 0),
            [Rule::SwitchedOutInGil, Rule::LastElsewhere]
        );
        assert_eq!(
            located((Some(HandedOff), None), 1),
            [Rule::SwitchedOutInGil, Rule::LastElsewhere]
        );
        assert_eq!(
            located((Some(HandedOff), None), 2),
            [Rule::SwitchedOutInGil, Rule::QueuedInGil]
        );
    }

    #[test]
    fn a_forced_switch_goes_back_into_the_gil() {
        // Holds for a whole switch interval (5 ms), then is runnable, uncounted and idle on its
        // CPU: asked to let go, it is in the release's last steps or back in take_gil.
        let mut ticks: Vec<(char, u64, u32)> = (0..6).map(|i| ('h', 1000 * i, 0)).collect();
        ticks.extend([('r', 6000, 0), ('r', 6000, 0), ('w', 6010, 0)]);
        let found = counted(&ticks);
        assert_eq!(&just_states(found.clone())[5..], &[H, W, W, W]);
        assert_eq!(found[6].1, Rule::StillInGil);
    }

    #[test]
    fn a_thread_seen_in_the_gils_code_is_still_there_until_seen_elsewhere() {
        // Owns the GIL's mutex (inside a release), then is runnable and uncounted: the
        // release's last steps, after the mutex was handed on.
        let found = counted(&[('o', 0, 0), ('r', 5, 0), ('r', 5, 0), ('i', 10, 0)]);
        assert_eq!(just_states(found.clone()), vec![W, W, W, I]);
        assert_eq!(found[0].1, Rule::InGilCode);
        assert_eq!(found[1].1, Rule::StillInGil);
    }

    #[test]
    fn a_queued_thread_that_has_not_run_stays_where_it_was() {
        // Counted inside the GIL, then not run since (its clock has not moved): it cannot
        // have left, whatever the next tick's count says (a thread the tick saw going in
        // after it read the mutexes makes the count miss one).
        let found = counted(&[('r', 0, 1), ('r', 0, 0), ('r', 0, 0), ('h', 10, 0)]);
        assert_eq!(just_states(found.clone()), vec![W, W, W, H]);
        assert_eq!(found[1].1, Rule::StillInGil);
        // Once it has run, the count decides again.
        let found = counted(&[('r', 0, 1), ('r', 60, 0), ('r', 60, 0), ('i', 70, 0)]);
        assert_eq!(just_states(found), vec![W, R, R, I]);
    }

    #[test]
    fn the_count_names_the_likeliest_threads() {
        // Two runnable threads, one counted: the one that reaches the GIL next without CPU
        // (queued in it) rather than the one that goes on running native code.
        let mut classifier = Classifier::new();
        let mut out = Vec::new();
        let ticks = [
            (('r', 0), ('r', 0), 1),
            (('r', 2), ('r', 900), 0),
            (('h', 10), ('r', 1800), 0),
        ];
        for (i, &((a, ca), (b, cb), unseen)) in ticks.iter().enumerate() {
            let mut obs = tick(
                i as u64,
                vec![thread(7, a, ca * 1000), thread(8, b, cb * 1000)],
            );
            obs.unseen_in_gil = vec![Some(unseen)];
            out.extend(classifier.push(&obs));
        }
        out.extend(classifier.finish());
        let first: Vec<ThreadState> = out[0].threads.iter().map(|t| t.state).collect();
        assert_eq!(first, vec![W, R]);
    }

    #[test]
    fn the_count_names_a_woken_waiter_before_a_thread_preempted_outside_the_gil() {
        // Both were asleep in the GIL. 7 has since used 4 µs (woken, queued for a CPU) and
        // then holds after running Python; 8 took the GIL, ran 120 µs of Python, let go for a
        // send() and was preempted there, 4 µs from the GIL's futex. The count of one is 7.
        let mut classifier = Classifier::new();
        let mut out = Vec::new();
        let ticks = [
            (('w', 0), ('w', 0), 0),
            (('r', 4), ('r', 120), 1),
            (('h', 700), ('w', 124), 0),
        ];
        for (i, &((a, ca), (b, cb), unseen)) in ticks.iter().enumerate() {
            let mut obs = tick(
                i as u64,
                vec![thread(7, a, ca * 1000), thread(8, b, cb * 1000)],
            );
            obs.unseen_in_gil = vec![Some(unseen)];
            out.extend(classifier.push_explained(&obs));
        }
        out.extend(classifier.finish_explained());
        let (sample, rules) = &out[1];
        let states: Vec<ThreadState> = sample.threads.iter().map(|t| t.state).collect();
        assert_eq!(states, vec![W, R]);
        assert_eq!(rules, &vec![Rule::QueuedInGil, Rule::OutsideGil]);
    }

    #[test]
    fn a_waiter_is_still_in_the_gil_until_the_gil_changes_hands() {
        // 7 sleeps in the GIL while 8 holds it, then is runnable and uncounted (woken at the
        // door of take_gil, retrying its mutex: 80 µs of CPU). While the GIL has not changed
        // hands, 7 cannot have taken it: still waiting. Once it has (the switch count moved),
        // the count decides: uncounted, 7 is outside.
        let run = |switches: [u64; 3]| {
            let mut classifier = Classifier::new();
            let mut out = Vec::new();
            let sevens = [('w', 0), ('r', 80), ('r', 80)];
            for (i, &(kind, cpu_us)) in sevens.iter().enumerate() {
                let mut holder = thread(8, 'h', 1000 * i as u64);
                holder.tstate = Some(0x2000);
                let mut obs = tick(i as u64, vec![thread(7, kind, cpu_us * 1000), holder]);
                (obs.locked, obs.holder, obs.switch_number) = (true, 0x2000, switches[i]);
                obs.unseen_in_gil = vec![Some(0)];
                out.extend(classifier.push_explained(&obs));
            }
            out.extend(classifier.finish_explained());
            out.iter()
                .map(|(s, rules)| (s.threads[0].state, rules[0]))
                .collect::<Vec<_>>()
        };
        let found = run([3, 3, 3]);
        assert_eq!(found[1], (W, Rule::StillInGil));
        assert_eq!(found[2].0, W);
        let found = run([3, 4, 4]);
        assert_eq!(found[1], (R, Rule::OutsideGil));
    }

    #[test]
    fn a_thread_running_native_code_on_both_sides_is_never_counted() {
        // The count says one thread is inside the GIL, but the only runnable one executes
        // native code before and after the tick: the count is of a thread the tick did not
        // catch (it left between the reads), not of this one.
        let found = counted(&[('r', 0, 0), ('r', 900, 1), ('r', 1800, 0), ('r', 2700, 0)]);
        assert_eq!(just_states(found), vec![R, R, R, R]);
    }

    #[test]
    fn a_queued_thread_after_the_gil_is_still_in_the_gil() {
        // Waits, is woken but gets no CPU for two ticks, then holds.
        assert_eq!(
            states(&[('w', 0), ('r', 5), ('r', 10), ('h', 600)]),
            vec![W, W, W, H]
        );
        // Holds, is preempted while dropping (no CPU), then waits.
        assert_eq!(
            states(&[('h', 0), ('r', 900), ('r', 905), ('w', 910)]),
            vec![H, W, W, W]
        );
        // Queued in take_gil at the tick, then takes the GIL and goes native after it: the
        // CPU after the tick is not evidence about the tick. At the third tick it has just
        // run native code, and needs ENTERING_GIL_CPU_NS more to reach the GIL: native code.
        assert_eq!(
            states(&[('w', 0), ('r', 10), ('r', 850), ('w', 900)]),
            vec![W, W, R, W]
        );
        // With 30 µs to go it was already entering take_gil.
        assert_eq!(
            states(&[('w', 0), ('r', 10), ('r', 850), ('w', 880)]),
            vec![W, W, W, W]
        );
    }

    #[test]
    fn a_native_thread_queued_on_its_way_into_the_gil_waits() {
        // Runs zlib, then sits on the run queue with no CPU until it is seen asleep on the
        // GIL: it had left native code and was in take_gil before any flag or futex showed it.
        assert_eq!(
            states(&[('r', 0), ('r', 900), ('r', 920), ('r', 930), ('w', 940)]),
            vec![R, W, W, W, W]
        );
        // ...or until it holds it.
        assert_eq!(
            states(&[('r', 0), ('r', 900), ('r', 920), ('h', 940)]),
            vec![R, W, W, H]
        );
        // Preempted in native code instead: it needs CPU to get to the GIL.
        assert_eq!(
            states(&[('r', 0), ('r', 900), ('r', 900), ('r', 1500), ('w', 1530)]),
            vec![R, R, R, W, W]
        );
    }

    #[test]
    fn the_look_ahead_is_bounded_and_stops_at_sleep() {
        // Queued for longer than the look ahead: the early ticks cannot know.
        let mut ticks = vec![('r', 0), ('r', 900)];
        ticks.extend(std::iter::repeat_n(('r', 900), LOOKAHEAD + 2));
        ticks.push(('w', 905));
        let out = states(&ticks);
        assert_eq!(out[1], R);
        assert_eq!(out[out.len() - 2], W);
        // Falls asleep somewhere else first (I/O): no evidence about the GIL.
        assert_eq!(
            states(&[('r', 0), ('r', 900), ('i', 905), ('w', 910)]),
            vec![R, R, I, W]
        );
    }

    #[test]
    fn cpu_times_from_different_clocks_are_not_subtracted() {
        // Asleep on the GIL's mutex read from schedstat (5 s of CPU since it started), then
        // running native code read from its perf counter (opened later: 1 ms so far). The
        // interval before the second tick has no length; the one after it (0.9 ms of CPU in
        // 1 ms) says it runs native code.
        let mut classifier = Classifier::new();
        let mut asleep = thread(7, 'w', 5_000_000_000);
        asleep.cpu_exact = false;
        let ticks = [
            asleep,
            thread(7, 'r', 1_000_000),
            thread(7, 'r', 1_900_000),
            thread(7, 'r', 2_800_000),
        ];
        let mut out = Vec::new();
        for (ms, t) in ticks.into_iter().enumerate() {
            out.extend(classifier.push(&tick(ms as u64, vec![t])));
        }
        out.extend(classifier.finish());
        let got: Vec<ThreadState> = out.iter().map(|s| s.threads[0].state).collect();
        assert_eq!(got, vec![W, R, R, R]);
    }

    #[test]
    fn a_thread_burning_cpu_without_the_gil_runs_native_code() {
        // Drops the GIL into zlib: executing from the first tick on.
        assert_eq!(
            states(&[('h', 0), ('r', 900), ('r', 1900), ('r', 2900), ('w', 3000)]),
            vec![H, R, R, R, W]
        );
    }

    #[test]
    fn a_starved_native_thread_stays_running() {
        // Executes, then sits on the run queue for two ticks (more threads than CPUs).
        assert_eq!(
            states(&[('r', 0), ('r', 900), ('r', 900), ('r', 905), ('r', 1900)]),
            vec![R, R, R, R, R]
        );
    }

    #[test]
    fn a_thread_woken_from_io_is_not_waiting_until_it_reaches_the_gil() {
        assert_eq!(states(&[('i', 0), ('r', 2), ('w', 10)]), vec![I, R, W]);
    }

    #[test]
    fn cpu_spent_holding_does_not_make_the_next_tick_native() {
        // Before the runnable tick it held (900 µs of Python), after it: nothing.
        assert_eq!(states(&[('h', 0), ('r', 900), ('h', 905)]), vec![H, W, H]);
    }

    #[test]
    fn without_wait_a_queued_thread_runs() {
        let mut classifier = Classifier::without_wait();
        let mut out = Vec::new();
        for (i, &(kind, cpu_us)) in [('h', 0), ('r', 900), ('r', 905), ('h', 910)]
            .iter()
            .enumerate()
        {
            out.extend(classifier.push(&tick(i as u64, vec![thread(7, kind, cpu_us * 1000)])));
        }
        out.extend(classifier.finish());
        let states: Vec<ThreadState> = out.iter().map(|s| s.threads[0].state).collect();
        assert_eq!(states, vec![H, R, R, H]);
    }

    #[test]
    fn without_a_gil_threads_are_attached_detached_or_suspended() {
        let mut classifier = Classifier::new();
        let no_gil = |kind, attach| ThreadObservation {
            no_gil: true,
            attach_state: Some(attach),
            holder: false,
            gil_futex: false,
            ..thread(7, kind, 0)
        };
        // Attached whatever the kernel says (a spinner queued for a CPU is still in Python);
        // detached by the kernel's state; suspended in a stop-the-world pause.
        let ticks = [
            no_gil('r', ATTACHED),
            no_gil('i', ATTACHED),
            no_gil('r', 0),
            no_gil('i', 0),
            no_gil('r', SUSPENDED),
        ];
        let mut out = Vec::new();
        for (i, t) in ticks.into_iter().enumerate() {
            out.extend(classifier.push(&tick(i as u64, vec![t])));
        }
        out.extend(classifier.finish());
        let states: Vec<ThreadState> = out.iter().map(|s| s.threads[0].state).collect();
        use ThreadState::{Attached as A, Suspended as S};
        assert_eq!(states, vec![A, A, R, I, S]);
    }

    #[test]
    fn a_stopped_thread_is_stopped_whatever_its_gil_flags_and_resumes_where_it_was() {
        // Holds, is stopped holding (a debugger), then holds again; a waiter stopped asleep on
        // the GIL's futex is stopped too.
        let mut classifier = Classifier::new();
        let stopped = |mut t: ThreadObservation| {
            t.stopped = true;
            t.runnable = false;
            t
        };
        let ticks = [
            vec![thread(7, 'h', 0), thread(8, 'w', 0)],
            vec![stopped(thread(7, 'h', 900)), stopped(thread(8, 'w', 0))],
            vec![stopped(thread(7, 'h', 900)), stopped(thread(8, 'w', 0))],
            vec![thread(7, 'h', 1800), thread(8, 'w', 0)],
        ];
        let mut out = Vec::new();
        for (i, t) in ticks.into_iter().enumerate() {
            out.extend(classifier.push(&tick(i as u64, t)));
        }
        out.extend(classifier.finish());
        let got: Vec<(ThreadState, ThreadState)> = out
            .iter()
            .map(|s| (s.threads[0].state, s.threads[1].state))
            .collect();
        use ThreadState::Stopped as S;
        assert_eq!(got, vec![(H, W), (S, S), (S, S), (H, W)]);
    }

    #[test]
    fn a_recycled_tid_starts_a_fresh_history() {
        let mut classifier = Classifier::new();
        let mut old = thread(7, 'h', 0);
        old.thread_id = Some(1);
        let mut new = thread(7, 'r', 0);
        new.thread_id = Some(2);
        classifier.push(&tick(0, vec![old]));
        let mut out = classifier.push(&tick(1, vec![new]));
        out.extend(classifier.finish());
        assert_eq!(out[1].threads[0].state, R);
    }
}
