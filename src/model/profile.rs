//! Aggregates samples as they arrive into per-thread and per-process figures, in bounded
//! memory, with the sampling error of every fraction. It never touches the target.

use std::collections::HashMap;

use super::timeline::Timeline;
use crate::sample::classify::EXECUTING_FLOOR_NS;

/// Less CPU than this (ns, by the exact clock) between two ticks: the thread did not run at
/// all. A waiter served in between wakes, takes the GIL, runs and asks again: 12 µs and more
/// measured (io_pingpong, 3.12); a waiter left asleep uses none (docs/ACCURACY.md, "GIL
/// latency").
const STILL_CPU_NS: u64 = 2_000;
use crate::sample::{Sample, ThreadState};
use crate::stack::{FrameId, FrameKind, Place, StackId, StackTable};

/// Counts of one thread's states over a run of ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub by_state: [u64; ThreadState::COUNT],
}

impl Counts {
    pub fn add(&mut self, state: ThreadState) {
        self.by_state[state.index()] += 1;
    }

    pub fn total(&self) -> u64 {
        self.by_state.iter().sum()
    }

    pub fn get(&self, state: ThreadState) -> u64 {
        self.by_state[state.index()]
    }

    pub fn fraction(&self, state: ThreadState) -> f64 {
        let total = self.total();
        if total == 0 {
            0.0
        } else {
            self.get(state) as f64 / total as f64
        }
    }

    /// Each state's fraction to four decimals, as reports print them, adding up to exactly 1
    /// (the largest remainders get the units that rounding down left over).
    pub fn fractions_summing_to_one(&self) -> [f64; ThreadState::COUNT] {
        const UNITS: u64 = 10_000;
        let total = self.total();
        if total == 0 {
            return [0.0; ThreadState::COUNT];
        }
        let exact: Vec<u128> = ThreadState::ALL
            .iter()
            .map(|s| self.get(*s) as u128 * UNITS as u128)
            .collect();
        let mut units: Vec<u64> = exact.iter().map(|e| (e / total as u128) as u64).collect();
        let mut order: Vec<usize> = (0..ThreadState::COUNT).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(exact[i] % total as u128));
        let missing = UNITS - units.iter().sum::<u64>();
        for &i in order.iter().take(missing as usize) {
            units[i] += 1;
        }
        std::array::from_fn(|i| units[i] as f64 / UNITS as f64)
    }
}

/// Half-width of a 95% interval for a fraction `p` estimated from `n` ticks, against the
/// true share of time over the same window. Ticks are jittered, so they sample the target's
/// states at effectively random instants: the binomial bound holds, and is pessimistic when
/// states last longer than the tick spacing.
pub fn sampling_margin(p: f64, n: u64) -> Option<f64> {
    if n < 30 {
        return None;
    }
    Some(1.96 * (p * (1.0 - p) / n as f64).sqrt())
}

/// Buckets per doubling of a wait's length: each bucket spans 9%, so a quantile read as
/// its bucket's geometric middle is within 4.5% of the true one.
pub const LATENCY_BUCKETS_PER_OCTAVE: usize = 8;
/// The bucket whose lower edge is 1 ms. Bucket `i` starts at 2^((i - 80) / 8) ms, so that
/// whole octaves fall on 1, 2, 4, 8... ms (the buckets of the Prometheus histogram); bucket
/// 0 takes anything under ~1 µs.
const LATENCY_MS_BUCKET: usize = 10 * LATENCY_BUCKETS_PER_OCTAVE;
/// Buckets kept: the last one takes anything from 2^18 ms (4.4 minutes) on.
pub const LATENCY_BUCKETS: usize = LATENCY_MS_BUCKET + 18 * LATENCY_BUCKETS_PER_OCTAVE + 1;

/// The distribution of a thread's GIL wait episodes (from the first tick it waits to the
/// tick it has the GIL again), in fixed logarithmic buckets: bounded memory whatever the
/// recording's length, quantiles within 4.5%, and exact count, total and maximum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Latency {
    /// Episodes per bucket; empty until the first episode.
    counts: Vec<u64>,
    pub episodes: u64,
    pub total_ns: u64,
    pub min_ns: u64,
    pub max_ns: u64,
}

impl Latency {
    /// The bucket an episode of `ns` falls in.
    pub fn bucket(ns: u64) -> usize {
        if ns == 0 {
            return 0;
        }
        let octaves = (ns as f64 / 1e6).log2();
        let index =
            (octaves * LATENCY_BUCKETS_PER_OCTAVE as f64).floor() as i64 + LATENCY_MS_BUCKET as i64;
        index.clamp(0, LATENCY_BUCKETS as i64 - 1) as usize
    }

    /// Where bucket `i` starts (s).
    pub fn bucket_start_s(i: usize) -> f64 {
        let octaves = (i as f64 - LATENCY_MS_BUCKET as f64) / LATENCY_BUCKETS_PER_OCTAVE as f64;
        1e-3 * octaves.exp2()
    }

    pub fn add(&mut self, ns: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS];
            self.min_ns = ns;
        }
        self.counts[Latency::bucket(ns)] += 1;
        self.episodes += 1;
        self.total_ns = self.total_ns.saturating_add(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn merge(&mut self, other: &Latency) {
        if other.episodes == 0 {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.episodes += other.episodes;
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// The `q` quantile (0-1) of the episodes' lengths in seconds, by nearest rank: the
    /// geometric middle of the bucket holding it, kept within the shortest and longest
    /// episode. None without episodes.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.episodes == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.episodes as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let middle = (Latency::bucket_start_s(i) * Latency::bucket_start_s(i + 1)).sqrt();
                return Some(middle.clamp(self.min_ns as f64 / 1e9, self.max_ns as f64 / 1e9));
            }
        }
        Some(self.max_ns as f64 / 1e9)
    }

    pub fn mean_s(&self) -> Option<f64> {
        (self.episodes > 0).then(|| self.total_ns as f64 / self.episodes as f64 / 1e9)
    }

    /// The buckets holding episodes: (bucket, episodes), shortest first.
    pub fn buckets(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (i, n))
    }
}

/// A thread's wait for the GIL still going when a slice of the recording was handed out
/// (`serve`, `top`): the next slice finishes the episode instead of losing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpenWait {
    thread_id: Option<u64>,
    /// When the thread's last tick was, and when its wait began (half-way between its
    /// last tick before waiting and its first waiting tick).
    last_ns: u64,
    since_ns: u64,
    /// The wait began as it held the GIL (see `ThreadProfile::wait_from_hold`).
    from_hold: bool,
}

/// New threads named as their rows are made, per sample: more than this at one tick (a pool
/// of a thousand seen at attach) would hold the sampler up; the others are named over the
/// next slices of [`Profile::refresh_some_names`].
pub const NEW_NAMES_PER_SAMPLE: usize = 64;

/// One thread over the whole recording.
#[derive(Debug, Clone)]
pub struct ThreadProfile {
    pub tid: i32,
    /// Its id in its own PID namespace (a container's), where that differs from `tid`.
    pub ns_tid: Option<i32>,
    pub thread_id: Option<u64>,
    /// The OS thread name.
    pub os_name: String,
    /// `threading.current_thread().name`, where the target's `threading` knows the thread.
    pub python_name: Option<String>,
    pub counts: Counts,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Ticks per Python stack, for each state (None: no stack read at that tick).
    pub stacks: [HashMap<Option<StackId>, u64>; ThreadState::COUNT],
    /// This thread's waiting ticks by what the holder ran: (holder's row, holder's stack).
    pub waited_on: HashMap<(usize, Option<StackId>), u64>,
    /// Times it woke from something else (idle) and then waited for the GIL, directly or
    /// after a moment on a CPU without it (a system call's return): a wake-up that had to
    /// queue for the GIL.
    pub wakeups: u64,
    /// Waiting ticks from such a wake-up until it stopped waiting.
    pub wakeup_wait_ticks: u64,
    /// Its waits for the GIL, each from the first tick waiting to the tick it no longer
    /// waited (it had the GIL). A wait under way when it was first seen or at the end is
    /// left out: its length is not known.
    pub latency: Latency,
    /// When the wait under way began (None: not waiting, or waiting since first seen).
    wait_since_ns: Option<u64>,
    /// Its stack at its last tick: a waiter whose stack moved between two waiting ticks ran
    /// Python in between, so it had the GIL: two waits, not one.
    previous_stack: Option<StackId>,
    /// Its CPU time at its last tick (see [`crate::sample::ThreadSample::cpu`]): a waiter
    /// that used CPU between two waiting ticks ran something, so it had the GIL.
    previous_cpu: Option<(bool, u64)>,
    /// In a process with more than one interpreter: the GIL its interpreter uses (its
    /// address, [`GilProfile::base`]) and the interpreter's id, as of the last tick it held
    /// or waited (else the first tick it was seen). None: one interpreter, or no thread state.
    pub gil: Option<(u64, Option<i64>)>,
    previous: Option<ThreadState>,
    /// It was idle, and has not held or waited since.
    woken: bool,
    waking: bool,
    /// The wait under way began at a tick after one at which it held the GIL (made to let
    /// go, or releasing it around a call): see [`Profile::served_waiters`].
    wait_from_hold: bool,
    /// Ticks per state counted without a stack because the walk was deferred: moved to the
    /// stack once a later tick resolves it.
    deferred: [u64; ThreadState::COUNT],
}

/// A place in the code and how often a thread was there.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    /// The innermost frame (past the C library's: [`StackTable::place`]).
    pub frame: FrameId,
    /// For a native frame, the innermost Python frame it was called from.
    pub caller: Option<FrameId>,
    pub samples: u64,
    /// Share of the thread's samples.
    pub fraction: f64,
}

impl ThreadProfile {
    /// The name to show: the Python name where known, else the OS name.
    pub fn name(&self) -> &str {
        self.python_name.as_deref().unwrap_or(&self.os_name)
    }

    /// Its ticks whose walk was deferred had `stack` after all (None: unknown; they stay
    /// without a stack).
    fn resolve_deferred(&mut self, stack: Option<StackId>) {
        let deferred = std::mem::take(&mut self.deferred);
        let Some(stack) = stack else {
            return;
        };
        for (state, n) in deferred.into_iter().enumerate() {
            let stacks = &mut self.stacks[state];
            let Some(unknown) = stacks.get_mut(&None) else {
                continue;
            };
            let n = n.min(*unknown);
            *unknown -= n;
            if *unknown == 0 {
                stacks.remove(&None);
            }
            if n > 0 {
                *stacks.entry(Some(stack)).or_default() += n;
            }
        }
    }

    /// The innermost frames the thread was in while in `state`, most samples first.
    pub fn top_locations(
        &self,
        state: ThreadState,
        table: &StackTable,
        limit: usize,
    ) -> Vec<Location> {
        let mut by_place: HashMap<Place, u64> = HashMap::new();
        // A native function is one place whatever line of it ran (its frames differ by line
        // where debug information gives lines): the first frame of it met stands for all.
        let mut functions: HashMap<(&str, &str), FrameId> = HashMap::new();
        for (stack, &count) in &self.stacks[state.index()] {
            if let Some(mut place) = stack.and_then(|s| table.place(s)) {
                if let Some(f) = table
                    .frame(place.frame)
                    .filter(|f| f.kind == FrameKind::Native)
                {
                    place.frame = *functions
                        .entry((&*f.function, &*f.module))
                        .or_insert(place.frame);
                }
                *by_place.entry(place).or_default() += count;
            }
        }
        let total = self.counts.total().max(1) as f64;
        let mut top: Vec<Location> = by_place
            .into_iter()
            .map(|(place, samples)| Location {
                frame: place.frame,
                caller: place.caller,
                samples,
                fraction: samples as f64 / total,
            })
            .collect();
        top.sort_by(|a, b| {
            b.samples
                .cmp(&a.samples)
                .then(a.frame.cmp(&b.frame))
                .then(a.caller.cmp(&b.caller))
        });
        top.truncate(limit);
        top
    }

    pub fn fraction(&self, state: ThreadState) -> f64 {
        self.counts.fraction(state)
    }

    /// Add another thread's ticks to this one's (folding threads that ended).
    fn absorb(&mut self, other: ThreadProfile) {
        for (mine, theirs) in self.counts.by_state.iter_mut().zip(other.counts.by_state) {
            *mine += theirs;
        }
        self.first_ns = self.first_ns.min(other.first_ns);
        self.last_ns = self.last_ns.max(other.last_ns);
        for (mine, theirs) in self.stacks.iter_mut().zip(other.stacks) {
            for (stack, n) in theirs {
                *mine.entry(stack).or_default() += n;
            }
        }
        for (key, n) in other.waited_on {
            *self.waited_on.entry(key).or_default() += n;
        }
        self.wakeups += other.wakeups;
        self.wakeup_wait_ticks += other.wakeup_wait_ticks;
        self.latency.merge(&other.latency);
    }

    /// 95% half-width for the fraction of `state`.
    pub fn margin(&self, state: ThreadState) -> Option<f64> {
        sampling_margin(self.fraction(state), self.counts.total())
    }

    /// The largest margin over the four states: one "±" for the row.
    pub fn worst_margin(&self) -> Option<f64> {
        ThreadState::ALL
            .iter()
            .filter_map(|s| self.margin(*s))
            .reduce(f64::max)
    }
}

/// Process figures summed over ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GilTicks {
    pub ticks: u64,
    /// Ticks at which some thread held the GIL.
    pub held: u64,
    /// Ticks with at least one waiter.
    pub contended: u64,
    /// Waiting threads summed over the ticks.
    pub waiters: u64,
    /// Free-threaded builds: ticks at which the GIL was off, counted apart (`ticks` and the
    /// figures above are over the ticks with a GIL)...
    pub off: u64,
    /// ...and ticks at which it was on.
    pub on: u64,
    /// Ticks at which the kernel had stopped every thread (SIGSTOP, a debugger): counted
    /// apart, like `off`. Nothing held or waited for the GIL then; nothing ran at all.
    pub stopped: u64,
}

impl GilTicks {
    /// A free-threaded build was sampled (the GIL was seen on or off).
    pub fn free_threaded(&self) -> bool {
        self.off + self.on > 0
    }

    /// The GIL was never on: there are no GIL figures, only attached and detached threads.
    pub fn no_gil(&self) -> bool {
        self.off > 0 && self.ticks == 0
    }

    /// `part` (a count of these ticks) as a share of the ticks with a GIL; 0 without any.
    pub fn share(&self, part: u64) -> f64 {
        if self.ticks == 0 {
            0.0
        } else {
            part as f64 / self.ticks as f64
        }
    }

    /// Share of the free-threaded ticks at which the GIL was on (None on other builds).
    pub fn enabled_share(&self) -> Option<f64> {
        self.free_threaded()
            .then(|| self.on as f64 / (self.on + self.off) as f64)
    }
}

/// One GIL over the recording, in a process with more than one interpreter (3.12+
/// subinterpreters may each have a GIL of their own).
#[derive(Debug, Clone, PartialEq)]
pub struct GilProfile {
    /// Where its struct lies in the target: its identity.
    pub base: u64,
    /// Ids of the interpreters using it, as of the last tick that saw it.
    pub interpreters: Vec<Option<i64>>,
    /// A subinterpreter's own GIL, not the main interpreter's.
    pub own: bool,
    /// Its figures over the ticks that saw it (held and waiting by its own threads).
    pub ticks: GilTicks,
    first_switch: Option<(u64, u64)>,
    last_switch: Option<(u64, u64)>,
}

impl GilProfile {
    fn fraction(&self, part: u64) -> f64 {
        self.ticks.share(part)
    }

    pub fn held(&self) -> f64 {
        self.fraction(self.ticks.held)
    }

    pub fn contended(&self) -> f64 {
        self.fraction(self.ticks.contended)
    }

    pub fn mean_waiting(&self) -> f64 {
        self.fraction(self.ticks.waiters)
    }

    /// Hand-overs per second, from this GIL's own switch counter.
    pub fn switches_per_s(&self) -> Option<f64> {
        switch_rate(self.first_switch?, self.last_switch?)
    }
}

/// GILs tracked one by one: a program that makes and destroys interpreters in a loop gets
/// new GIL addresses; past this many, GILs not seen yet are left out of the per-GIL list.
pub const MAX_GILS: usize = 256;

/// Everything a report shows, gathered sample by sample.
#[derive(Debug, Clone)]
pub struct Profile {
    pub samples: u64,
    pub start_ns: Option<u64>,
    pub end_ns: u64,
    gil: GilTicks,
    first_switch: Option<(u64, u64)>,
    last_switch: Option<(u64, u64)>,
    pub interval_us: u64,
    /// One row per thread, in order of first sight.
    threads: Vec<ThreadProfile>,
    /// The row of each tid's current thread (a recycled tid gets a new row).
    rows: HashMap<i32, usize>,
    /// The tid after the last one [`Profile::refresh_some_names`] renamed.
    name_cursor: i32,
    /// Rows created without a name (more new threads at one tick than
    /// [`NEW_NAMES_PER_SAMPLE`]): named first by [`Profile::refresh_some_names`].
    unnamed: Vec<usize>,
    /// Waiters blamed on what the holder was running: (holder's row, holder's stack) ->
    /// waiting threads summed over ticks.
    blame: HashMap<(usize, Option<StackId>), u64>,
    /// Waiters summed over ticks at which no thread held the GIL (a hand-off under way).
    pub blame_unheld: u64,
    /// Waiting threads summed over ticks, whichever GIL they waited for (the weight of the
    /// blame view).
    all_waiters: u64,
    /// Each GIL, the main one first, where the process had more than one interpreter.
    gils: Vec<GilProfile>,
    /// Each thread's runs of one state in time order, when a timeline format needs them.
    pub timeline: Option<Timeline>,
    /// Threads that ended and were summed into one row (`FOLDED_TID`) to bound memory.
    pub folded_threads: u64,
    next_fold_ns: u64,
    /// Waits under way at the end of the previous slice, by tid (see [`Profile::take_slice`]).
    open_waits: HashMap<i32, OpenWait>,
    /// Each GIL's switch counter at the previous tick, by the GIL's address (0: the only GIL):
    /// how many times the GIL changed hands since, to tell one wait from two.
    last_switches: HashMap<u64, u64>,
}

/// Rows kept before threads that ended are folded together: a program that starts a thread
/// per request would otherwise grow the profile (and the report) by a row per request.
pub const MAX_THREAD_ROWS: usize = 1024;
/// Threads that ended kept as rows of their own when folding: those that held or waited for
/// the GIL most.
pub const KEEP_ENDED_ROWS: usize = 256;
/// A thread not seen for this long has ended (a live thread is listed at every tick).
const ENDED_AFTER_NS: u64 = 1_000_000_000;
/// How often at most rows are folded.
const FOLD_EVERY_NS: u64 = 100_000_000;
/// The tid of the row that sums folded threads (no real thread has tid 0).
pub const FOLDED_TID: i32 = 0;

/// What the waiters of a recording waited on: one holder's stack, weighted by the number
/// of threads that waited while it held.
#[derive(Debug, Clone)]
pub struct Blame<'a> {
    pub holder: &'a ThreadProfile,
    pub stack: Option<StackId>,
    /// Waiting threads summed over the ticks (each waiter at each tick counts 1).
    pub waiter_ticks: u64,
}

impl Default for Profile {
    fn default() -> Profile {
        Profile::new()
    }
}

impl Profile {
    pub fn new() -> Profile {
        Profile {
            samples: 0,
            start_ns: None,
            end_ns: 0,
            gil: GilTicks::default(),
            first_switch: None,
            last_switch: None,
            interval_us: 0,
            threads: Vec::new(),
            rows: HashMap::new(),
            name_cursor: 0,
            unnamed: Vec::new(),
            blame: HashMap::new(),
            blame_unheld: 0,
            all_waiters: 0,
            gils: Vec::new(),
            timeline: None,
            folded_threads: 0,
            next_fold_ns: 0,
            open_waits: HashMap::new(),
            last_switches: HashMap::new(),
        }
    }

    /// Hand out the recording so far as a slice (`serve`, `top`) and start the next one
    /// empty, but for the waits for the GIL under way: the next slice counts each of them
    /// whole when it ends, rather than losing the longest ones at every slice's edge.
    pub fn take_slice(&mut self) -> Profile {
        let mut open_waits = HashMap::new();
        for (&tid, &row) in &self.rows {
            let thread = &self.threads[row];
            if let (Some(ThreadState::Wait), Some(since_ns)) =
                (thread.previous, thread.wait_since_ns)
            {
                open_waits.insert(
                    tid,
                    OpenWait {
                        thread_id: thread.thread_id,
                        last_ns: thread.last_ns,
                        since_ns,
                        from_hold: thread.wait_from_hold,
                    },
                );
            }
        }
        let slice = std::mem::take(self);
        self.open_waits = open_waits;
        slice
    }

    /// Every thread's waits for the GIL together.
    pub fn latency(&self) -> Latency {
        let mut all = Latency::default();
        for thread in &self.threads {
            all.merge(&thread.latency);
        }
        all
    }

    /// Keep the timeline from now on (for the chrometrace and timeline formats).
    pub fn record_timeline(&mut self) {
        self.timeline.get_or_insert_with(Timeline::new);
    }

    /// Add one sample. `name` gives a new thread its display name.
    pub fn add(&mut self, sample: &Sample, mut name: impl FnMut(i32) -> String) {
        self.samples += 1;
        let mut names_left = NEW_NAMES_PER_SAMPLE;
        self.start_ns.get_or_insert(sample.time_ns);
        self.end_ns = sample.time_ns;
        if sample.gil.off() {
            // No GIL at this tick: nothing to hold, wait for or hand over.
            self.gil.off += 1;
        } else if sample.gil.created {
            self.gil.on += sample.gil.enabled.is_some() as u64;
            self.first_switch
                .get_or_insert((sample.time_ns, sample.gil.switch_number));
            self.last_switch = Some((sample.time_ns, sample.gil.switch_number));
            self.interval_us = sample.gil.interval_us;
        }
        let all_waiters = sample.waiters() as u64;
        self.all_waiters += all_waiters;
        // A process the kernel had stopped whole is left out of the GIL figures: they say what
        // its threads did with the GIL while they could run.
        let stopped = !sample.threads.is_empty()
            && sample
                .threads
                .iter()
                .all(|t| t.state == ThreadState::Stopped);
        self.gil.stopped += stopped as u64;
        // The process figures are the main GIL's: with several GILs, those of the threads
        // of the interpreters that use it (and of threads without a thread state).
        let tick = match sample.gils.is_empty() {
            true => gil_tick(sample.threads.iter()),
            false => {
                if !stopped {
                    self.add_gils(sample);
                }
                gil_tick(sample.threads.iter().filter(|t| gil_index(t) == 0))
            }
        };
        if !sample.gil.off() && !stopped {
            add_gil(&mut self.gil, &tick);
        }
        let served = self.served_waiters(sample);
        for thread in &sample.threads {
            let row = match self.rows.get(&thread.tid).copied() {
                // A thread that gains a Python thread state is the same thread; one with a
                // different Python thread id behind a known tid is a new thread.
                Some(row)
                    if thread.thread_id.is_none()
                        || self.threads[row].thread_id.is_none()
                        || self.threads[row].thread_id == thread.thread_id =>
                {
                    row
                }
                _ => {
                    let os_name = match names_left.checked_sub(1) {
                        Some(left) => {
                            names_left = left;
                            name(thread.tid)
                        }
                        None => {
                            self.unnamed.push(self.threads.len());
                            String::new()
                        }
                    };
                    self.threads.push(ThreadProfile {
                        tid: thread.tid,
                        ns_tid: thread.ns_tid,
                        thread_id: thread.thread_id,
                        os_name,
                        python_name: None,
                        counts: Counts::default(),
                        first_ns: sample.time_ns,
                        last_ns: sample.time_ns,
                        stacks: Default::default(),
                        waited_on: HashMap::new(),
                        wakeups: 0,
                        wakeup_wait_ticks: 0,
                        latency: Latency::default(),
                        wait_since_ns: None,
                        previous_stack: None,
                        previous_cpu: None,
                        gil: None,
                        previous: None,
                        woken: false,
                        waking: false,
                        wait_from_hold: false,
                        deferred: [0; ThreadState::COUNT],
                    });
                    self.rows.insert(thread.tid, self.threads.len() - 1);
                    self.threads.len() - 1
                }
            };
            let entry = &mut self.threads[row];
            if entry.thread_id.is_none() {
                entry.thread_id = thread.thread_id;
            }
            if entry.previous.is_none() {
                // A wait under way when the previous slice was handed out goes on here.
                if let Some(open) = self.open_waits.remove(&thread.tid) {
                    if open.thread_id == thread.thread_id || open.thread_id.is_none() {
                        entry.previous = Some(ThreadState::Wait);
                        entry.last_ns = open.last_ns;
                        entry.wait_since_ns = Some(open.since_ns);
                        entry.wait_from_hold = open.from_hold;
                    }
                }
            }
            let half_way = entry.last_ns + sample.time_ns.saturating_sub(entry.last_ns) / 2;
            match (entry.previous, thread.state) {
                // Served in between (see `served_waiters`): one wait ended, another began.
                (Some(ThreadState::Wait), ThreadState::Wait) if served.contains(&thread.tid) => {
                    entry.wait_from_hold = false;
                    if let Some(since) = entry.wait_since_ns.replace(half_way) {
                        entry.latency.add(half_way.saturating_sub(since));
                    }
                }
                (Some(ThreadState::Wait), ThreadState::Wait) => {}
                (Some(before), ThreadState::Wait) => {
                    entry.wait_since_ns = Some(half_way);
                    entry.wait_from_hold = before == ThreadState::Hold;
                }
                (None, ThreadState::Wait) => entry.wait_since_ns = None,
                (Some(ThreadState::Wait), _) => {
                    if let Some(since) = entry.wait_since_ns.take() {
                        entry.latency.add(half_way.saturating_sub(since));
                    }
                }
                _ => {}
            }
            entry.counts.add(thread.state);
            if let Some((index, interpreter)) = thread.gil {
                let in_gil = matches!(thread.state, ThreadState::Hold | ThreadState::Wait);
                if in_gil || entry.gil.is_none() {
                    let base = sample.gils.get(index as usize).map_or(0, |g| g.base);
                    entry.gil = Some((base, interpreter));
                }
            }
            if let Some(timeline) = self.timeline.as_mut() {
                timeline.add(row, thread.state, thread.stack, sample.time_ns);
            }
            entry.last_ns = sample.time_ns;
            entry.previous_stack = thread.stack;
            entry.previous_cpu = thread.cpu;
            *entry.stacks[thread.state.index()]
                .entry(thread.stack)
                .or_default() += 1;
            if thread.deferred && thread.stack.is_none() {
                entry.deferred[thread.state.index()] += 1;
            }
            match thread.state {
                ThreadState::Idle => entry.woken = true,
                // Leaving a sleep, a thread runs for a moment before it asks for the GIL.
                ThreadState::Running => {}
                ThreadState::Wait if entry.woken => {
                    entry.wakeups += 1;
                    entry.woken = false;
                    entry.waking = true;
                }
                _ => entry.woken = false,
            }
            if thread.state == ThreadState::Wait {
                if entry.waking {
                    entry.wakeup_wait_ticks += 1;
                }
            } else {
                entry.waking = false;
            }
            entry.previous = Some(thread.state);
        }
        for &(tid, stack) in &sample.resolved {
            if let Some(&row) = self.rows.get(&tid) {
                self.threads[row].resolve_deferred(stack);
            }
        }
        if let Some(timeline) = self.timeline.as_mut() {
            timeline.add_waiters(all_waiters as usize, sample.time_ns);
        }
        if all_waiters > 0 && !sample.gils.is_empty() {
            self.blame_each_gil(sample);
        } else if all_waiters > 0 {
            let waiters = all_waiters;
            let holder = sample.threads.iter().find(|t| t.state == ThreadState::Hold);
            match holder.and_then(|h| Some((self.rows.get(&h.tid).copied()?, h.stack))) {
                Some(key) => {
                    *self.blame.entry(key).or_default() += waiters;
                    for waiter in sample
                        .threads
                        .iter()
                        .filter(|t| t.state == ThreadState::Wait)
                    {
                        if let Some(&row) = self.rows.get(&waiter.tid) {
                            *self.threads[row].waited_on.entry(key).or_default() += 1;
                        }
                    }
                }
                None => self.blame_unheld += waiters,
            }
        }
        if self.threads.len() > MAX_THREAD_ROWS
            && self.timeline.is_none()
            && sample.time_ns >= self.next_fold_ns
        {
            self.fold_ended(sample.time_ns);
            // Folding walks every row: not at every tick when many threads are recent.
            self.next_fold_ns = sample.time_ns + FOLD_EVERY_NS;
        }
    }

    /// The threads that waited for the GIL at the previous tick and at this one, yet were not
    /// waiting throughout: a hold shorter than a tick, which no sample sees (an I/O thread
    /// that gets the GIL back, sends a byte and asks again). A waiter whose stack moved, or
    /// that used more CPU than `take_gil`'s futex calls take ([`EXECUTING_FLOOR_NS`]), ran
    /// in between. Otherwise the GIL's `switch_number` tells: CPython counts each change of
    /// holder (a thread taking it back from itself is not counted), so a waiter served
    /// between two ticks at which others held it moved the count by two at least. The
    /// changes the other threads' ticks account for are taken off (a waiter then that left
    /// waiting, a holder that took it or took it back, a thread whose stack moved), and
    /// those left over go to the waiters that ran, then to the longest waiting (CPython
    /// signals its waiters in turn; glibc's condition variable wakes the oldest first).
    /// Where another thread may have taken the GIL more than once in between (it woke, ran
    /// and slept, or left waiting for a native call), the changes left over go only to
    /// waiters that woke in between and did not begin waiting as they held the GIL (see the
    /// loop's comment); where the counter is not read, or at a slice's first tick, only
    /// waiters that ran are split.
    fn served_waiters(&mut self, sample: &Sample) -> Vec<i32> {
        let mut served = Vec::new();
        let mut switches_now: Vec<(u64, Option<u64>)> = Vec::new();
        if sample.gils.is_empty() {
            let known = sample.gil.created && !sample.gil.off();
            switches_now.push((0, known.then_some(sample.gil.switch_number)));
        } else {
            for reading in &sample.gils {
                let known = reading.state.created && !reading.state.off();
                switches_now.push((reading.base, known.then_some(reading.state.switch_number)));
            }
        }
        // Per GIL (in `switches_now`'s order): the changes of holder since the previous tick
        // not yet accounted for, and the waiters of both ticks (since, stack moved, tid).
        let mut left: Vec<i64> = vec![0; switches_now.len()];
        let mut waiters: Vec<Vec<(u64, bool, bool, i32)>> = vec![Vec::new(); switches_now.len()];
        for (index, &(base, now)) in switches_now.iter().enumerate() {
            let before = self.last_switches.get(&base).copied();
            left[index] = match (before, now) {
                // A counter that went back or leapt is not this GIL's (garbage, a new GIL at
                // the same address): nothing is split on it.
                (Some(before), Some(now)) if now >= before && now - before < 1 << 20 => {
                    (now - before) as i64
                }
                _ => 0,
            };
        }
        let changes = left.clone();
        // A thread that may have taken the GIL more than once between the ticks (it was not
        // waiting at the first, or left waiting for something else than holding) leaves the
        // count of changes without a bound: no waiter is then split on the count alone.
        let mut unbounded = vec![false; changes.len()];
        for thread in &sample.threads {
            let index = match sample.gils.is_empty() {
                true => 0,
                false => gil_index(thread) as usize,
            };
            if index >= changes.len() {
                continue;
            }
            let Some(&row) = self.rows.get(&thread.tid) else {
                // A thread first seen holding took the GIL since the previous tick.
                left[index] -= (thread.state == ThreadState::Hold) as i64;
                continue;
            };
            let entry = &self.threads[row];
            if entry.thread_id.is_some()
                && thread.thread_id.is_some()
                && entry.thread_id != thread.thread_id
            {
                left[index] -= (thread.state == ThreadState::Hold) as i64;
                continue;
            }
            let moved =
                matches!((entry.previous_stack, thread.stack), (Some(a), Some(b)) if a != b);
            // More CPU than a waiter's own futex calls take: it ran (it had the GIL, or a
            // tick that saw it waiting saw it on its way into a native call).
            let ran = matches!((entry.previous_cpu, thread.cpu),
                (Some((exact_a, a)), Some((exact_b, b)))
                    if exact_a == exact_b && b.saturating_sub(a) >= EXECUTING_FLOOR_NS);
            // Its exact clock did not move: it never ran, so it took nothing (a waiter that
            // was served had to wake, take the GIL and ask again: tens of µs).
            let still = matches!((entry.previous_cpu, thread.cpu),
                (Some((true, a)), Some((true, b))) if b.saturating_sub(a) < STILL_CPU_NS);
            let took = match (entry.previous, thread.state) {
                (Some(ThreadState::Wait), ThreadState::Wait) => {
                    // A waiter that never ran was waiting throughout, whatever the counter
                    // says: the changes were others' (a thread made to let go sits in
                    // drop_gil, off any CPU, while two others pass the GIL to and fro).
                    if let (Some(since), false) = (entry.wait_since_ns, still && !moved) {
                        // Its exact clock moved (it woke) and its wait did not begin as it
                        // held the GIL: see the loop below.
                        let woke = !entry.wait_from_hold
                            && matches!((entry.previous_cpu, thread.cpu),
                                (Some((true, a)), Some((true, b))) if b.saturating_sub(a) >= STILL_CPU_NS);
                        waiters[index].push((since, moved || ran, woke, thread.tid));
                    }
                    continue;
                }
                // A waiter leaves only by taking the GIL.
                (Some(ThreadState::Wait), ThreadState::Hold) => true,
                (Some(ThreadState::Wait), _) => {
                    unbounded[index] = true;
                    true
                }
                // Held at both ticks while the GIL changed hands: it took it back.
                (Some(ThreadState::Hold), ThreadState::Hold) => true,
                (_, ThreadState::Hold) => true,
                _ => {
                    unbounded[index] |= moved;
                    moved
                }
            };
            left[index] -= took as i64;
        }
        for (index, mut waiters) in waiters.into_iter().enumerate() {
            // Those that ran first: they were not waiting throughout, whatever the counter
            // says. Then, where the GIL changed hands twice at least (to the waiter, then away
            // from it), the longest waiting, as many as the changes left over. Where another
            // thread may have taken the GIL more than once (the count is unbounded), only
            // waiters that woke in between (their exact clock moved) and whose wait did not
            // begin as they held the GIL: a thread made to let go, or releasing it around a
            // call, is woken in turn by the others' releases without being served, and when
            // served holds the GIL until made to let go again, longer than a tick; a thread
            // woken from I/O that waits at both ticks and woke in between is the one the
            // changes left over were for (io_pingpong on a quiet host: 17-22% of its waits
            // read joined in pairs without this; docs/ACCURACY.md, "GIL latency").
            waiters.sort_by_key(|&(since, ran, _, tid)| (!ran, since, tid));
            for (_, ran, woke, tid) in waiters {
                let bounded = !unbounded[index];
                let counted = changes[index] >= 2 && left[index] > 0;
                if !ran && !(counted && (bounded || woke)) {
                    continue;
                }
                left[index] -= 1;
                served.push(tid);
            }
        }
        self.last_switches.clear();
        for (base, now) in switches_now {
            if let Some(now) = now {
                self.last_switches.insert(base, now);
            }
        }
        served
    }

    /// Add a tick's figures to each of its GILs' own.
    fn add_gils(&mut self, sample: &Sample) {
        for (index, reading) in sample.gils.iter().enumerate() {
            let at = match self.gils.iter().position(|g| g.base == reading.base) {
                Some(at) => at,
                None if self.gils.len() < MAX_GILS => {
                    self.gils.push(GilProfile {
                        base: reading.base,
                        interpreters: Vec::new(),
                        own: index > 0,
                        ticks: GilTicks::default(),
                        first_switch: None,
                        last_switch: None,
                    });
                    self.gils.len() - 1
                }
                None => continue,
            };
            let gil = &mut self.gils[at];
            if gil.interpreters != reading.interpreters {
                gil.interpreters.clone_from(&reading.interpreters);
            }
            let threads = sample
                .threads
                .iter()
                .filter(|t| gil_index(t) == index as u16);
            add_gil(&mut gil.ticks, &gil_tick(threads));
            if reading.state.created {
                let switch = (sample.time_ns, reading.state.switch_number);
                gil.first_switch.get_or_insert(switch);
                gil.last_switch = Some(switch);
            }
        }
    }

    /// Blame each waiter of a tick with several GILs on the holder of the GIL it waits for.
    fn blame_each_gil(&mut self, sample: &Sample) {
        for waiter in sample
            .threads
            .iter()
            .filter(|t| t.state == ThreadState::Wait)
        {
            let holder = sample
                .threads
                .iter()
                .find(|t| t.state == ThreadState::Hold && gil_index(t) == gil_index(waiter));
            match holder.and_then(|h| Some((self.rows.get(&h.tid).copied()?, h.stack))) {
                Some(key) => {
                    *self.blame.entry(key).or_default() += 1;
                    if let Some(&row) = self.rows.get(&waiter.tid) {
                        *self.threads[row].waited_on.entry(key).or_default() += 1;
                    }
                }
                None => self.blame_unheld += 1,
            }
        }
    }

    /// Each GIL over the recording, the main one first, where the process had more than one
    /// interpreter; empty where it had one (its GIL is the process figures').
    pub fn gils(&self) -> &[GilProfile] {
        &self.gils
    }

    /// Sum the threads that ended, but for the `KEEP_ENDED_ROWS` that held or waited most,
    /// into one row, renumbering the rows that stay (blame and waits name rows). Not done
    /// with a timeline, whose spans name every thread's row.
    fn fold_ended(&mut self, now_ns: u64) {
        let ended = |t: &ThreadProfile| {
            t.tid != FOLDED_TID && t.last_ns.saturating_add(ENDED_AFTER_NS) < now_ns
        };
        let mut candidates: Vec<usize> = (0..self.threads.len())
            .filter(|&row| ended(&self.threads[row]))
            .collect();
        let weight =
            |t: &ThreadProfile| t.counts.get(ThreadState::Hold) + t.counts.get(ThreadState::Wait);
        candidates.sort_by_key(|&row| std::cmp::Reverse(weight(&self.threads[row])));
        let fold: std::collections::HashSet<usize> =
            candidates.into_iter().skip(KEEP_ENDED_ROWS).collect();
        if fold.is_empty() {
            return;
        }
        let existing = self.threads.iter().position(|t| t.tid == FOLDED_TID);
        let mut kept = Vec::with_capacity(self.threads.len() - fold.len() + 1);
        let mut new_row = vec![0usize; self.threads.len()];
        let mut folded: Option<ThreadProfile> = None;
        for (row, thread) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            if fold.contains(&row) || Some(row) == existing {
                if Some(row) != existing {
                    self.folded_threads += 1;
                }
                folded = Some(match folded {
                    None => thread,
                    Some(mut sum) => {
                        sum.absorb(thread);
                        sum
                    }
                });
            } else {
                new_row[row] = kept.len();
                kept.push(thread);
            }
        }
        let mut sum = folded.expect("at least one row folded");
        sum.tid = FOLDED_TID;
        sum.thread_id = None;
        sum.os_name = String::new();
        sum.python_name = Some(format!("[{} threads that ended]", self.folded_threads));
        sum.previous = None;
        sum.woken = false;
        sum.waking = false;
        sum.wait_since_ns = None;
        let sum_row = kept.len();
        for (row, slot) in new_row.iter_mut().enumerate() {
            if fold.contains(&row) || Some(row) == existing {
                *slot = sum_row;
            }
        }
        kept.push(sum);
        let rekey = |map: HashMap<(usize, Option<StackId>), u64>| {
            let mut out: HashMap<(usize, Option<StackId>), u64> = HashMap::new();
            for ((row, stack), n) in map {
                *out.entry((new_row[row], stack)).or_default() += n;
            }
            out
        };
        for thread in &mut kept {
            thread.waited_on = rekey(std::mem::take(&mut thread.waited_on));
        }
        self.blame = rekey(std::mem::take(&mut self.blame));
        self.unnamed = std::mem::take(&mut self.unnamed)
            .into_iter()
            .filter(|row| !fold.contains(row))
            .map(|row| new_row[row])
            .collect();
        self.rows = kept
            .iter()
            .enumerate()
            .filter(|(_, t)| t.tid != FOLDED_TID)
            .map(|(row, t)| (t.tid, row))
            .collect();
        self.threads = kept;
    }

    /// What the waiters waited on, most first.
    pub fn blame(&self) -> Vec<Blame<'_>> {
        let mut blame: Vec<Blame> = self
            .blame
            .iter()
            .filter_map(|(&(row, stack), &waiter_ticks)| {
                Some(Blame {
                    holder: self.threads.get(row)?,
                    stack,
                    waiter_ticks,
                })
            })
            .collect();
        blame.sort_by(|a, b| {
            b.waiter_ticks
                .cmp(&a.waiter_ticks)
                .then(a.holder.tid.cmp(&b.holder.tid))
                .then(a.stack.cmp(&b.stack))
        });
        blame
    }

    /// The thread of a row (for blame keys).
    pub fn thread_at(&self, row: usize) -> Option<&ThreadProfile> {
        self.threads.get(row)
    }

    /// Mean wall time between two samples (s).
    pub fn tick_s(&self) -> f64 {
        if self.samples > 1 {
            self.duration_s() / (self.samples - 1) as f64
        } else {
            0.0
        }
    }

    /// Waiters summed over all ticks, whichever GIL they waited for (the total weight of
    /// the blame view).
    pub fn waiter_ticks(&self) -> u64 {
        self.all_waiters
    }

    /// Wall time the kernel had the whole process stopped (SIGSTOP, a debugger), from the
    /// ticks that found it so (s).
    pub fn stopped_s(&self) -> f64 {
        self.gil.stopped as f64 * self.tick_s()
    }

    /// Share of the ticks at which the whole process was stopped.
    pub fn stopped_share(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.gil.stopped as f64 / self.samples as f64
        }
    }

    /// Wall time covered by the samples (s).
    pub fn duration_s(&self) -> f64 {
        match self.start_ns {
            Some(start) => (self.end_ns.saturating_sub(start)) as f64 / 1e9,
            None => 0.0,
        }
    }

    /// Samples, over every thread and state, whose stack `stack` picks.
    pub fn samples_with_stack(&self, stack: impl Fn(StackId) -> bool) -> u64 {
        self.threads
            .iter()
            .flat_map(|t| t.stacks.iter())
            .flat_map(|by_stack| by_stack.iter())
            .filter(|(id, _)| id.is_some_and(&stack))
            .map(|(_, n)| n)
            .sum()
    }

    /// Threads sorted by hold + wait, most first.
    pub fn threads(&self) -> Vec<&ThreadProfile> {
        self.threads_with_rows()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// Threads sorted as by `threads`, each with its row (what blame and timelines name).
    pub fn threads_with_rows(&self) -> Vec<(usize, &ThreadProfile)> {
        let mut threads: Vec<(usize, &ThreadProfile)> = self.threads.iter().enumerate().collect();
        threads.sort_by(|(_, a), (_, b)| {
            let key =
                |t: &ThreadProfile| t.fraction(ThreadState::Hold) + t.fraction(ThreadState::Wait);
            key(b).total_cmp(&key(a)).then(a.tid.cmp(&b.tid))
        });
        threads
    }

    fn gil_fraction(&self, part: impl Fn(&GilTicks) -> u64) -> f64 {
        self.gil.share(part(&self.gil))
    }

    /// Fraction of ticks at which the GIL was held.
    pub fn held(&self) -> f64 {
        self.gil_fraction(|g| g.held)
    }

    /// Fraction of ticks with at least one waiter.
    pub fn contended(&self) -> f64 {
        self.gil_fraction(|g| g.contended)
    }

    /// Mean number of waiting threads per tick.
    pub fn mean_waiting(&self) -> f64 {
        self.gil_fraction(|g| g.waiters)
    }

    pub fn held_margin(&self) -> Option<f64> {
        sampling_margin(self.held(), self.gil.ticks)
    }

    pub fn contended_margin(&self) -> Option<f64> {
        sampling_margin(self.contended(), self.gil.ticks)
    }

    /// Give each thread that is still alive its current name (names are often set just
    /// after a thread starts, after gilscope first saw it).
    pub fn refresh_names(&mut self, name: impl FnMut(i32) -> Option<String>) {
        self.refresh_some_names(usize::MAX, name);
    }

    /// [`Profile::refresh_names`] for at most `budget` of the current threads, taking up
    /// where the last call stopped: a target with thousands of threads is renamed a slice
    /// at a time, not in one pause of the sampler.
    pub fn refresh_some_names(
        &mut self,
        budget: usize,
        mut name: impl FnMut(i32) -> Option<String>,
    ) {
        let mut budget = budget;
        while budget > 0 {
            let Some(row) = self.unnamed.pop() else {
                break;
            };
            let Some(thread) = self.threads.get_mut(row) else {
                continue;
            };
            if thread.os_name.is_empty() && self.rows.get(&thread.tid) == Some(&row) {
                thread.os_name = name(thread.tid).unwrap_or_default();
                budget -= 1;
            }
        }
        let mut current: Vec<(i32, usize)> = self.rows.iter().map(|(&t, &r)| (t, r)).collect();
        if current.is_empty() {
            return;
        }
        current.sort_unstable();
        let count = budget.min(current.len());
        let start = current.partition_point(|&(tid, _)| tid < self.name_cursor);
        for i in 0..count {
            let (tid, row) = current[(start + i) % current.len()];
            if let Some(now) = name(tid).filter(|n| !n.is_empty()) {
                self.threads[row].os_name = now;
            }
            self.name_cursor = tid.saturating_add(1);
        }
    }

    /// Give threads their Python names, by `threading.get_ident()`. A name once learned is
    /// kept after the thread leaves `threading`'s registry (it still ran under that name).
    /// Only threads `alive` (by tid) now take a name: an ended thread's ident may already be
    /// a new thread's, and the name read with it that thread's.
    pub fn set_python_names(&mut self, names: &HashMap<u64, String>, alive: impl Fn(i32) -> bool) {
        for (&tid, &row) in &self.rows {
            let thread = &mut self.threads[row];
            if let Some(name) = thread.thread_id.and_then(|id| names.get(&id)) {
                if alive(tid) {
                    thread.python_name = Some(name.clone());
                }
            }
        }
    }

    /// Does some thread alive now have an ident that `names` does not name (a thread that has
    /// not registered with `threading` yet, or `threading` not imported yet)? Also yes while
    /// no thread or no name is known at all: nothing can be said to be complete yet.
    pub fn lacks_python_names(
        &self,
        names: &HashMap<u64, String>,
        alive: impl Fn(i32) -> bool,
    ) -> bool {
        self.rows.is_empty()
            || names.is_empty()
            || self.rows.iter().any(|(&tid, &row)| {
                self.threads[row]
                    .thread_id
                    .is_some_and(|id| !names.contains_key(&id) && alive(tid))
            })
    }

    /// The process figures, as counts.
    pub fn gil_ticks(&self) -> GilTicks {
        self.gil
    }

    /// The interpreter's switch counter at the first and the last sample that read it, each
    /// as (time ns, switch number).
    pub fn switch_span(&self) -> Option<((u64, u64), (u64, u64))> {
        Some((self.first_switch?, self.last_switch?))
    }

    /// GIL hand-overs per second, from the interpreter's own switch counter.
    pub fn switches_per_s(&self) -> Option<f64> {
        switch_rate(self.first_switch?, self.last_switch?)
    }
}

/// Hand-overs per second between two readings (time ns, switch number) of a counter.
fn switch_rate((t0, n0): (u64, u64), (t1, n1): (u64, u64)) -> Option<f64> {
    if t1 <= t0 || n1 < n0 {
        return None;
    }
    Some((n1 - n0) as f64 / ((t1 - t0) as f64 / 1e9))
}

/// The GIL a thread of a tick is judged against: its interpreter's, else (no thread state)
/// the main one.
fn gil_index(thread: &crate::sample::ThreadSample) -> u16 {
    thread.gil.map_or(0, |(index, _)| index)
}

/// One tick's figures for a GIL from the threads judged against it. Held means one of them
/// holds it in the exact sense used for the thread rows, so that the figures and the rows
/// agree.
fn gil_tick<'a>(threads: impl Iterator<Item = &'a crate::sample::ThreadSample>) -> GilTicks {
    let (mut held, mut waiters) = (false, 0);
    for thread in threads {
        held |= thread.state == ThreadState::Hold;
        waiters += (thread.state == ThreadState::Wait) as u64;
    }
    GilTicks {
        ticks: 1,
        held: held as u64,
        contended: (waiters > 0) as u64,
        waiters,
        ..GilTicks::default()
    }
}

fn add_gil(total: &mut GilTicks, tick: &GilTicks) {
    total.ticks += tick.ticks;
    total.held += tick.held;
    total.contended += tick.contended;
    total.waiters += tick.waiters;
    total.off += tick.off;
    total.on += tick.on;
}

/// A sample for tests: threads `(tid, state)` at `time_ns`, the switch counter at
/// `switch_number`, the GIL locked if one of them holds it.
#[cfg(test)]
pub(crate) fn test_sample(
    time_ns: u64,
    switch_number: u64,
    states: &[(i32, ThreadState)],
) -> Sample {
    use crate::python::interpreter::GilState;
    use crate::sample::ThreadSample;
    Sample {
        time_ns,
        gil: GilState {
            created: true,
            locked: states.iter().any(|(_, s)| *s == ThreadState::Hold),
            holder: 0,
            switch_number,
            interval_us: 5000,
            current: None,
            enabled: None,
        },
        threads: states
            .iter()
            .map(|&(tid, state)| ThreadSample {
                tid,
                ns_tid: None,
                thread_id: Some(tid as u64),
                state,
                stack: None,
                deferred: false,
                gil: None,
                cpu: None,
            })
            .collect(),
        gils: Vec::new(),
        resolved: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounded_fractions_add_up_to_exactly_one() {
        let mut counts = Counts {
            by_state: [1, 1, 1, 0, 0, 0, 0],
        };
        let f = counts.fractions_summing_to_one();
        assert_eq!(
            f.iter().map(|x| (x * 1e4).round() as u64).sum::<u64>(),
            10_000
        );
        assert_eq!(f[3], 0.0);
        counts.by_state = [2, 3, 5, 7, 0, 0, 0];
        let f = counts.fractions_summing_to_one();
        assert_eq!(
            f.iter().map(|x| (x * 1e4).round() as u64).sum::<u64>(),
            10_000
        );
        assert_eq!(
            Counts::default().fractions_summing_to_one(),
            [0.0; ThreadState::COUNT]
        );
    }

    use test_sample as sample;

    #[test]
    fn ticks_at_which_the_process_was_stopped_stay_out_of_the_gil_figures() {
        use ThreadState::{Hold, Stopped, Wait};
        let mut profile = Profile::new();
        for i in 0..40u64 {
            // Held and contended while it runs; stopped whole for the last half.
            let states: &[(i32, ThreadState)] = if i < 20 {
                &[(1, Hold), (2, Wait)]
            } else {
                &[(1, Stopped), (2, Stopped)]
            };
            profile.add(&sample(i * 1_000_000, i, states), |_| String::new());
        }
        assert_eq!(profile.held(), 1.0);
        assert_eq!(profile.contended(), 1.0);
        assert_eq!(profile.gil_ticks().stopped, 20);
        assert_eq!(profile.stopped_share(), 0.5);
        assert!(
            (profile.stopped_s() - 0.020).abs() < 1e-9,
            "{}",
            profile.stopped_s()
        );
        let holder = profile.threads().into_iter().find(|t| t.tid == 1).unwrap();
        assert_eq!(holder.fraction(Stopped), 0.5);
        assert_eq!(holder.fraction(Hold), 0.5);
    }

    #[test]
    fn ticks_without_a_gil_stay_out_of_the_gil_figures() {
        let mut profile = Profile::new();
        for i in 0..100u64 {
            // A free-threaded build whose GIL goes on for the last quarter.
            let on = i >= 75;
            let states = if on {
                [(1, ThreadState::Hold), (2, ThreadState::Wait)]
            } else {
                [(1, ThreadState::Attached), (2, ThreadState::Attached)]
            };
            let mut s = sample(i * 1_000_000, i, &states);
            s.gil.enabled = Some(on);
            profile.add(&s, |_| String::new());
        }
        let ticks = profile.gil_ticks();
        assert_eq!((ticks.off, ticks.on, ticks.ticks), (75, 25, 25));
        assert!(!ticks.no_gil());
        assert_eq!(ticks.enabled_share(), Some(0.25));
        // Held over the ticks with a GIL: every one of them.
        assert_eq!(profile.held(), 1.0);
        assert_eq!(profile.contended(), 1.0);
        let thread = &profile.threads()[0];
        assert_eq!(thread.fraction(ThreadState::Attached), 0.75);
        assert_eq!(thread.fraction(ThreadState::Hold), 0.25);
    }

    #[test]
    fn fractions_switches_and_contention_add_up() {
        let mut profile = Profile::new();
        for i in 0..1000u64 {
            let (a, b) = if i % 2 == 0 {
                (ThreadState::Hold, ThreadState::Wait)
            } else {
                (ThreadState::Wait, ThreadState::Hold)
            };
            let idle = if i % 4 == 0 {
                ThreadState::Idle
            } else {
                ThreadState::Running
            };
            profile.add(
                &sample(i * 1_000_000, i, &[(1, a), (2, b), (3, idle)]),
                |t| format!("t{t}"),
            );
        }
        assert_eq!(profile.samples, 1000);
        assert!((profile.held() - 1.0).abs() < 1e-9);
        assert!((profile.contended() - 1.0).abs() < 1e-9);
        assert!((profile.mean_waiting() - 1.0).abs() < 1e-9);
        let switches = profile.switches_per_s().unwrap();
        assert!((switches - 1000.0).abs() < 2.0, "{switches}");
        let threads = profile.threads();
        assert_eq!(threads.len(), 3);
        assert_eq!(threads[2].tid, 3);
        assert!((threads[2].fraction(ThreadState::Idle) - 0.25).abs() < 1e-9);
        for t in &threads {
            let sum: f64 = ThreadState::ALL.iter().map(|s| t.fraction(*s)).sum();
            assert!((sum - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn deferred_ticks_take_the_stack_a_later_walk_resolves_and_only_that() {
        let mut profile = Profile::new();
        let idle = |time, deferred: bool, stack: Option<StackId>| {
            let mut tick = sample(time, 0, &[(7, ThreadState::Idle), (8, ThreadState::Idle)]);
            for thread in &mut tick.threads {
                thread.deferred = deferred;
                thread.stack = stack;
            }
            tick
        };
        // Three ticks whose walks were deferred, then the walk: thread 7 had not run (its
        // stack is resolved), thread 8 had (its deferred ticks stay without a stack).
        for i in 0..3 {
            profile.add(&idle(i, true, None), |_| "t".into());
        }
        let mut walked = idle(3, false, Some(42));
        walked.resolved = vec![(7, Some(42)), (8, None)];
        profile.add(&walked, |_| "t".into());
        let stacks = |profile: &Profile, tid: i32| {
            let threads = profile.threads();
            let row = threads.iter().find(|t| t.tid == tid).unwrap();
            row.stacks[ThreadState::Idle.index()].clone()
        };
        assert_eq!(stacks(&profile, 7), HashMap::from([(Some(42), 4)]));
        assert_eq!(
            stacks(&profile, 8),
            HashMap::from([(None, 3), (Some(42), 1)])
        );
        // A resolution is used once: a later one finds nothing left to move.
        let mut again = idle(4, false, Some(42));
        again.resolved = vec![(8, Some(42))];
        profile.add(&again, |_| "t".into());
        assert_eq!(
            stacks(&profile, 8),
            HashMap::from([(None, 3), (Some(42), 2)])
        );
    }

    #[test]
    fn rows_past_the_naming_budget_of_a_tick_are_named_first_by_the_next_slices() {
        let mut profile = Profile::new();
        let many = NEW_NAMES_PER_SAMPLE as i32 + 10;
        let tids: Vec<(i32, ThreadState)> = (1..=many).map(|t| (t, ThreadState::Idle)).collect();
        let mut named = 0;
        profile.add(&sample(0, 0, &tids), |tid| {
            named += 1;
            format!("os-{tid}")
        });
        assert_eq!(named, NEW_NAMES_PER_SAMPLE);
        let unnamed = |profile: &Profile| {
            profile
                .threads()
                .iter()
                .filter(|t| t.os_name.is_empty())
                .count()
        };
        assert_eq!(unnamed(&profile), 10);
        let mut asked = Vec::new();
        profile.refresh_some_names(10, |tid| {
            asked.push(tid);
            Some(format!("os-{tid}"))
        });
        // The budget went to the ten rows without a name, not round the named ones.
        asked.sort_unstable();
        assert_eq!(
            asked,
            (NEW_NAMES_PER_SAMPLE as i32 + 1..=many).collect::<Vec<_>>()
        );
        assert_eq!(unnamed(&profile), 0);
    }

    #[test]
    fn names_are_refreshed_a_slice_at_a_time_round_the_threads() {
        let mut profile = Profile::new();
        let tids: Vec<(i32, ThreadState)> = (1..=5).map(|t| (t * 10, ThreadState::Idle)).collect();
        profile.add(&sample(0, 0, &tids), |_| "old".into());
        let mut asked = Vec::new();
        for _ in 0..3 {
            profile.refresh_some_names(2, |tid| {
                asked.push(tid);
                Some(format!("new-{tid}"))
            });
        }
        // Two per call, in tid order, wrapping round: every thread within ceil(5 / 2) calls.
        assert_eq!(asked, [10, 20, 30, 40, 50, 10]);
        assert!(profile
            .threads()
            .iter()
            .all(|t| t.name().starts_with("new-")));
    }

    #[test]
    fn python_names_are_complete_only_when_every_live_python_thread_has_one() {
        let mut profile = Profile::new();
        let mut names = HashMap::new();
        // Nothing seen yet: not complete, whatever the names.
        assert!(profile.lacks_python_names(&names, |_| true));
        let mut tick = sample(0, 0, &[(5, ThreadState::Hold), (6, ThreadState::Idle)]);
        tick.threads[1].thread_id = None; // a native thread: it has no Python name to find
        profile.add(&tick, |_| "os".into());
        assert!(profile.lacks_python_names(&names, |_| true));
        names.insert(5u64, "MainThread".to_string());
        assert!(!profile.lacks_python_names(&names, |_| true));
        names.clear();
        names.insert(77u64, "other".to_string());
        assert!(profile.lacks_python_names(&names, |_| true));
        // A thread that ended needs no name.
        assert!(!profile.lacks_python_names(&names, |tid| tid != 5));
    }

    #[test]
    fn a_thread_that_gains_its_thread_state_keeps_one_row() {
        let mut profile = Profile::new();
        let mut early = sample(0, 0, &[(5, ThreadState::Running)]);
        early.threads[0].thread_id = None;
        profile.add(&early, |_| "python".into());
        profile.add(&sample(1_000_000, 0, &[(5, ThreadState::Hold)]), |_| {
            "x".into()
        });
        let mut recycled = sample(2_000_000, 0, &[(5, ThreadState::Idle)]);
        recycled.threads[0].thread_id = Some(99);
        profile.add(&recycled, |_| "new".into());
        let threads = profile.threads();
        assert_eq!(threads.len(), 2);
        let first = threads.iter().find(|t| t.thread_id == Some(5)).unwrap();
        assert_eq!(first.counts.total(), 2);
        profile.refresh_names(|tid| Some(format!("worker-{tid}")));
        assert!(profile.threads().iter().any(|t| t.name() == "worker-5"));
        // Ident 5 ended (tid 5 is ident 99's now): a name read for 5 belongs to whoever
        // has that ident now, not to the thread that ended.
        let mut python = HashMap::new();
        python.insert(5u64, "MainThread".to_string());
        profile.set_python_names(&python, |_| true);
        let threads = profile.threads();
        let ended = threads.iter().find(|t| t.thread_id == Some(5)).unwrap();
        assert_eq!(ended.python_name, None);
        let recycled = threads.iter().find(|t| t.thread_id == Some(99)).unwrap();
        assert_eq!(
            (recycled.name(), recycled.os_name.as_str()),
            ("worker-5", "worker-5")
        );
        python.insert(99u64, "Thread-2".to_string());
        profile.set_python_names(&python, |_| true);
        let recycled = profile
            .threads()
            .into_iter()
            .find(|t| t.thread_id == Some(99));
        assert_eq!(recycled.unwrap().name(), "Thread-2");
    }

    #[test]
    fn threads_that_ended_are_folded_into_one_row_and_nothing_is_lost() {
        let mut profile = Profile::new();
        let ms = 1_000_000u64;
        // Thread 1 holds throughout; 2,000 short threads wait one tick each, one a tick.
        for i in 0..2000u64 {
            let short = 10 + i as i32;
            let state = if i % 2 == 0 {
                ThreadState::Wait
            } else {
                ThreadState::Running
            };
            profile.add(
                &sample(i * ms, i, &[(1, ThreadState::Hold), (short, state)]),
                |_| "t".into(),
            );
        }
        let threads = profile.threads();
        // Left: the threads of the last second (not known to have ended: 1,001 here) and
        // those since the last fold (at most 100 ms: 100), the heaviest that ended, thread 1
        // and the folded row.
        assert!(
            threads.len() <= 1001 + 100 + KEEP_ENDED_ROWS + 2,
            "{}",
            threads.len()
        );
        let folded = threads.iter().find(|t| t.tid == FOLDED_TID).unwrap();
        assert_eq!(
            folded.name(),
            format!("[{} threads that ended]", profile.folded_threads)
        );
        // Every tick of every thread is still counted: 2,000 for thread 1, 2,000 short.
        let total: u64 = threads.iter().map(|t| t.counts.total()).sum();
        assert_eq!(total, 4000);
        let holder = threads.iter().find(|t| t.tid == 1).unwrap();
        assert_eq!(holder.counts.get(ThreadState::Hold), 2000);
        // Each wait is blamed on thread 1, whose row moved as rows were folded.
        let blame = profile.blame();
        assert_eq!(blame.len(), 1);
        assert_eq!((blame[0].holder.tid, blame[0].waiter_ticks), (1, 1000));
        let waits: u64 = threads
            .iter()
            .flat_map(|t| t.waited_on.iter())
            .map(|(&(row, _), &n)| {
                assert_eq!(profile.thread_at(row).unwrap().tid, 1);
                n
            })
            .sum();
        assert_eq!(waits, 1000);
        // The threads kept are those that waited (the heaviest), plus the recent ones.
        let kept_waiters = threads
            .iter()
            .filter(|t| t.tid >= 10 && t.counts.get(ThreadState::Wait) == 1)
            .count();
        assert!(kept_waiters >= KEEP_ENDED_ROWS, "{kept_waiters}");
    }

    #[test]
    fn a_timeline_keeps_every_thread_row() {
        let mut profile = Profile::new();
        profile.record_timeline();
        for i in 0..1500u64 {
            profile.add(
                &sample(i * 1_000_000, i, &[(10 + i as i32, ThreadState::Hold)]),
                |_| "t".into(),
            );
        }
        assert_eq!(profile.threads().len(), 1500);
        assert_eq!(profile.folded_threads, 0);
    }

    #[test]
    fn an_ended_thread_takes_no_name_read_after_it_ended() {
        let mut profile = Profile::new();
        profile.add(
            &sample(0, 0, &[(5, ThreadState::Hold), (6, ThreadState::Idle)]),
            |_| "python3".into(),
        );
        // Threads 5 and 6 were named while alive; then 6 ended and its ident went to a new
        // thread named "short-368".
        let mut names = HashMap::new();
        names.insert(5u64, "worker".to_string());
        names.insert(6u64, "first".to_string());
        profile.set_python_names(&names, |_| true);
        names.insert(6u64, "short-368".to_string());
        profile.set_python_names(&names, |tid| tid == 5);
        let threads = profile.threads();
        let name = |tid| threads.iter().find(|t| t.tid == tid).unwrap().name();
        assert_eq!((name(5), name(6)), ("worker", "first"));
    }

    #[test]
    fn each_gil_counts_its_own_threads_and_the_process_figures_are_the_main_gils() {
        use crate::python::interpreter::GilState;
        use crate::sample::GilReading;
        let mut profile = Profile::new();
        // Thread 1 (main interpreter) holds the main GIL while thread 3 waits for it; thread
        // 2 (interpreter 1) holds its own GIL throughout.
        for i in 0..100u64 {
            let mut tick = sample(
                i * 1_000_000,
                i,
                &[
                    (1, ThreadState::Hold),
                    (2, ThreadState::Hold),
                    (3, ThreadState::Wait),
                ],
            );
            let reading = |base, ids: Vec<Option<i64>>, switches| GilReading {
                base,
                interpreters: ids,
                state: GilState {
                    created: true,
                    switch_number: switches,
                    ..GilState::default()
                },
            };
            tick.gils = vec![
                reading(0x1000, vec![Some(0)], i),
                reading(0x2000, vec![Some(1)], 0),
            ];
            for (thread, gil) in tick.threads.iter_mut().zip([(0, 0), (1, 1), (0, 0)]) {
                thread.gil = Some((gil.0, Some(gil.1)));
            }
            profile.add(&tick, |t| format!("t{t}"));
        }
        assert!((profile.held() - 1.0).abs() < 1e-9);
        assert!((profile.mean_waiting() - 1.0).abs() < 1e-9);
        let gils = profile.gils();
        assert_eq!(gils.len(), 2);
        assert_eq!((gils[0].own, gils[1].own), (false, true));
        assert_eq!(gils[1].interpreters, [Some(1)]);
        assert_eq!((gils[1].held(), gils[1].contended()), (1.0, 0.0));
        assert_eq!(gils[1].switches_per_s(), Some(0.0));
        assert!(gils[0].switches_per_s().is_some());
        let on = |tid| profile.threads().iter().find(|t| t.tid == tid).unwrap().gil;
        assert_eq!(
            (on(1), on(2), on(3)),
            (
                Some((0x1000, Some(0))),
                Some((0x2000, Some(1))),
                Some((0x1000, Some(0)))
            )
        );
        // Thread 3 waited on thread 1, not on the other GIL's holder.
        let blame = profile.blame();
        assert_eq!(blame.len(), 1);
        assert_eq!((blame[0].holder.tid, blame[0].waiter_ticks), (1, 100));
    }

    #[test]
    fn each_wait_for_the_gil_is_one_episode_from_its_first_waiting_tick_to_the_gil() {
        let mut profile = Profile::new();
        let ms = 1_000_000u64;
        // Thread 2 waits from its very first tick (length unknown: left out), then every
        // 10 ticks waits 3 ticks (3 ms) and holds; at the end it waits again, unfinished.
        let mut states = vec![ThreadState::Wait, ThreadState::Wait, ThreadState::Hold];
        for _ in 0..50 {
            states.extend([ThreadState::Idle; 7]);
            states.extend([ThreadState::Wait; 3]);
            states.push(ThreadState::Hold);
        }
        states.extend([ThreadState::Wait; 5]);
        for (i, &state) in states.iter().enumerate() {
            let i = i as u64;
            profile.add(
                &sample(i * ms, i, &[(1, ThreadState::Hold), (2, state)]),
                |_| "t".into(),
            );
        }
        let threads = profile.threads();
        let waiter = threads.iter().find(|t| t.tid == 2).unwrap();
        let latency = &waiter.latency;
        assert_eq!(latency.episodes, 50);
        assert_eq!((latency.min_ns, latency.max_ns), (3 * ms, 3 * ms));
        for q in [0.5, 0.9, 0.99] {
            let value = latency.quantile(q).unwrap();
            assert!((value - 0.003).abs() < 1e-9, "{q}: {value}");
        }
        assert_eq!(profile.latency().episodes, 50);
        assert_eq!(
            threads
                .iter()
                .find(|t| t.tid == 1)
                .unwrap()
                .latency
                .episodes,
            0
        );
    }

    #[test]
    fn a_hold_between_two_ticks_splits_the_wait_in_two_and_others_swapping_do_not() {
        let ms = 1_000_000u64;
        let mut profile = Profile::new();
        // Thread 1 holds throughout but for what no tick sees; 2 and 3 wait from tick 1. At
        // tick 6 the GIL went 1 -> 2 -> 1 (2's stack moved: it ran Python), at tick 11
        // 1 -> 3 -> 1 with no stack to tell (the longest waiting is taken to be served: 3,
        // which waits since tick 1 while 2 waits since tick 6), at tick 14 1 -> 4 -> 1
        // (thread 4 woke, ran and went idle again: its own change of stack accounts for
        // both), and at tick 16 one change only (1 -> 2, 2 holds).
        let mut switches = 0;
        for i in 0..=16u64 {
            switches += match i {
                6 | 11 | 14 => 2,
                16 => 1,
                _ => 0,
            };
            let two = if i == 16 {
                ThreadState::Hold
            } else {
                ThreadState::Wait
            };
            let states = [
                (
                    1,
                    if i == 16 {
                        ThreadState::Idle
                    } else {
                        ThreadState::Hold
                    },
                ),
                (2, if i == 0 { ThreadState::Idle } else { two }),
                (
                    3,
                    if i == 0 {
                        ThreadState::Idle
                    } else {
                        ThreadState::Wait
                    },
                ),
                (4, ThreadState::Idle),
            ];
            let mut tick = sample(i * ms, switches, &states);
            tick.threads[1].stack = Some(if i < 6 { 1 } else { 2 });
            tick.threads[3].stack = Some(if i < 14 { 1 } else { 2 });
            profile.add(&tick, |_| "t".into());
        }
        let episodes = |tid: i32| {
            let threads = profile.threads();
            let latency = &threads.iter().find(|t| t.tid == tid).unwrap().latency;
            (latency.episodes, latency.min_ns, latency.max_ns)
        };
        // 2: from 0.5 to 5.5 ms, then to 15.5 ms (it holds at 16: the GIL went to it once).
        assert_eq!(episodes(2), (2, 5 * ms, 10 * ms));
        // 3: from 0.5 to 10.5 ms; still waiting at the end (left out).
        assert_eq!(episodes(3), (1, 10 * ms, 10 * ms));
    }

    #[test]
    fn a_waiter_that_used_cpu_between_two_waiting_ticks_waited_twice() {
        let ms = 1_000_000u64;
        let mut profile = Profile::new();
        // Thread 2 waits from tick 1 to 8; between ticks 4 and 5 its CPU clock moves by
        // 300 µs (it ran: more than take_gil's futex calls use), elsewhere by 10 µs. The
        // switch counter stays put: the CPU time alone tells.
        let mut cpu = 0;
        for i in 0..=9u64 {
            cpu += if i == 5 { 300_000 } else { 10_000 };
            let two = match i {
                0 => ThreadState::Idle,
                9 => ThreadState::Hold,
                _ => ThreadState::Wait,
            };
            let one = if i == 9 {
                ThreadState::Idle
            } else {
                ThreadState::Hold
            };
            let mut tick = sample(i * ms, 7, &[(1, one), (2, two)]);
            tick.threads[1].cpu = Some((false, cpu));
            profile.add(&tick, |_| "t".into());
        }
        let threads = profile.threads();
        let latency = &threads.iter().find(|t| t.tid == 2).unwrap().latency;
        // From 0.5 to 4.5 ms, then to 8.5 ms.
        assert_eq!(
            (latency.episodes, latency.min_ns, latency.max_ns),
            (2, 4 * ms, 4 * ms)
        );
    }

    #[test]
    fn a_waiter_that_never_ran_was_not_served_whatever_the_counter_says() {
        let ms = 1_000_000u64;
        // Thread 2 waits from tick 1 to 8 (a CPU-bound thread made to let go); between ticks
        // 4 and 5 the GIL changes hands 50 times (two I/O threads, 1 and 3, passing it to and
        // fro, seen idle at the same line at each tick). With thread 2's exact CPU clock
        // still, it waited once; with 20 µs used (woken, served, asking again), twice.
        let run = |used_ns: u64| {
            let mut profile = Profile::new();
            let mut cpu = 0;
            for i in 0..=9u64 {
                cpu += if i == 5 { used_ns } else { 0 };
                let two = match i {
                    0 | 9 => ThreadState::Hold,
                    _ => ThreadState::Wait,
                };
                let switches = if i >= 5 { 50 } else { 0 };
                let mut tick = sample(
                    i * ms,
                    switches,
                    &[(1, ThreadState::Idle), (2, two), (3, ThreadState::Idle)],
                );
                tick.threads[1].cpu = Some((true, cpu));
                profile.add(&tick, |_| "t".into());
            }
            let threads = profile.threads();
            let latency = &threads.iter().find(|t| t.tid == 2).unwrap().latency;
            (latency.episodes, latency.max_ns)
        };
        assert_eq!(run(0), (1, 8 * ms));
        assert_eq!(run(20_000), (2, 4 * ms));
    }

    #[test]
    fn a_waiter_woken_from_io_that_woke_again_was_served_where_others_may_have_taken_twice() {
        let ms = 1_000_000u64;
        // Thread 1 holds at every tick (CPU-bound). Thread 2 waits from tick 1 to 8 and holds
        // at 9; thread 3 waits at ticks 1-4 and sleeps from 5 on (it took the GIL, perhaps
        // more than once: the count of changes has no bound). Between ticks 4 and 5 the GIL
        // changed hands 4 times and thread 2's exact clock moved by `used_ns`. Woken from
        // I/O (idle at tick 0) and woken in between, thread 2 was served: two waits. Made to
        // let go (holding at tick 0), or never woken, it waited once; also where a slice was
        // handed out (top, serve) while it waited.
        let run = |before: ThreadState, used_ns: u64, slice_at: Option<u64>| {
            let mut profile = Profile::new();
            let mut cpu = 0;
            for i in 0..=9u64 {
                if slice_at == Some(i) {
                    profile.take_slice();
                }
                cpu += if i == 5 { used_ns } else { 0 };
                let two = match i {
                    0 => before,
                    9 => ThreadState::Hold,
                    _ => ThreadState::Wait,
                };
                let three = match i {
                    1..=4 => ThreadState::Wait,
                    _ => ThreadState::Idle,
                };
                let switches = if i >= 5 { 4 } else { 0 };
                let mut tick = sample(
                    i * ms,
                    switches,
                    &[(1, ThreadState::Hold), (2, two), (3, three)],
                );
                tick.threads[1].cpu = Some((true, cpu));
                profile.add(&tick, |_| "t".into());
            }
            let threads = profile.threads();
            let latency = &threads.iter().find(|t| t.tid == 2).unwrap().latency;
            (latency.episodes, latency.max_ns)
        };
        assert_eq!(run(ThreadState::Idle, 15_000, None), (2, 4 * ms));
        assert_eq!(run(ThreadState::Hold, 15_000, None), (1, 8 * ms));
        assert_eq!(run(ThreadState::Hold, 15_000, Some(3)), (1, 8 * ms));
        assert_eq!(run(ThreadState::Idle, 0, None), (1, 8 * ms));
    }

    #[test]
    fn latency_quantiles_are_within_their_bucket_of_the_exact_ones() {
        let mut latency = Latency::default();
        // 1,000 waits from 0.1 ms to 100 ms, spread evenly on a log scale.
        let mut exact: Vec<u64> = (0..1000)
            .map(|i| (1e5 * 1000f64.powf(i as f64 / 999.0)) as u64)
            .collect();
        for &ns in &exact {
            latency.add(ns);
        }
        exact.sort_unstable();
        for q in [0.5, 0.9, 0.99] {
            let rank = (q * 1000.0_f64).ceil() as usize - 1;
            let truth = exact[rank] as f64 / 1e9;
            let estimate = latency.quantile(q).unwrap();
            assert!(
                (estimate / truth - 1.0).abs() <= 0.045,
                "{q}: {estimate} vs {truth}"
            );
        }
        assert_eq!(latency.quantile(1.0), Some(exact[999] as f64 / 1e9));
        // Octaves fall on whole milliseconds: 1 ms starts a bucket, 2 ms the one 8 later.
        assert_eq!(Latency::bucket(1_000_000) + 8, Latency::bucket(2_000_000));
        assert!((Latency::bucket_start_s(Latency::bucket(4_000_000)) - 0.004).abs() < 1e-12);
        assert_eq!(Latency::bucket(u64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(Latency::bucket(1), 0);
    }

    #[test]
    fn a_wait_under_way_at_a_slice_edge_is_counted_whole_in_the_next_slice() {
        let ms = 1_000_000u64;
        let mut profile = Profile::new();
        let tick = |profile: &mut Profile, i: u64, state| {
            profile.add(
                &sample(i * ms, i, &[(1, ThreadState::Hold), (2, state)]),
                |_| "t".into(),
            );
        };
        tick(&mut profile, 0, ThreadState::Idle);
        for i in 1..=4 {
            tick(&mut profile, i, ThreadState::Wait);
        }
        let first = profile.take_slice();
        assert_eq!(first.latency().episodes, 0);
        for i in 5..=6 {
            tick(&mut profile, i, ThreadState::Wait);
        }
        tick(&mut profile, 7, ThreadState::Hold);
        let latency = profile.latency();
        assert_eq!((latency.episodes, latency.max_ns), (1, 6 * ms));
    }

    #[test]
    fn sampling_margin_follows_the_binomial_bound() {
        // p = 0.5 over 5000 ticks: 1.96 * sqrt(0.25 / 5000) = 0.01386.
        let m = sampling_margin(0.5, 5000).unwrap();
        assert!((m - 0.01386).abs() < 1e-4, "{m}");
        assert_eq!(sampling_margin(0.0, 5000), Some(0.0));
        assert!(sampling_margin(0.5, 10).is_none());
    }
}
