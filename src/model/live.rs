//! The live figures of `gilscope top`: each second's profile reduced to counts and kept for a
//! minute, from which moving averages are taken. Data only: formats/live.rs draws them.

use std::collections::{HashMap, VecDeque};

use crate::model::profile::{GilTicks, Profile};
use crate::sample::ThreadState;
use crate::stack::{Frame, StackTable};

/// The moving averages shown, in slices of about a second.
pub const WINDOWS: [usize; 3] = [1, 10, 60];
/// The window that threads are sorted by, idle threads are told by and the top blame is
/// taken from: long enough that rows do not jump every second, short enough to follow a change.
pub const STEADY: usize = 10;
/// A thread idle for at least this share of the steady window is an idle thread.
const IDLE_THREAD: f64 = 0.99;

/// One thread in one slice.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadSlice {
    pub tid: i32,
    pub thread_id: Option<u64>,
    pub name: String,
    pub counts: [u64; ThreadState::COUNT],
}

/// What the waiters of one slice waited on: a holder and its innermost Python frame.
#[derive(Debug, Clone, PartialEq)]
pub struct BlameSlice {
    /// "name (tid)".
    pub holder: String,
    /// Where its stack is summed up ([`StackTable::place`]); None if the stack was not
    /// captured.
    pub frame: Option<Frame>,
    /// For a native `frame`, the innermost Python frame it was called from.
    pub caller: Option<Frame>,
    /// Waiting threads summed over the ticks.
    pub waiter_ticks: u64,
}

/// One GIL of a process with more than one (3.12+ subinterpreters with a GIL of their own),
/// over a slice.
#[derive(Debug, Clone, PartialEq)]
pub struct GilSlice {
    /// Where its struct lies in the target: its identity from slice to slice.
    pub base: u64,
    pub interpreters: Vec<Option<i64>>,
    /// A subinterpreter's own GIL, not the main interpreter's.
    pub own: bool,
    pub ticks: GilTicks,
}

/// About a second of a live recording, reduced to counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    pub start_ns: u64,
    pub end_ns: u64,
    pub gil: GilTicks,
    /// The interpreter's switch counter, (time ns, number), where the slice starts and ends.
    pub switches: Option<((u64, u64), (u64, u64))>,
    pub threads: Vec<ThreadSlice>,
    pub blame: Vec<BlameSlice>,
    /// Share of the machine's CPU time the hypervisor took during the slice.
    pub host_steal: Option<f64>,
    /// Each GIL, the main one first, when the process had more than one; else empty.
    pub gils: Vec<GilSlice>,
    /// Whether `--switch-sites` was in effect (None: not asked for).
    pub switch_sites: Option<super::SwitchSites>,
}

impl Slice {
    /// Reduce a slice's profile; `table` resolves its stacks (None with --gil-only).
    pub fn from_profile(
        profile: &Profile,
        table: Option<&StackTable>,
        host_steal: Option<f64>,
    ) -> Slice {
        let threads = profile
            .threads()
            .into_iter()
            .map(|t| ThreadSlice {
                tid: t.tid,
                thread_id: t.thread_id,
                name: t.name().to_string(),
                counts: t.counts.by_state,
            })
            .collect();
        let mut blame: Vec<BlameSlice> = Vec::new();
        if let Some(table) = table {
            for entry in profile.blame() {
                let place = entry.stack.and_then(|s| table.place(s));
                let frame = place.and_then(|p| table.frame(p.frame)).cloned();
                let caller = place.and_then(|p| table.frame(p.caller?)).cloned();
                let holder = format!("{} ({})", entry.holder.name(), entry.holder.tid);
                match blame
                    .iter_mut()
                    .find(|b| b.holder == holder && b.frame == frame && b.caller == caller)
                {
                    Some(b) => b.waiter_ticks += entry.waiter_ticks,
                    None => blame.push(BlameSlice {
                        holder,
                        frame,
                        caller,
                        waiter_ticks: entry.waiter_ticks,
                    }),
                }
            }
        }
        let gils = if profile.gils().len() > 1 {
            profile
                .gils()
                .iter()
                .map(|g| GilSlice {
                    base: g.base,
                    interpreters: g.interpreters.clone(),
                    own: g.own,
                    ticks: g.ticks,
                })
                .collect()
        } else {
            Vec::new()
        };
        Slice {
            start_ns: profile.start_ns.unwrap_or(profile.end_ns),
            end_ns: profile.end_ns,
            gil: profile.gil_ticks(),
            switches: profile.switch_span(),
            threads,
            blame,
            host_steal,
            gils,
            switch_sites: None,
        }
    }
}

/// The process over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessFigures {
    pub held: f64,
    pub contended: f64,
    pub switches_per_s: Option<f64>,
    pub samples: u64,
    /// A free-threaded build ran without a GIL all through the window: no GIL figures.
    pub no_gil: bool,
    pub free_threaded: bool,
}

/// One GIL of the latest slice over a window (processes with more than one GIL).
#[derive(Debug, Clone, PartialEq)]
pub struct GilFigures {
    /// A subinterpreter's own GIL (false: the main interpreter's).
    pub own: bool,
    /// Ids of the interpreters that use it (None where not readable).
    pub interpreters: Vec<Option<i64>>,
    pub held: f64,
    pub contended: f64,
}

/// A thread alive in the latest slice, with its fractions over each of `WINDOWS`.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadRow {
    pub tid: i32,
    pub name: String,
    /// [window][state], states in `ThreadState::ALL` order.
    pub fractions: [[f64; ThreadState::COUNT]; 3],
}

impl ThreadRow {
    pub fn fraction(&self, window: usize, state: ThreadState) -> f64 {
        self.fractions[window][state.index()]
    }

    /// Idle (almost) all through the steady window.
    pub fn is_idle(&self) -> bool {
        self.fraction(steady_index(), ThreadState::Idle) >= IDLE_THREAD
    }
}

pub fn steady_index() -> usize {
    WINDOWS.iter().position(|&w| w == STEADY).unwrap_or(0)
}

/// The holder code that waiters waited on most over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct TopBlame {
    pub holder: String,
    pub frame: Option<Frame>,
    pub caller: Option<Frame>,
    /// Of all waiting-thread samples in the window.
    pub share: f64,
}

/// The last minute of slices.
#[derive(Debug, Clone, Default)]
pub struct History {
    slices: VecDeque<Slice>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// Add the slice just ended; the oldest beyond a minute is dropped.
    pub fn push(&mut self, mut slice: Slice) {
        // A slice's switches are counted from the previous slice's last reading, so that
        // none is lost between slices.
        if let (Some(previous), Some((_, end))) =
            (self.slices.back().and_then(|s| s.switches), slice.switches)
        {
            if previous.1 .0 <= end.0 && previous.1 .1 <= end.1 {
                slice.switches = Some((previous.1, end));
            }
        }
        self.slices.push_back(slice);
        while self.slices.len() > WINDOWS[WINDOWS.len() - 1] {
            self.slices.pop_front();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// The hypervisor's share of the CPU in the latest slice, where known.
    pub fn latest_host_steal(&self) -> Option<f64> {
        self.slices.back().and_then(|s| s.host_steal)
    }

    /// Whether `--switch-sites` was in effect in the latest slice (None: not asked for).
    pub fn latest_switch_sites(&self) -> Option<&super::SwitchSites> {
        self.slices.back().and_then(|s| s.switch_sites.as_ref())
    }

    /// Slices in the window of the last `n` (fewer at the start).
    pub fn covered(&self, n: usize) -> usize {
        n.min(self.slices.len())
    }

    pub fn window(&self, n: usize) -> impl Iterator<Item = &Slice> + '_ {
        self.slices.iter().skip(self.slices.len() - self.covered(n))
    }

    pub fn process(&self, n: usize) -> ProcessFigures {
        let mut gil = GilTicks::default();
        for slice in self.window(n) {
            gil.ticks += slice.gil.ticks;
            gil.held += slice.gil.held;
            gil.contended += slice.gil.contended;
            gil.off += slice.gil.off;
            gil.on += slice.gil.on;
        }
        let first = self.window(n).next().and_then(|s| s.switches);
        let last = self.window(n).last().and_then(|s| s.switches);
        let switches_per_s = match (first, last) {
            (Some(((t0, n0), _)), Some((_, (t1, n1)))) if t1 > t0 && n1 >= n0 => {
                Some((n1 - n0) as f64 / ((t1 - t0) as f64 / 1e9))
            }
            _ => None,
        };
        ProcessFigures {
            held: gil.share(gil.held),
            contended: gil.share(gil.contended),
            switches_per_s,
            // Ticks without a GIL (free-threaded builds) are samples too.
            samples: gil.ticks + gil.off,
            no_gil: gil.no_gil(),
            free_threaded: gil.free_threaded(),
        }
    }

    /// Each GIL of the latest slice, over the last `n` slices (those that saw it); empty
    /// where the process has one GIL.
    pub fn gils(&self, n: usize) -> Vec<GilFigures> {
        let Some(latest) = self.slices.back() else {
            return Vec::new();
        };
        latest
            .gils
            .iter()
            .map(|gil| {
                let mut ticks = GilTicks::default();
                for slice in self.window(n) {
                    for seen in slice.gils.iter().filter(|g| g.base == gil.base) {
                        ticks.ticks += seen.ticks.ticks;
                        ticks.held += seen.ticks.held;
                        ticks.contended += seen.ticks.contended;
                    }
                }
                GilFigures {
                    own: gil.own,
                    interpreters: gil.interpreters.clone(),
                    held: ticks.share(ticks.held),
                    contended: ticks.share(ticks.contended),
                }
            })
            .collect()
    }

    /// The threads of the latest slice, with their fractions over each window. A thread is
    /// followed by tid while its Python thread id stays the same (a reused tid is a new row).
    pub fn threads(&self) -> Vec<ThreadRow> {
        let Some(latest) = self.slices.back() else {
            return Vec::new();
        };
        latest
            .threads
            .iter()
            .map(|current| {
                let mut fractions = [[0.0; ThreadState::COUNT]; 3];
                for (w, &n) in WINDOWS.iter().enumerate() {
                    let mut counts = [0u64; ThreadState::COUNT];
                    for slice in self.window(n) {
                        let same = slice.threads.iter().find(|t| {
                            t.tid == current.tid
                                && (t.thread_id.is_none()
                                    || current.thread_id.is_none()
                                    || t.thread_id == current.thread_id)
                        });
                        if let Some(t) = same {
                            for (total, c) in counts.iter_mut().zip(t.counts) {
                                *total += c;
                            }
                        }
                    }
                    let total: u64 = counts.iter().sum();
                    if total > 0 {
                        fractions[w] = counts.map(|c| c as f64 / total as f64);
                    }
                }
                ThreadRow {
                    tid: current.tid,
                    name: current.name.clone(),
                    fractions,
                }
            })
            .collect()
    }

    /// The holder code waited on most over the last `n` slices (None if nobody waited, or
    /// no stacks were read).
    pub fn top_blame(&self, n: usize) -> Option<TopBlame> {
        let mut by_code: HashMap<(&str, Option<&Frame>, Option<&Frame>), u64> = HashMap::new();
        let mut waiters = 0u64;
        for slice in self.window(n) {
            waiters += slice.gil.waiters;
            for b in &slice.blame {
                *by_code
                    .entry((b.holder.as_str(), b.frame.as_ref(), b.caller.as_ref()))
                    .or_default() += b.waiter_ticks;
            }
        }
        let ((holder, frame, caller), ticks) = by_code
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
        (waiters > 0).then(|| TopBlame {
            holder: holder.to_string(),
            frame: frame.cloned(),
            caller: caller.cloned(),
            share: ticks as f64 / waiters as f64,
        })
    }
}
