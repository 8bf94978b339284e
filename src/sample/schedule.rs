//! When to take the next tick: a jittered schedule around the requested rate, so that ticks
//! never lock step with the 5 ms switch interval, and an honest account of lag. (Poisson
//! arrivals were tried: 2.4 times the sampling noise and no less bias; docs/ACCURACY.md.)

use std::sync::atomic::{AtomicBool, Ordering};

use super::monotonic_ns;

/// Longest single sleep, so a stop request is seen promptly.
const MAX_SLEEP_NS: u64 = 50_000_000;
/// Rest the sampler may bank for later ticks: one period, within these bounds (ns). It lets a
/// tick that takes 40% of a short jittered interval (half a period at the least) follow one
/// that took 40% of a long one, while over any stretch longer than the credit the sampler
/// still works at most as long as it rests.
const MIN_REST_CREDIT_NS: i64 = 1_000_000;
const MAX_REST_CREDIT_NS: i64 = 20_000_000;

/// What ended a [`Schedule::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The next tick is due.
    Tick,
    /// The stop flag was raised.
    Stopped,
    /// The deadline came before the next tick was due: the recording is over.
    Deadline,
}

pub struct Schedule {
    period_ns: u64,
    next_ns: u64,
    rng: fastrand::Rng,
    /// Ticks that started later than one period after their deadline.
    pub late_ticks: u64,
    /// Worst lateness seen (ns).
    pub max_lag_ns: u64,
    /// Total lateness (ns), for the mean.
    pub total_lag_ns: u64,
    /// Ticks taken so far.
    pub ticks: u64,
    /// Time rested minus time worked (ns), at most `rest_credit_ns`.
    rest_balance_ns: i64,
    /// The most rest that may be banked (ns): a period, between [`MIN_REST_CREDIT_NS`] and
    /// [`MAX_REST_CREDIT_NS`].
    rest_credit_ns: i64,
    /// This thread's CPU time when the last wait ended (ns), where the clock can be read.
    cpu_at_wake_ns: Option<u64>,
}

impl Schedule {
    pub fn new(rate_hz: f64, start_ns: u64) -> Schedule {
        let period_ns = (1e9 / rate_hz).max(1_000.0) as u64;
        set_fine_timer_slack();
        Schedule {
            period_ns,
            next_ns: start_ns,
            rng: fastrand::Rng::new(),
            late_ticks: 0,
            max_lag_ns: 0,
            total_lag_ns: 0,
            ticks: 0,
            rest_balance_ns: 0,
            rest_credit_ns: i64::try_from(period_ns)
                .unwrap_or(i64::MAX)
                .clamp(MIN_REST_CREDIT_NS, MAX_REST_CREDIT_NS),
            cpu_at_wake_ns: thread_cpu_ns(),
        }
    }

    /// Sleep until the next tick is due, `stop` is raised or `deadline_ns` comes (a recording
    /// at 0.1 Hz for 1 s ends after 1 s, not at its second tick 5 to 15 s later).
    ///
    /// `busy_ns` is how long the last tick took. The sampler rests at least as long as it
    /// works (beyond a credit of up to a period banked from longer rests), so that at
    /// real-time priority it can never take more than half of a CPU, however slow ticks get
    /// (a target with thousands of threads); it falls behind instead, and says so. Its work
    /// is what its own CPU clock says it used since the last wait ended, when that is more
    /// than `busy_ns`: waking up and going back to sleep cost CPU too, and at 100 kHz that
    /// cost alone took nearly a whole CPU.
    pub fn wait(&mut self, stop: &AtomicBool, busy_ns: u64, deadline_ns: Option<u64>) -> Wait {
        let called = monotonic_ns();
        let cpu_now = thread_cpu_ns();
        let used = match (self.cpu_at_wake_ns, cpu_now) {
            (Some(then), Some(now)) => now.saturating_sub(then),
            _ => 0,
        };
        let worked = busy_ns.max(used);
        self.rest_balance_ns = self
            .rest_balance_ns
            .saturating_sub(i64::try_from(worked).unwrap_or(i64::MAX));
        let owed = u64::try_from(-self.rest_balance_ns.min(0)).unwrap_or(u64::MAX);
        let earliest = called.saturating_add(owed);
        // Lateness is measured from when the tick was due, rest owed or not.
        let due = self.next_ns;
        if self.next_ns < earliest {
            self.next_ns = earliest;
        }
        let wake_at = deadline_ns.map_or(self.next_ns, |d| d.min(self.next_ns));
        loop {
            if stop.load(Ordering::Relaxed) {
                return Wait::Stopped;
            }
            let now = monotonic_ns();
            if now >= wake_at {
                break;
            }
            let sleep = (wake_at - now).min(MAX_SLEEP_NS);
            std::thread::sleep(std::time::Duration::from_nanos(sleep));
        }
        let now = monotonic_ns();
        let rested = i64::try_from(now.saturating_sub(called)).unwrap_or(i64::MAX);
        self.rest_balance_ns = self
            .rest_balance_ns
            .saturating_add(rested)
            .min(self.rest_credit_ns);
        self.cpu_at_wake_ns = thread_cpu_ns();
        if deadline_ns.is_some_and(|d| now >= d) {
            return Wait::Deadline;
        }
        let lag = now.saturating_sub(due);
        self.ticks += 1;
        self.total_lag_ns += lag;
        self.max_lag_ns = self.max_lag_ns.max(lag);
        if lag > self.period_ns {
            self.late_ticks += 1;
            // Do not burst to catch up: that would bias the samples towards whatever follows
            // a stall. Start the schedule again from now.
            self.next_ns = now;
        }
        self.next_ns += self.jittered_interval();
        Wait::Tick
    }

    /// Uniform in [0.5, 1.5) periods: the mean rate is the requested one, and the phase
    /// relative to any periodic behaviour of the target is random. Stratified like this,
    /// samples vary less than independent ones would.
    fn jittered_interval(&mut self) -> u64 {
        let half = self.period_ns / 2;
        half + self.rng.u64(0..self.period_ns.max(1))
    }
}

/// Run the calling (sampling) thread at the lowest real-time priority, so that ticks happen
/// when they are due and not when the target happens to leave a CPU free: on a loaded machine
/// a normal-priority sampler gets a CPU mostly while target threads block, which biases every
/// fraction towards waiting. The sampler sleeps between ticks, so it takes no more CPU than
/// before; it only takes it on time. Returns the errno if not permitted (then ticks come late
/// on a busy machine): see [`crate::sample::privileges::without_realtime`].
pub fn sample_on_time() -> Result<(), i32> {
    // musl's `sched_param` has more fields than glibc's (for SCHED_SPORADIC): zero them.
    // SAFETY: sched_param is plain integers, for which all-zero bytes are a valid value.
    let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
    param.sched_priority = 1;
    // Nothing this thread starts may inherit the priority.
    let policy = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;
    // SAFETY: plain syscall on the calling thread with a valid parameter struct.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
        return Ok(());
    }
    Err(std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EPERM))
}

/// The calling thread's CPU time (ns), user and system.
fn thread_cpu_ns() -> Option<u64> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
}

/// Ask the kernel for precise wake-ups (the default slack is 50 µs, 5% of a 1 ms period).
fn set_fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and only affects this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_before_the_next_tick_ends_the_wait_at_the_deadline() {
        let start = monotonic_ns();
        // 0.1 Hz: the second tick is 5 to 15 s away; the deadline is 100 ms away.
        let mut schedule = Schedule::new(0.1, start);
        let stop = AtomicBool::new(false);
        assert_eq!(
            schedule.wait(&stop, 0, Some(start + 100_000_000)),
            Wait::Tick
        );
        assert_eq!(
            schedule.wait(&stop, 0, Some(start + 100_000_000)),
            Wait::Deadline
        );
        let waited = monotonic_ns() - start;
        assert!(
            (100_000_000..2_000_000_000).contains(&waited),
            "waited {waited} ns"
        );
    }

    #[test]
    fn cpu_spent_outside_the_ticks_counts_as_work() {
        // Ticks that report no work, at a rate whose wake-ups alone would keep a CPU busy:
        // the sampler's own CPU clock sees the cost, and rest is owed for it.
        let stop = AtomicBool::new(false);
        let mut schedule = Schedule::new(10_000.0, monotonic_ns());
        schedule.wait(&stop, 0, None);
        // Burn 20 ms of this thread's CPU between two waits, reporting none of it.
        let burn_until = thread_cpu_ns().unwrap() + 20_000_000;
        while thread_cpu_ns().unwrap() < burn_until {}
        let before = monotonic_ns();
        schedule.wait(&stop, 0, None);
        let rested = monotonic_ns() - before;
        // Owed 20 ms less at most one period of credit (1 ms at the least).
        assert!(
            rested >= 18_000_000,
            "rested {rested} ns after 20 ms of work"
        );
    }

    #[test]
    fn intervals_are_jittered_around_the_period() {
        let mut schedule = Schedule::new(1000.0, 0);
        // Seeded: a fresh seed each run made this fail about once in 1,500 runs (a mean
        // 3.4 standard errors out), which says nothing about the schedule.
        schedule.rng = fastrand::Rng::with_seed(0x5eed_0f91_15c0_9e00);
        let intervals: Vec<u64> = (0..10_000).map(|_| schedule.jittered_interval()).collect();
        let mean = intervals.iter().sum::<u64>() as f64 / intervals.len() as f64;
        // The mean of 10,000 uniform draws on [0.5, 1.5) ms has a standard error of
        // 0.0029 ms: allow 3.4 of them (a bias of 1% of the period fails).
        assert!((mean - 1e6).abs() < 1e4, "mean interval {mean} ns");
        assert!(intervals.iter().all(|&i| (500_000..1_500_000).contains(&i)));
        let distinct: std::collections::HashSet<_> = intervals.iter().collect();
        assert!(distinct.len() > 9_000);
    }

    #[test]
    fn the_sampler_rests_at_least_as_long_as_it_worked_and_counts_the_rest_as_lag() {
        let mut schedule = Schedule::new(100_000.0, monotonic_ns());
        let stop = AtomicBool::new(false);
        let before = monotonic_ns();
        assert_eq!(schedule.wait(&stop, 5_000_000, None), Wait::Tick);
        assert!(monotonic_ns() - before >= 5_000_000);
        // The tick was due at once: resting made it late, and that is said.
        assert_eq!(schedule.late_ticks, 1);
        assert!(schedule.max_lag_ns >= 4_000_000, "{}", schedule.max_lag_ns);
    }

    #[test]
    fn rest_banked_in_long_intervals_pays_for_short_ones_but_not_for_more() {
        let stop = AtomicBool::new(false);
        // 10 kHz: ticks of 40 us in intervals drawn from [50, 150) us keep the rate.
        let mut schedule = Schedule::new(10_000.0, monotonic_ns());
        for _ in 0..2_000 {
            assert_eq!(schedule.wait(&stop, 40_000, None), Wait::Tick);
        }
        // Mean interval 100 us, 40 of them work: rest accumulates. (Sleeps that overshoot on
        // a loaded machine only add to it; the rate itself is a benchmark's business.)
        assert!(
            schedule.rest_balance_ns > 0,
            "balance {}",
            schedule.rest_balance_ns
        );
        // At 10 kHz at most 1 ms is banked, at 100 Hz a period, at 1 Hz no more than 20 ms.
        assert!(schedule.rest_balance_ns <= MIN_REST_CREDIT_NS);
        assert_eq!(
            Schedule::new(100.0, monotonic_ns()).rest_credit_ns,
            10_000_000
        );
        // However long the sampler idled, one long tick is paid for almost in full.
        let mut schedule = Schedule::new(1.0, monotonic_ns());
        assert_eq!(schedule.rest_credit_ns, MAX_REST_CREDIT_NS);
        schedule.rest_balance_ns = schedule.rest_credit_ns;
        let before = monotonic_ns();
        assert_eq!(schedule.wait(&stop, 50_000_000, None), Wait::Tick);
        assert!(monotonic_ns() - before >= 30_000_000);
    }

    #[test]
    fn a_raised_stop_flag_ends_the_wait() {
        let mut schedule = Schedule::new(1.0, monotonic_ns() + 10_000_000_000);
        let stop = AtomicBool::new(true);
        assert_eq!(schedule.wait(&stop, 0, None), Wait::Stopped);
    }
}
