//! The recording in time order: each thread's runs of one state, and the number of GIL
//! waiters, gathered sample by sample when a timeline format is asked for. Data only.

use std::collections::HashMap;

use crate::sample::ThreadState;
use crate::stack::StackId;

/// Spans kept at most (about 40 bytes each): a long recording keeps its first spans and
/// counts the rest, rather than growing without bound.
pub const MAX_SPANS: usize = 2_000_000;
/// Changes of the waiter count kept at most.
pub const MAX_WAITER_CHANGES: usize = 2_000_000;

/// A run of samples in which one thread was in one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The thread's row in the profile.
    pub row: usize,
    pub state: ThreadState,
    /// Halfway between the last sample before the run and its first (the first sample
    /// itself for a thread's first run).
    pub start_ns: u64,
    /// Halfway between the run's last sample and the next (its last sample at the end).
    pub end_ns: u64,
    /// The thread's stack at the run's first sample.
    pub stack: Option<StackId>,
    pub samples: u32,
}

/// The spans of every thread, in the order they ended.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    closed: Vec<Span>,
    /// Each row's run still going: the span so far, and the time of its last sample.
    open: HashMap<usize, (Span, u64)>,
    /// (time ns, waiting threads) at each change.
    waiters: Vec<(u64, u32)>,
    /// Spans and waiter changes not kept (over the limits).
    pub dropped: u64,
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline::default()
    }

    /// Thread `row` was in `state` at the sample at `time_ns`.
    pub fn add(&mut self, row: usize, state: ThreadState, stack: Option<StackId>, time_ns: u64) {
        let fresh = |start_ns| Span {
            row,
            state,
            start_ns,
            end_ns: time_ns,
            stack,
            samples: 1,
        };
        match self.open.get_mut(&row) {
            Some((span, last_ns)) if span.state == state => {
                span.samples = span.samples.saturating_add(1);
                span.end_ns = time_ns;
                *last_ns = time_ns;
            }
            Some((span, last_ns)) => {
                let boundary = *last_ns + time_ns.saturating_sub(*last_ns) / 2;
                let mut done = *span;
                done.end_ns = boundary;
                *span = fresh(boundary);
                *last_ns = time_ns;
                self.close(done);
            }
            None => {
                self.open.insert(row, (fresh(time_ns), time_ns));
            }
        }
    }

    /// `waiters` threads waited at the sample at `time_ns`.
    pub fn add_waiters(&mut self, waiters: usize, time_ns: u64) {
        let waiters = waiters.min(u32::MAX as usize) as u32;
        if self.waiters.last().is_some_and(|&(_, w)| w == waiters) {
            return;
        }
        if self.waiters.len() >= MAX_WAITER_CHANGES {
            self.dropped += 1;
            return;
        }
        self.waiters.push((time_ns, waiters));
    }

    fn close(&mut self, span: Span) {
        if self.closed.len() >= MAX_SPANS {
            self.dropped += 1;
        } else {
            self.closed.push(span);
        }
    }

    /// Every span, the runs still going ending at their last sample; sorted by thread row,
    /// then time.
    pub fn spans(&self) -> Vec<Span> {
        let mut spans: Vec<Span> = self.closed.clone();
        spans.extend(self.open.values().map(|(span, _)| *span));
        spans.sort_by_key(|s| (s.row, s.start_ns));
        spans
    }

    /// (time ns, waiting threads) at each change of the count.
    pub fn waiters(&self) -> &[(u64, u32)] {
        &self.waiters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ThreadState::*;

    #[test]
    fn runs_split_halfway_between_samples() {
        let mut timeline = Timeline::new();
        for (t, state) in [(0, Hold), (10, Hold), (20, Wait), (30, Wait), (40, Hold)] {
            timeline.add(0, state, Some(t as u32), t);
        }
        let spans = timeline.spans();
        let runs: Vec<(ThreadState, u64, u64, u32, Option<u32>)> = spans
            .iter()
            .map(|s| (s.state, s.start_ns, s.end_ns, s.samples, s.stack))
            .collect();
        assert_eq!(
            runs,
            vec![
                (Hold, 0, 15, 2, Some(0)),
                (Wait, 15, 35, 2, Some(20)),
                (Hold, 35, 40, 1, Some(40)),
            ]
        );
    }

    #[test]
    fn threads_are_kept_apart_and_sorted() {
        let mut timeline = Timeline::new();
        timeline.add(1, Wait, None, 0);
        timeline.add(0, Hold, None, 0);
        timeline.add(1, Hold, None, 10);
        timeline.add(0, Wait, None, 10);
        let rows: Vec<(usize, ThreadState)> =
            timeline.spans().iter().map(|s| (s.row, s.state)).collect();
        assert_eq!(rows, vec![(0, Hold), (0, Wait), (1, Wait), (1, Hold)]);
    }

    #[test]
    fn waiter_counts_are_kept_at_changes_only() {
        let mut timeline = Timeline::new();
        for (t, w) in [(0, 1), (1, 1), (2, 2), (3, 2), (4, 0)] {
            timeline.add_waiters(w, t);
        }
        assert_eq!(timeline.waiters(), &[(0, 1), (2, 2), (4, 0)]);
    }
}
