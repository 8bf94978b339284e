//! Releases caught in their last steps, dated by the scheduler's own clocks.
//!
//! A thread that lets the GIL go wakes a waiter; where the waiter is woken onto the releasing
//! thread's CPU it often preempts it at once, in the release's last steps (after the GIL's
//! mutex is handed on, while its futex wake returns). The releasing thread is then runnable,
//! off its CPU, counted by none of the GIL's mutexes, and on a busy host queued for
//! milliseconds: the reference has it in the release (waiting), while its /proc files and the
//! target's memory look exactly as if it had been preempted later, in its native call
//! (docs/ACCURACY.md, "Known weak spots"). What tells the two apart is *when* it left its CPU:
//!
//! - the kernel keeps, for a task off its CPU, the instant it left it (`se.exec_start` in
//!   /proc/TID/sched, its CPU's scheduler clock), and for every task its total time on a CPU
//!   and queued for one (/proc/TID/schedstat);
//! - a waiter that was asleep in the GIL at the last tick and has since run began its run at
//!   `exec_start - (run total now - run total then)`, give or take the few µs it ran before
//!   (a condition wake-up that retries the GIL's mutex), if it ran in one stretch; and if its
//!   queue total grew by a few µs only, it got a CPU as soon as it was woken.
//!
//! A runnable thread that left its CPU at the very instant such a waiter began running, woken
//! and served at once, was preempted by that waiter's wake-up: by the release that woke it.
//! A thread preempted later in its native call leaves its CPU when its slice ends, not when a
//! waiter is woken (replayed on native_brief beside CPU hogs, 2026-12-04: 1,120 thread-ticks
//! in a release against 56 outside it). It is located there as `--switch-sites` would locate
//! it ([`SwitchedOut::HandedOff`]), and stays there until its clock moves.
//!
//! Reads only on the ticks that need them: the run totals of threads newly asleep in the GIL,
//! and, when one of them has been served, /proc/TID/sched of it and of the runnable threads
//! that may have been preempted; each bounded per tick. Where /proc/TID/sched does not exist
//! (kernels without CONFIG_SCHED_DEBUG) or no exact CPU clock confirms that a thread is off
//! its CPU, nothing is located and the classifier decides as before.

use std::collections::HashMap;

use super::observe::ThreadObservation;
use crate::target::native::switches::SwitchedOut;
use crate::target::task::SchedClocks;

/// How far (ns) the instant a thread left its CPU may lie after a served waiter's estimated
/// start: the waiter's first steps (its condition wake-up, retrying the GIL's mutex while the
/// releasing thread still owns it) run before its last switch-in and count in its run total.
/// Measured 2-10 µs; native code preempted at a waiter's wake-up by chance falls inside this
/// window as rarely as the window is short against the native call.
pub const COINCIDENCE_NS: u64 = 30_000;
/// A waiter queued longer than this (ns) in all between its wake-up and its run did not
/// preempt the thread that woke it: it waited for that thread's slice to end, or for
/// another CPU.
pub const SERVED_AT_ONCE_NS: u64 = 30_000;
/// The steps (ns) in which the kernel brings a task's load average up to date, and so how far
/// that instant may lie from the one it left its CPU, twice over for rounding.
pub const LOAD_STEP_NS: u64 = 2_048;
/// At most this many served waiters, possibly preempted threads and new sleepers are read
/// per tick (two, two and one reads each): at most some 20 reads, 100-150 µs, on a tick of a
/// process with tens of threads contending; one or two on most ticks.
pub const MAX_WAITERS: usize = 4;
pub const MAX_CANDIDATES: usize = 8;
pub const MAX_NEW_SLEEPERS: usize = 8;
/// Reads of /proc/TID/sched in a row that gave nothing before it counts as missing.
pub const MAX_FAILED_READS: u32 = 64;

/// The kernel's figures for one thread, read on demand.
pub trait SchedReader {
    /// Total ns on a CPU and queued for one (/proc/TID/schedstat).
    fn run_totals(&mut self, tid: i32) -> Option<(u64, u64)>;
    /// When it last left or was last accounted on its CPU, and its run total then
    /// (/proc/TID/sched).
    fn last_accounted(&mut self, tid: i32) -> Option<SchedClocks>;
    /// Its exact CPU clock now (perf), if it has one.
    fn exact_clock(&mut self, tid: i32) -> Option<u64>;
}

/// A thread asleep in the GIL: its totals then, and its clock when they were read.
#[derive(Debug, Clone, Copy)]
struct Asleep {
    run_ns: u64,
    queued_ns: u64,
    cpu_ns: u64,
}

/// What [`Handoffs::locate`] did, for `--stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoffCounts {
    /// /proc reads and extra clock reads it made.
    pub reads: u64,
    /// Thread-ticks it located in a release (newly or still there).
    pub located: u64,
}

/// Follows the GIL's sleepers between ticks and locates the releases their wake-ups cut
/// short.
#[derive(Default)]
pub struct Handoffs {
    asleep: HashMap<i32, Asleep>,
    /// Threads located in a release, with their clock then: still there while it stands.
    located: HashMap<i32, u64>,
    /// The last tick's main GIL: who held it (None: nobody, or not known) and its switch
    /// count. Who can have released it since follows from them ([`may_have_handed_on`]).
    last_gil: Option<(Option<i32>, u64)>,
    /// The threads asleep in take_gil at the last tick, sorted (whether or not their totals
    /// were read).
    last_sleepers: Vec<i32>,
    /// The kernel has no /proc/TID/sched (or none this code can read): nothing to date a
    /// switch-out with. Decided after [`MAX_FAILED_READS`] reads in a row gave nothing, not
    /// at the first: a thread that exits between the listing and its read gives nothing too.
    unavailable: bool,
    failed_reads: u32,
    pub counts: HandoffCounts,
}

/// A thread that may be sitting in a release's last steps: runnable, not holding, not
/// counted inside the GIL by anything the tick read, a Python thread with an exact clock.
fn may_be_releasing(t: &ThreadObservation) -> bool {
    t.runnable
        && !t.holder
        && !t.gil_futex
        && !t.no_gil
        && !t.stopped
        && !t.owns_gil_mutex
        && !t.gil_in_its_name
        && t.gil_requested != Some(true)
        && t.thread_id.is_some()
        && t.cpu_exact
        && t.switched_out.is_none()
}

/// A waiter that ran this long (ns) after it was woken took the GIL: taking it costs 7-45 µs
/// (docs/ACCURACY.md), and a waiter that fails goes back to sleep on the GIL's condition.
pub const TOOK_THE_GIL_NS: u64 = 50_000;

/// The GIL since the last tick, as far as it bears on who can have released it.
struct SinceLastTick<'a> {
    /// Who held the main GIL at the last tick (None: nobody, or not known), and its switch
    /// count then and now.
    held_by: Option<i32>,
    before: u64,
    switches: u64,
    /// Who holds it now.
    holder_now: Option<i32>,
    /// Threads asleep in take_gil at the last tick and asleep elsewhere now: they took the
    /// GIL in between (nothing leaves `take_gil` without it).
    slept_elsewhere: &'a [i32],
}

/// Can `t` have handed the main GIL to `waiter` (its tid and the CPU it has used since it
/// began its run, up to this tick) since the last tick, as the GIL's switch count tells it?
/// The count grows by one each time a thread other than the GIL's last holder takes it, so
/// each thread other than the last tick's holder that took the GIL since moved it at least
/// once, and that holder, if it holds the GIL again now after others did, once more. The
/// threads that surely took it: `t` (if it handed it on), the waiter where it holds it now
/// or ran long after its wake-up, the holder now, and the GIL's sleepers since gone to sleep
/// elsewhere. A waiter woken by another thread's release onto the CPU where `t` ran native
/// code preempts `t` all the same, and the count shows it: it moved too little for `t` to
/// have held the GIL. A thread under another interpreter's GIL is not judged.
fn may_have_handed_on(since: &SinceLastTick, t: &ThreadObservation, waiter: (i32, u64)) -> bool {
    let Some(moved) = since.switches.checked_sub(since.before) else {
        return true;
    };
    if !main_gil(t) {
        return true;
    }
    let (waiter, waiter_ran) = waiter;
    let mut took: Vec<i32> = since.slept_elsewhere.to_vec();
    took.push(t.tid);
    if since.holder_now == Some(waiter) || waiter_ran >= TOOK_THE_GIL_NS {
        took.push(waiter);
    }
    took.extend(since.holder_now);
    took.sort_unstable();
    took.dedup();
    let least = match since.held_by {
        Some(held_by) => {
            let others = took.iter().filter(|&&tid| tid != held_by).count();
            others + usize::from(others > 0 && since.holder_now == Some(held_by))
        }
        // Its last holder, unknown, may be among them: its first take did not count.
        None => took.len().saturating_sub(1),
    };
    moved >= least as u64
}

/// Does the thread run under the main interpreter's GIL (the one whose switch count the tick
/// reads)?
fn main_gil(t: &ThreadObservation) -> bool {
    t.gil.is_none_or(|(index, _)| index == 0)
}

impl Handoffs {
    pub fn new() -> Handoffs {
        Handoffs::default()
    }

    /// Locate, among `threads` (one tick, whose main GIL's switch count is `switches`, and
    /// of which those `in_release` sleep in a release's forced-switch wait), those preempted
    /// in a release by the waiter it woke, and note the GIL's sleepers for the next tick.
    pub fn locate(
        &mut self,
        threads: &mut [ThreadObservation],
        (switches, in_release): (u64, &[i32]),
        reader: &mut dyn SchedReader,
    ) {
        if self.unavailable {
            return;
        }
        let holder_now = threads
            .iter()
            .find(|t| t.holder && main_gil(t))
            .map(|t| t.tid);
        let last_gil = self.last_gil.replace((holder_now, switches));
        // Still where a tick located them: their clock has not moved since.
        for t in threads.iter_mut() {
            if let Some(&cpu_ns) = self.located.get(&t.tid) {
                if may_be_releasing(t) && t.cpu_ns == cpu_ns {
                    t.switched_out = Some(SwitchedOut::HandedOff);
                    self.counts.located += 1;
                } else {
                    self.located.remove(&t.tid);
                }
            }
        }
        // When each sleeper of the last tick that has since left the GIL's futex began its
        // run, if it was served at once and ran in one stretch since.
        let mut starts = Vec::new();
        let mut waiters = 0;
        for t in threads.iter() {
            if waiters >= MAX_WAITERS {
                break;
            }
            if t.gil_futex || t.stopped {
                continue;
            }
            let Some(before) = self.asleep.get(&t.tid).copied() else {
                continue;
            };
            waiters += 1;
            self.counts.reads += 2;
            let Some((_, queued_ns)) = reader.run_totals(t.tid) else {
                continue;
            };
            let Some(SchedClocks {
                accounted_ns,
                run_ns,
                ..
            }) = self.sched_clocks(reader, t.tid)
            else {
                if self.unavailable {
                    return;
                }
                continue;
            };
            let queued = queued_ns.checked_sub(before.queued_ns);
            let ran = run_ns.checked_sub(before.run_ns);
            if let (Some(queued), Some(ran)) = (queued, ran) {
                if queued <= SERVED_AT_ONCE_NS && ran > 0 {
                    // What it has run by now: /proc/TID/sched's total stops at its last
                    // accounting, microseconds into its run for a thread still on a CPU;
                    // its exact clock does not.
                    let by_now = match t.cpu_exact {
                        true => ran.max(t.cpu_ns.saturating_sub(before.cpu_ns)),
                        false => ran,
                    };
                    starts.extend(accounted_ns.checked_sub(ran).map(|at| (t.tid, at, by_now)));
                }
            }
        }
        if !starts.is_empty() {
            let slept_elsewhere: Vec<i32> = threads
                .iter()
                .filter(|t| {
                    !t.runnable
                        && !t.gil_futex
                        && !t.stopped
                        && self.last_sleepers.binary_search(&t.tid).is_ok()
                })
                .map(|t| t.tid)
                .collect();
            let since = last_gil.map(|(held_by, before)| SinceLastTick {
                held_by,
                before,
                switches,
                holder_now,
                slept_elsewhere: &slept_elsewhere,
            });
            let mut read = 0;
            for t in threads.iter_mut() {
                if read >= MAX_CANDIDATES {
                    break;
                }
                if !may_be_releasing(t) {
                    continue;
                }
                read += 1;
                self.counts.reads += 1;
                let Some(clocks) = self.sched_clocks(reader, t.tid) else {
                    if self.unavailable {
                        return;
                    }
                    continue;
                };
                // Preempted, not gone to sleep and woken since: its load average was last
                // brought up to date as it left its CPU (within the 1,024 ns steps it moves in).
                let left_ns = clocks.accounted_ns;
                if clocks.load_updated_ns.abs_diff(left_ns) > LOAD_STEP_NS {
                    continue;
                }
                // Another thread's start: a thread's own run began before it left its CPU.
                // ...which the switch count allows to be one it handed the GIL to.
                let coincides = starts.iter().any(|&(tid, start, ran)| {
                    tid != t.tid
                        && left_ns
                            .checked_sub(start)
                            .is_some_and(|d| d <= COINCIDENCE_NS)
                        && since
                            .as_ref()
                            .is_none_or(|since| may_have_handed_on(since, t, (tid, ran)))
                });
                if !coincides {
                    continue;
                }
                // A thread on a CPU has its last accounting instant, not a switch-out: its
                // clock moves between two reads. Off its CPU it does not.
                self.counts.reads += 1;
                if reader.exact_clock(t.tid) == Some(t.cpu_ns) {
                    t.switched_out = Some(SwitchedOut::HandedOff);
                    self.located.insert(t.tid, t.cpu_ns);
                    self.counts.located += 1;
                }
            }
        }
        // The sleepers of this tick, for the next: their totals are read once per sleep (a
        // sleeper's clock, and so its totals, stand still).
        let mut asleep = HashMap::with_capacity(self.asleep.len());
        let mut new_sleepers = 0;
        for t in threads.iter() {
            if !t.gil_futex || t.stopped || !t.cpu_exact {
                continue;
            }
            let known = self
                .asleep
                .get(&t.tid)
                .copied()
                .filter(|a| a.cpu_ns == t.cpu_ns);
            let reading = known.or_else(|| {
                if new_sleepers >= MAX_NEW_SLEEPERS {
                    return None;
                }
                new_sleepers += 1;
                self.counts.reads += 1;
                let (run_ns, queued_ns) = reader.run_totals(t.tid)?;
                Some(Asleep {
                    run_ns,
                    queued_ns,
                    cpu_ns: t.cpu_ns,
                })
            });
            if let Some(a) = reading {
                asleep.insert(t.tid, a);
            }
        }
        self.asleep = asleep;
        // Those that will have taken the GIL if they next sleep elsewhere: in take_gil, not
        // in a release's forced-switch wait (which a thread leaves once another has taken
        // the GIL, and goes on without it).
        self.last_sleepers.clear();
        self.last_sleepers.extend(
            threads
                .iter()
                .filter(|t| t.gil_futex && !in_release.contains(&t.tid))
                .map(|t| t.tid),
        );
        self.last_sleepers.sort_unstable();
    }

    /// /proc/TID/sched's clocks, counting reads that give nothing.
    fn sched_clocks(&mut self, reader: &mut dyn SchedReader, tid: i32) -> Option<SchedClocks> {
        let clocks = reader.last_accounted(tid);
        match clocks {
            Some(_) => self.failed_reads = 0,
            None => {
                self.failed_reads += 1;
                self.unavailable = self.failed_reads >= MAX_FAILED_READS;
            }
        }
        clocks
    }

    /// Forget threads that are gone.
    pub fn retain(&mut self, live: &[i32]) {
        self.asleep.retain(|tid, _| live.binary_search(tid).is_ok());
        self.located
            .retain(|tid, _| live.binary_search(tid).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::task::{Activity, TaskReading};

    /// The kernel's figures as a test sets them: per tid, schedstat's totals, /proc/TID/sched's
    /// clocks, and the exact clock a second read gives.
    #[derive(Default)]
    struct Kernel {
        totals: HashMap<i32, (u64, u64)>,
        clocks: HashMap<i32, SchedClocks>,
        exact: HashMap<i32, u64>,
        no_sched_file: bool,
    }

    impl SchedReader for Kernel {
        fn run_totals(&mut self, tid: i32) -> Option<(u64, u64)> {
            self.totals.get(&tid).copied()
        }
        fn last_accounted(&mut self, tid: i32) -> Option<SchedClocks> {
            if self.no_sched_file {
                return None;
            }
            self.clocks.get(&tid).copied()
        }
        fn exact_clock(&mut self, tid: i32) -> Option<u64> {
            self.exact.get(&tid).copied()
        }
    }

    /// `kind`: w(aiting, asleep on the GIL), h(older), r(unnable).
    fn thread(tid: i32, kind: char, cpu_ns: u64) -> ThreadObservation {
        ThreadObservation {
            tid,
            ns_tid: None,
            thread_id: Some(tid as u64),
            tstate: Some(0x1000 + tid as u64),
            task: TaskReading {
                tid,
                activity: Activity::Running,
                cpu_ns,
                runqueue_ns: 0,
            },
            runnable: kind != 'w',
            cpu_ns,
            cpu_exact: true,
            holder: kind == 'h',
            gil_futex: kind == 'w',
            blocked: false,
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

    const W: i32 = 10;
    const T: i32 = 20;

    /// Tick 1: W asleep in the GIL (run total 5 ms, queued 1 ms), T holds. Tick 2: W holds,
    /// having run `w_ran` since it began at 100 ms + `w_began_us`, after `w_queued` ns in
    /// queue; T is runnable, off its CPU since 100 ms + `t_left_us`, woken since if
    /// `t_woken`. Where T is at tick 2, and at a tick 3 where nothing moved.
    fn handoff(
        w_began_us: u64,
        w_queued: u64,
        t_left_us: u64,
        t_woken: bool,
    ) -> (Option<SwitchedOut>, Option<SwitchedOut>) {
        let mut kernel = Kernel::default();
        let mut handoffs = Handoffs::new();
        kernel.totals.insert(W, (5_000_000, 1_000_000));
        let mut tick = vec![thread(W, 'w', 7_000), thread(T, 'h', 50_000)];
        handoffs.locate(&mut tick, (10, &[]), &mut kernel);
        assert!(tick.iter().all(|t| t.switched_out.is_none()));
        // W began at 100 ms + w_began_us and has run 300 µs since, accounted just now.
        let began = 100_000_000 + w_began_us * 1000;
        kernel.totals.insert(W, (5_300_000, 1_000_000 + w_queued));
        kernel.clocks.insert(
            W,
            SchedClocks {
                accounted_ns: began + 300_000,
                run_ns: 5_300_000,
                load_updated_ns: began + 300_000,
            },
        );
        let left = 100_000_000 + t_left_us * 1000;
        kernel.clocks.insert(
            T,
            SchedClocks {
                accounted_ns: left,
                run_ns: 9_000_000,
                load_updated_ns: if t_woken { left + 150_000 } else { left - 700 },
            },
        );
        kernel.exact.insert(T, 60_000);
        let mut tick = vec![thread(W, 'h', 307_000), thread(T, 'r', 60_000)];
        handoffs.locate(&mut tick, (11, &[]), &mut kernel);
        let second = tick[1].switched_out;
        assert_eq!(tick[0].switched_out, None, "the holder is never located");
        let mut tick = vec![thread(W, 'h', 900_000), thread(T, 'r', 60_000)];
        handoffs.locate(&mut tick, (11, &[]), &mut kernel);
        (second, tick[1].switched_out)
    }

    #[test]
    fn a_thread_preempted_as_the_waiter_it_woke_began_is_in_its_release_until_it_runs() {
        // Left its CPU 4 µs after the waiter's estimated start (the waiter's first steps).
        let found = handoff(0, 3_000, 4, false);
        assert_eq!(
            found,
            (Some(SwitchedOut::HandedOff), Some(SwitchedOut::HandedOff))
        );
        // Once its clock moves it has left: not located any more.
        let mut kernel = Kernel::default();
        let mut handoffs = Handoffs::new();
        handoffs.located.insert(T, 60_000);
        let mut tick = vec![thread(T, 'r', 61_000)];
        handoffs.locate(&mut tick, (10, &[]), &mut kernel);
        assert_eq!(tick[0].switched_out, None);
    }

    /// Tick 1: W asleep in the GIL, H holding it, T runnable (in native code, or holding if
    /// `t_held`). Tick 2, the switch count `moved` further: `now` holds the GIL (W, H or
    /// nobody: '-'); W has run 300 µs since it began its run, served at once, the instant T
    /// left its CPU. Is T located?
    fn preempted_at_a_wake_up(t_held: bool, moved: u64, now: char) -> Option<SwitchedOut> {
        preempted_beside_a_sleeper(t_held, moved, now, (false, false))
    }

    /// [`preempted_at_a_wake_up`], with a thread M asleep in the GIL at tick 1 too (in a
    /// release's forced-switch wait if `m.1`, else in take_gil), and asleep elsewhere at tick
    /// 2 if `m.0`, still in the GIL otherwise.
    fn preempted_beside_a_sleeper(
        t_held: bool,
        moved: u64,
        now: char,
        (m_left, m_in_release): (bool, bool),
    ) -> Option<SwitchedOut> {
        const H: i32 = 30;
        const M: i32 = 40;
        let mut kernel = Kernel::default();
        let mut handoffs = Handoffs::new();
        kernel.totals.insert(W, (5_000_000, 1_000_000));
        let (t_kind, h_kind) = if t_held { ('h', 'r') } else { ('r', 'h') };
        let mut tick = vec![
            thread(W, 'w', 7_000),
            thread(T, t_kind, 50_000),
            thread(H, h_kind, 80_000),
            thread(M, 'w', 3_000),
        ];
        let in_release: &[i32] = if m_in_release { &[M] } else { &[] };
        handoffs.locate(&mut tick, (10, in_release), &mut kernel);
        let began = 100_000_000;
        kernel.totals.insert(W, (5_300_000, 1_003_000));
        kernel.clocks.insert(
            W,
            SchedClocks {
                accounted_ns: began + 300_000,
                run_ns: 5_300_000,
                load_updated_ns: began + 300_000,
            },
        );
        kernel.clocks.insert(
            T,
            SchedClocks {
                accounted_ns: began + 4_000,
                run_ns: 9_000_000,
                load_updated_ns: began + 3_300,
            },
        );
        kernel.exact.insert(T, 60_000);
        let kind = |who: char| if who == now { 'h' } else { 'r' };
        let mut tick = vec![
            thread(W, kind('W'), 307_000),
            thread(T, 'r', 60_000),
            thread(H, kind('H'), 90_000),
            if m_left {
                ThreadObservation {
                    runnable: false,
                    gil_futex: false,
                    ..thread(M, 'r', 40_000)
                }
            } else {
                thread(M, 'w', 3_000)
            },
        ];
        handoffs.locate(&mut tick, (10 + moved, &[]), &mut kernel);
        tick[1].switched_out
    }

    #[test]
    fn a_thread_preempted_by_a_waiter_another_thread_woke_is_not_located() {
        // H released to W (the count moved once: W's take), and W, woken onto T's CPU,
        // preempted T in its native call: T never held the GIL since the last tick.
        assert_eq!(preempted_at_a_wake_up(false, 1, 'W'), None);
        assert_eq!(preempted_at_a_wake_up(false, 1, '-'), None);
        // H, W, H: twice, where T handing on to W needs H, T, W, H.
        assert_eq!(preempted_at_a_wake_up(false, 2, 'H'), None);
        // Nobody but H took the GIL.
        assert_eq!(preempted_at_a_wake_up(false, 0, '-'), None);
        // Counts that allow T to have handed the GIL to W: T held it at the last tick, or
        // took it since (H, T, W: twice; H, T, W, H: three times).
        let located = Some(SwitchedOut::HandedOff);
        assert_eq!(preempted_at_a_wake_up(true, 1, 'W'), located);
        assert_eq!(preempted_at_a_wake_up(true, 2, 'H'), located);
        assert_eq!(preempted_at_a_wake_up(false, 2, 'W'), located);
        assert_eq!(preempted_at_a_wake_up(false, 2, '-'), located);
        assert_eq!(preempted_at_a_wake_up(false, 3, 'H'), located);
        // H, T, W, H: three times, but M left the GIL to sleep elsewhere, so it took the
        // GIL too: H, T, W, M, H is four.
        assert_eq!(
            preempted_beside_a_sleeper(false, 3, 'H', (true, false)),
            None
        );
        assert_eq!(
            preempted_beside_a_sleeper(false, 4, 'H', (true, false)),
            located
        );
        assert_eq!(
            preempted_beside_a_sleeper(false, 3, 'H', (false, false)),
            located
        );
    }

    #[test]
    fn a_sleeper_in_a_forced_switch_wait_is_not_counted_as_taking_the_gil() {
        // M slept in a release's forced-switch wait at tick 1 (it goes on without the GIL
        // once another takes it) and sleeps elsewhere at tick 2: H, T, W, H is three.
        assert_eq!(
            preempted_beside_a_sleeper(false, 3, 'H', (true, true)),
            Some(SwitchedOut::HandedOff)
        );
    }

    #[test]
    fn a_thread_that_left_its_cpu_at_another_instant_is_not_located() {
        // 200 µs after the waiter began: preempted later, in its native call.
        assert_eq!(handoff(0, 3_000, 200, false), (None, None));
        // Before it: the waiter did not take its CPU.
        assert_eq!(handoff(50, 3_000, 10, false), (None, None));
    }

    #[test]
    fn a_waiter_that_was_queued_did_not_preempt_the_thread_that_woke_it() {
        // Queued 200 µs: it waited for the releasing thread's slice to end, and that thread
        // left its CPU in its native call when it did.
        assert_eq!(handoff(0, 200_000, 4, false), (None, None));
    }

    #[test]
    fn a_thread_that_went_to_sleep_and_was_woken_is_not_located() {
        // It left its CPU as the waiter began, but asleep (a 100 µs nap), and was woken.
        assert_eq!(handoff(0, 3_000, 4, true), (None, None));
    }

    #[test]
    fn a_thread_on_its_cpu_is_not_located() {
        let mut kernel = Kernel::default();
        let mut handoffs = Handoffs::new();
        kernel.totals.insert(W, (5_000_000, 1_000_000));
        let mut tick = vec![thread(W, 'w', 7_000), thread(T, 'r', 50_000)];
        handoffs.locate(&mut tick, (10, &[]), &mut kernel);
        kernel.totals.insert(W, (5_300_000, 1_001_000));
        kernel.clocks.insert(
            W,
            SchedClocks {
                accounted_ns: 100_300_000,
                run_ns: 5_300_000,
                load_updated_ns: 100_300_000,
            },
        );
        // Last accounted by chance as the waiter began, but its clock moves between reads.
        kernel.clocks.insert(
            T,
            SchedClocks {
                accounted_ns: 100_004_000,
                run_ns: 9_000_000,
                load_updated_ns: 100_003_500,
            },
        );
        kernel.exact.insert(T, 60_500);
        let mut tick = vec![thread(W, 'h', 307_000), thread(T, 'r', 60_000)];
        handoffs.locate(&mut tick, (10, &[]), &mut kernel);
        assert_eq!(tick[1].switched_out, None);
    }

    #[test]
    fn without_the_kernels_sched_file_nothing_is_located_or_read_again() {
        let mut kernel = Kernel {
            no_sched_file: true,
            ..Kernel::default()
        };
        let mut handoffs = Handoffs::new();
        kernel.totals.insert(W, (5_000_000, 1_000_000));
        // A waiter served at each tick, whose sched file gives nothing: read until that has
        // happened MAX_FAILED_READS times in a row (a thread that exits between the listing
        // and its read gives nothing once), then never again.
        let mut located = 0;
        let mut reads = Vec::new();
        for i in 0..(2 * MAX_FAILED_READS as u64 + 4) {
            let kind = if i % 2 == 0 { ['w', 'h'] } else { ['h', 'r'] };
            let mut tick = vec![
                thread(W, kind[0], 7_000 + i * 300_000),
                thread(T, kind[1], 50_000 + i * 10_000),
            ];
            handoffs.locate(&mut tick, (10, &[]), &mut kernel);
            located += tick.iter().filter(|t| t.switched_out.is_some()).count();
            reads.push(handoffs.counts.reads);
        }
        assert_eq!(located, 0);
        assert!(handoffs.unavailable);
        let last = reads.len() - 1;
        assert_eq!(
            reads[last],
            reads[last - 3],
            "read on after it counted as missing"
        );
        assert!(reads[last] >= MAX_FAILED_READS as u64);
    }
}
