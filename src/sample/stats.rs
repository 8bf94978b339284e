//! Where a recording's time goes, tick by tick (`record --stats`, `sampler.stats` in JSON):
//! totals of time and counts per kind of work. Plain counters, no allocation per tick.

use serde::Serialize;

use super::monotonic_ns;

/// Splits time into consecutive phases: each `split` is the time since the last one.
pub struct Stopwatch {
    last_ns: u64,
}

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch {
            last_ns: monotonic_ns(),
        }
    }

    /// When the last phase ended (or the watch started), CLOCK_MONOTONIC ns.
    pub fn last_ns(&self) -> u64 {
        self.last_ns
    }

    /// The time since the last split (ns); a new phase starts now.
    pub fn split(&mut self) -> u64 {
        let now = monotonic_ns();
        let phase = now.saturating_sub(self.last_ns);
        self.last_ns = now;
        phase
    }
}

/// Cumulative cost of the ticks of one process. Times are CLOCK_MONOTONIC nanoseconds of the
/// sampler's wall time: on a loaded machine they include time the sampler was preempted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TickStats {
    /// Ticks taken (including torn ones).
    pub ticks: u64,
    /// Whole ticks: every phase below, and what lies between them.
    pub tick_ns: u64,
    /// Reading the GIL and the Python thread states (remote reads), before and after the
    /// kernel's view of the threads.
    pub memory_ns: u64,
    /// Remote reads (process_vm_readv calls) of those phases.
    pub memory_reads: u64,
    /// Listing the threads and reading each one's /proc files and CPU clock.
    pub proc_ns: u64,
    /// /proc reads: directory listings and file reads.
    pub proc_reads: u64,
    /// CPU clock (perf counter) reads.
    pub clock_reads: u64,
    /// CPU clock reads left out: holders still holding on a CPU, whose counter read would
    /// interrupt the target's CPU and whose clock nothing needs.
    pub clock_reads_skipped: u64,
    /// CPU clock reads of sleepers left out: their counter's page counted no schedule since
    /// their last reading.
    pub clock_reads_unscheduled: u64,
    /// /proc readings of sleeping threads reused because their exact CPU clock had not moved.
    pub proc_reads_reused: u64,
    /// Ticks whose thread listing was the last one, nothing suggesting a change.
    pub listings_reused: u64,
    /// Scheduler figures read to date releases cut short by a woken waiter
    /// ([`crate::sample::handoff`]), and the thread-ticks located in one.
    pub handoff_reads: u64,
    pub handoffs_located: u64,
    /// Walking the Python stacks (their remote reads included).
    pub stack_ns: u64,
    /// Remote reads of the stack walks.
    pub stack_reads: u64,
    /// Stacks walked (not known unchanged), and attempts at them: a stack that moved under a
    /// read is read again within the tick.
    pub stack_walks: u64,
    pub stack_attempts: u64,
    /// Walks put off to a later tick (first walks of sleeping threads past the tick's budget;
    /// each put-off tick counts).
    pub walks_deferred: u64,
    /// Threads whose put-off walk was done at a later tick and had not run meanwhile: their
    /// put-off ticks got the stack. Those of threads that ran stay without a stack.
    pub walks_resolved: u64,
    /// Classifying the tick and adding it to the profile.
    pub aggregate_ns: u64,
    /// Native stacks (`--native`); all zero without it.
    pub native: NativeStats,
}

/// What `--native` did, over the ticks of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NativeStats {
    /// Taking, unwinding, naming and merging native stacks (inside the stack walks' time).
    pub native_ns: u64,
    /// Stacks merged (or native alone, for threads that run no Python).
    pub merged: u64,
    /// Native stacks of threads asleep in a system call (read, or reused: not run since).
    pub asleep: u64,
    /// Native stacks of runnable threads, from perf samples.
    pub from_perf: u64,
    /// Runnable threads with no recent perf sample: Python stack alone.
    pub no_sample: u64,
    /// Sleeping threads that woke while their stack was read: Python stack alone.
    pub moved: u64,
    /// Native and Python stacks that did not fit (read at moments too far apart).
    pub mismatched: u64,
    /// Captures that failed otherwise (the thread ended, a read failed).
    pub failed: u64,
    /// perf samples read, and samples the kernel dropped (a full ring).
    pub perf_samples: u64,
    pub perf_lost: u64,
    /// Most threads perf followed at once, and runnable threads it could not follow (the cap
    /// was reached; each tick counts).
    pub followed_max: usize,
    pub not_followed: u64,
}

impl NativeStats {
    pub fn is_empty(&self) -> bool {
        *self == NativeStats::default()
    }

    fn add(&mut self, other: &NativeStats) {
        self.native_ns += other.native_ns;
        self.merged += other.merged;
        self.asleep += other.asleep;
        self.from_perf += other.from_perf;
        self.no_sample += other.no_sample;
        self.moved += other.moved;
        self.mismatched += other.mismatched;
        self.failed += other.failed;
        self.perf_samples += other.perf_samples;
        self.perf_lost += other.perf_lost;
        self.followed_max = self.followed_max.max(other.followed_max);
        self.not_followed += other.not_followed;
    }
}

impl TickStats {
    /// Add the figures of another process's ticks (for a total over a tree).
    pub fn add(&mut self, other: &TickStats) {
        self.ticks += other.ticks;
        self.tick_ns += other.tick_ns;
        self.memory_ns += other.memory_ns;
        self.memory_reads += other.memory_reads;
        self.proc_ns += other.proc_ns;
        self.proc_reads += other.proc_reads;
        self.clock_reads += other.clock_reads;
        self.clock_reads_skipped += other.clock_reads_skipped;
        self.clock_reads_unscheduled += other.clock_reads_unscheduled;
        self.proc_reads_reused += other.proc_reads_reused;
        self.listings_reused += other.listings_reused;
        self.handoff_reads += other.handoff_reads;
        self.handoffs_located += other.handoffs_located;
        self.stack_ns += other.stack_ns;
        self.stack_reads += other.stack_reads;
        self.stack_walks += other.stack_walks;
        self.stack_attempts += other.stack_attempts;
        self.walks_deferred += other.walks_deferred;
        self.walks_resolved += other.walks_resolved;
        self.aggregate_ns += other.aggregate_ns;
        self.native.add(&other.native);
    }

    /// Time of a tick not in any phase counted (the clock reads themselves, bookkeeping).
    pub fn other_ns(&self) -> u64 {
        self.tick_ns
            .saturating_sub(self.memory_ns + self.proc_ns + self.stack_ns + self.aggregate_ns)
    }

    /// A per-tick breakdown for people: one line per kind of work, with its mean per tick.
    pub fn render(&self) -> String {
        let ticks = self.ticks.max(1) as f64;
        let per_tick_us = |ns: u64| ns as f64 / ticks / 1e3;
        let line = |what: &str, ns: u64, count: Option<(u64, &str)>| {
            let count = count
                .map(|(n, unit)| format!("  {:>8.1} {unit}/tick", n as f64 / ticks))
                .unwrap_or_default();
            format!(
                "  {what:<14}{:>10.1} us/tick {:>10.1} ms total{count}\n",
                per_tick_us(ns),
                ns as f64 / 1e6
            )
        };
        let mut text = format!(
            "{} ticks, {:.1} us per tick\n",
            self.ticks,
            per_tick_us(self.tick_ns)
        );
        text += &line(
            "remote reads",
            self.memory_ns,
            Some((self.memory_reads, "reads")),
        );
        text += &line(
            "/proc reads",
            self.proc_ns,
            Some((self.proc_reads, "reads")),
        );
        text += &format!(
            "  {:<14}{:>38}  {:>8.1} perf reads/tick, {:.1} left out, {:.1} unscheduled\n",
            "(cpu clocks)",
            "(in /proc reads)",
            self.clock_reads as f64 / ticks,
            self.clock_reads_skipped as f64 / ticks,
            self.clock_reads_unscheduled as f64 / ticks
        );
        text += &format!(
            "  {:<14}{:>38}  {:>8.1} reused/tick\n",
            "(sleepers)",
            "(not re-read)",
            self.proc_reads_reused as f64 / ticks
        );
        text += &format!(
            "  {:<14}{:>38}  {:>8.1} reused/tick\n",
            "(listings)",
            "(not re-listed)",
            self.listings_reused as f64 / ticks
        );
        text += &format!(
            "  {:<14}{:>38}  {:>8.1} reads/tick, {:.2} threads located/tick\n",
            "(handoffs)",
            "(in /proc reads)",
            self.handoff_reads as f64 / ticks,
            self.handoffs_located as f64 / ticks
        );
        text += &line(
            "stack walks",
            self.stack_ns,
            Some((self.stack_reads, "reads")),
        );
        if self.stack_walks > 0 {
            text += &format!(
                "  {:<14}{:>38}  {:>8.1} walks/tick, {:.2} reads of each\n",
                "(stacks)",
                "(in stack walks)",
                self.stack_walks as f64 / ticks,
                self.stack_attempts as f64 / self.stack_walks as f64
            );
        }
        if self.walks_deferred > 0 {
            text += &format!(
                "  {:<14}{:>38}  {:>8} ticks put off, {} threads resolved\n",
                "(first walks)", "(of sleeping threads)", self.walks_deferred, self.walks_resolved
            );
        }
        if !self.native.is_empty() {
            let n = &self.native;
            text += &line("native stacks", n.native_ns, Some((n.merged, "merged")));
            text += &format!(
                "  {:<14}{:>38}  {} asleep, {} from perf, {} without a sample, {} moved, \
                 {} not fitting; perf: {} samples, {} lost, {} threads at most\n",
                "(native)",
                "(in stack walks)",
                n.asleep,
                n.from_perf,
                n.no_sample,
                n.moved,
                n.mismatched,
                n.perf_samples,
                n.perf_lost,
                n.followed_max
            );
        }
        text += &line("aggregation", self.aggregate_ns, None);
        text += &line("other", self.other_ns(), None);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breakdown_shows_means_per_tick_and_what_is_left_over() {
        let stats = TickStats {
            ticks: 4,
            tick_ns: 400_000,
            memory_ns: 100_000,
            memory_reads: 40,
            proc_ns: 200_000,
            proc_reads: 80,
            clock_reads: 40,
            clock_reads_skipped: 4,
            clock_reads_unscheduled: 8,
            proc_reads_reused: 12,
            listings_reused: 2,
            handoff_reads: 6,
            handoffs_located: 2,
            stack_ns: 40_000,
            stack_reads: 20,
            stack_walks: 8,
            stack_attempts: 10,
            walks_deferred: 30,
            walks_resolved: 9,
            aggregate_ns: 20_000,
            native: NativeStats::default(),
        };
        assert_eq!(stats.other_ns(), 40_000);
        let text = stats.render();
        assert!(text.starts_with("4 ticks, 100.0 us per tick"), "{text}");
        assert!(text.contains("remote reads        25.0 us/tick"), "{text}");
        assert!(text.contains("10.0 reads/tick"), "{text}");
        assert!(text.contains("3.0 reused/tick"), "{text}");
        assert!(
            text.contains("1.5 reads/tick, 0.50 threads located/tick"),
            "{text}"
        );
        assert!(
            text.contains("10.0 perf reads/tick, 1.0 left out, 2.0 unscheduled"),
            "{text}"
        );
        assert!(text.contains("other               10.0 us/tick"), "{text}");
        assert!(
            text.contains("2.0 walks/tick, 1.25 reads of each"),
            "{text}"
        );
        assert!(
            text.contains("30 ticks put off, 9 threads resolved"),
            "{text}"
        );
        let quiet = TickStats {
            walks_deferred: 0,
            ..stats
        };
        assert!(!quiet.render().contains("put off"), "{text}");
    }
}
