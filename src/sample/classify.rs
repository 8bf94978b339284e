//! The rules that turn raw ticks into hold / wait / running / idle per thread, measured against
//! the uprobe reference (docs/ACCURACY.md). Pure functions of observations: no reads here.
//!
//! A thread's own tick decides most cases: the holder holds; a thread asleep on a futex inside
//! the GIL waits; a thread asleep on anything else is idle. A *runnable* thread that does not
//! hold the GIL is the hard case: it may be running native code, or it may be on its way into
//! or out of the GIL (woken by `drop_gil`, or preempted in it) and queued for a CPU. The
//! difference shows in its CPU clock: GIL hand-off code runs for microseconds, native work for
//! as long as it has a CPU. So a runnable thread that was *executing* just before the tick runs
//! native code; one that was not is still wherever it was last seen doing something: in the
//! GIL if it last held or waited for it, else wherever it was before. When the interval before
//! the tick is polluted by holding (the thread held at the previous tick), the interval after
//! the tick decides instead.
//!
//! One more piece of evidence comes from the ticks that follow. A runnable thread that next
//! shows up in the GIL (asleep on it, or holding it) without having used the CPU in between
//! was already on its way into the GIL at this tick: preempted, or woken from the GIL's mutex
//! and queued for a CPU, before any flag or futex said so. Native code would have needed CPU
//! to get there. So the classifier looks a few ticks ahead ([`LOOKAHEAD`]).

use std::collections::{HashMap, VecDeque};

use super::observe::{Observation, ThreadObservation};
use super::{Sample, ThreadSample, ThreadState};
use crate::python::layout::{ATTACHED, SUSPENDED};

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
        if later.thread_id != thread.thread_id || !later.cpu_exact {
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
}

/// Turns a stream of observations into samples, [`LOOKAHEAD`] ticks behind (it looks ahead).
#[derive(Default)]
pub struct Classifier {
    tracks: HashMap<i32, Track>,
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
        self.pending.push_back(observation.clone());
        let mut done = Vec::new();
        while self.pending.len() > LOOKAHEAD {
            done.extend(self.classify_oldest());
        }
        done
    }

    /// The ticks held back, classified with whatever look ahead they have.
    pub fn finish(&mut self) -> Vec<Sample> {
        std::iter::from_fn(|| self.classify_oldest()).collect()
    }

    fn classify_oldest(&mut self) -> Option<Sample> {
        let tick = self.pending.pop_front()?;
        Some(self.classify(&tick))
    }

    /// Classify `tick`; the ticks after it are `self.pending`.
    fn classify(&mut self, tick: &Observation) -> Sample {
        let next = self.pending.front();
        let time_ns = tick.time_ns();
        let next_time = next.map(|n| n.time_ns()).unwrap_or(time_ns);
        let mut threads = Vec::with_capacity(tick.threads.len());
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
            // A tick's threads are sorted by tid.
            let after = next.and_then(|n| {
                let i = n
                    .threads
                    .binary_search_by_key(&thread.tid, |t| t.tid)
                    .ok()?;
                n.threads.get(i)
            });
            let state = match evidence(thread) {
                _ if thread.no_gil => no_gil_state(thread),
                Evidence::Runnable
                    if track.anchor != Some(ThreadState::Idle)
                        && enters_gil_without_cpu(thread, &self.pending) =>
                {
                    ThreadState::Wait
                }
                Evidence::Hold => ThreadState::Hold,
                Evidence::Wait => ThreadState::Wait,
                Evidence::Idle => ThreadState::Idle,
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
                        ThreadState::Running
                    } else {
                        match track.anchor {
                            Some(ThreadState::Hold) | Some(ThreadState::Wait) => ThreadState::Wait,
                            _ => ThreadState::Running,
                        }
                    }
                }
            };
            let queued_in_gil =
                evidence(thread) == Evidence::Runnable && state == ThreadState::Wait;
            if !queued_in_gil {
                track.anchor = Some(state);
            }
            track.previous = Some(Seen {
                time_ns,
                thread: *thread,
            });
            let state = match state {
                ThreadState::Wait if self.no_wait => ThreadState::Running,
                state => state,
            };
            threads.push(ThreadSample {
                tid: thread.tid,
                ns_tid: thread.ns_tid,
                thread_id: thread.thread_id,
                state,
                stack: thread.stack,
                deferred: thread.deferred,
                gil: thread.gil,
            });
        }
        let alive: std::collections::HashSet<i32> = tick.threads.iter().map(|t| t.tid).collect();
        self.tracks.retain(|tid, _| alive.contains(tid));
        Sample {
            time_ns,
            gil: tick.gil,
            threads,
            gils: tick.gils.clone(),
            resolved: tick.resolved.clone(),
        }
    }
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
            no_gil: false,
            attach_state: None,
            stack: None,
            deferred: false,
            gil: None,
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
            threads,
            stack_errors: 0,
            gils: Vec::new(),
            resolved: Vec::new(),
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
