//! Plain-language findings drawn from a recording's figures, each stating the figure it rests
//! on. A finding is made only when the figures clearly support it; silence is an answer too.

use crate::model::profile::ThreadProfile;
use crate::model::Recording;
use crate::sample::ThreadState;
use crate::stack::FrameId;

/// One finding: its sentence, and what it names, for formats that link to them.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub text: String,
    /// The threads it names (kernel tids), the one it is about first.
    pub threads: Vec<i32>,
    /// The code it names: the innermost frame of a holder's stack.
    pub frame: Option<FrameId>,
    /// The state it is about.
    pub state: Option<ThreadState>,
}

impl Finding {
    fn about(text: String, threads: Vec<i32>, state: Option<ThreadState>) -> Finding {
        Finding {
            text,
            threads,
            frame: None,
            state,
        }
    }
}

/// The GIL is saturated when held this much while several threads want it.
const SATURATED: f64 = 0.9;
/// A thread "wants" the GIL when it holds or waits for it this much.
const WANTS: f64 = 0.1;
/// A thread's waiting is worth a finding from this share on.
const WAITS_A_LOT: f64 = 0.25;
/// ... and is "mostly" on one holder's code from this share of its waiting on.
const MOSTLY: f64 = 0.3;
/// Native code that contends: running without the GIL and waiting to get it back.
const NATIVE_RUNS: f64 = 0.2;
const NATIVE_WAITS: f64 = 0.15;
/// A convoy: enough wake-ups that each waited at least this many switch intervals.
const CONVOY_WAKEUPS: u64 = 20;
const CONVOY_INTERVALS: f64 = 0.5;
/// The process stopped for this share of the recording is worth saying.
const STOPPED: f64 = 0.01;
/// Threads named in the waiting finding, most waiting first.
const MAX_WAITERS: usize = 3;

fn pct(f: f64) -> String {
    format!("{:.0}%", 100.0 * f)
}

pub fn findings(recording: &Recording) -> Vec<Finding> {
    let profile = &recording.profile;
    let threads = profile.threads();
    let mut found = Vec::new();
    // First, because it colours every other figure: the time the process could not run.
    if profile.stopped_share() >= STOPPED {
        found.push(Finding::about(
            format!(
                "The process was stopped for {:.2} s ({} of the recording): SIGSTOP, job \
                 control or a debugger. No thread ran then, so that time is not GIL time; the \
                 GIL figures cover the time it ran.",
                profile.stopped_s(),
                pct(profile.stopped_share())
            ),
            Vec::new(),
            Some(ThreadState::Stopped),
        ));
    }
    // Where subinterpreters have GILs of their own, only the main GIL's threads compete
    // for the main GIL (the process figures').
    let main_gil = profile.gils().first().map(|g| g.base);
    let on_main_gil = |t: &&&ThreadProfile| {
        main_gil.is_none() || t.gil.is_none_or(|(base, _)| Some(base) == main_gil)
    };
    let wanting = threads
        .iter()
        .filter(on_main_gil)
        .filter(|t| t.fraction(ThreadState::Hold) + t.fraction(ThreadState::Wait) >= WANTS)
        .count();
    if profile.held() >= SATURATED && wanting >= 2 {
        found.push(Finding::about(
            format!(
                "The GIL was held {} of the time while {wanting} threads wanted it: their \
                 Python code runs one at a time, so these threads add no parallelism.",
                pct(profile.held())
            ),
            Vec::new(),
            Some(ThreadState::Hold),
        ));
    }
    let mut waiters: Vec<_> = threads
        .iter()
        .filter(|t| t.fraction(ThreadState::Wait) >= WAITS_A_LOT)
        .collect();
    waiters.sort_by(|a, b| {
        b.fraction(ThreadState::Wait)
            .total_cmp(&a.fraction(ThreadState::Wait))
    });
    for thread in waiters.into_iter().take(MAX_WAITERS) {
        let mut finding = Finding::about(String::new(), vec![thread.tid], Some(ThreadState::Wait));
        let mut text = format!(
            "{} ({}) waited for the GIL {} of the time",
            thread.name(),
            thread.tid,
            pct(thread.fraction(ThreadState::Wait))
        );
        let total: u64 = thread.waited_on.values().sum();
        let top = thread
            .waited_on
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
        if let Some((&(row, stack), &ticks)) = top {
            let share = ticks as f64 / total.max(1) as f64;
            if let (Some(holder), true) = (profile.thread_at(row), share >= MOSTLY) {
                finding.threads.push(holder.tid);
                finding.frame = recording
                    .stacks
                    .as_ref()
                    .and_then(|table| table.leaf(stack?));
                text.push_str(&format!(
                    ", {} of that while {} ({}) held it",
                    pct(share),
                    holder.name(),
                    holder.tid
                ));
                let place = recording.stacks.as_ref().and_then(|table| {
                    let place = table.place(stack?)?;
                    let paths = super::labels::Paths::of(std::slice::from_ref(recording));
                    Some(format!(
                        " in {}",
                        super::labels::place(table, place, Some(&paths))
                    ))
                });
                text.push_str(&place.unwrap_or_default());
            }
        }
        text.push('.');
        finding.text = text;
        found.push(finding);
    }
    for thread in &threads {
        let (running, wait) = (
            thread.fraction(ThreadState::Running),
            thread.fraction(ThreadState::Wait),
        );
        if running >= NATIVE_RUNS && wait >= NATIVE_WAITS {
            found.push(Finding::about(
                format!(
                    "{} ({}) ran native code without the GIL {} of the time and waited {} to \
                     get it back: its C calls release the GIL, the Python around them contends.",
                    thread.name(),
                    thread.tid,
                    pct(running),
                    pct(wait)
                ),
                vec![thread.tid],
                Some(ThreadState::Running),
            ));
        }
    }
    let interval_s = profile.interval_us as f64 / 1e6;
    for thread in &threads {
        if thread.wakeups < CONVOY_WAKEUPS || interval_s <= 0.0 {
            continue;
        }
        let mean_s = thread.wakeup_wait_ticks as f64 / thread.wakeups as f64 * profile.tick_s();
        if mean_s >= CONVOY_INTERVALS * interval_s {
            found.push(Finding::about(
                format!(
                    "{} ({}) waited {:.1} ms for the GIL after each wake-up on average ({} \
                     wake-ups), {:.1} switch intervals: the convoy effect of waking threads \
                     beside CPU-bound ones.",
                    thread.name(),
                    thread.tid,
                    mean_s * 1e3,
                    thread.wakeups,
                    mean_s / interval_s
                ),
                vec![thread.tid],
                Some(ThreadState::Wait),
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::{test_sample, Profile};
    use crate::model::test_recording;

    #[test]
    fn a_stopped_process_is_said_to_be_stopped_and_its_stop_blames_nothing() {
        use ThreadState::{Idle, Running, Stopped};
        let mut profile = Profile::new();
        for i in 0..100u64 {
            // Runs native code a tenth of the time, then the kernel stops it.
            let states: &[(i32, ThreadState)] = if i < 10 {
                &[(1, Running), (2, Idle)]
            } else {
                &[(1, Stopped), (2, Stopped)]
            };
            profile.add(&test_sample(i * 1_000_000, i, states), |_| String::new());
        }
        let found = findings(&test_recording(profile, None));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0]
                .text
                .starts_with("The process was stopped for 0.09 s (90%"),
            "{found:?}"
        );
    }
}
