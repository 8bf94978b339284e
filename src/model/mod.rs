//! What a recording is, in data: the aggregated profile, the timeline, the target and the
//! sampler's account of itself, dump snapshots and the live view's figures. Formats draw
//! these; nothing here reads the target or writes a byte of output.

pub mod live;
pub mod profile;
pub mod snapshot;
pub mod timeline;

use std::fmt;

use serde::{Serialize, Serializer};

pub use profile::Profile;

use crate::python::version::Version;
use crate::stack::StackTable;

/// Serialise a value as the text it displays as.
fn as_text<T: fmt::Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// What described the interpreter's structures to gilscope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayoutInfo {
    /// The layout table's family ("3.9-3.10"), or None where the interpreter's own
    /// `_Py_DebugOffsets` did.
    pub table: Option<&'static str>,
    /// What was learned beyond the table: fall-backs taken, fields found by scanning.
    pub notes: Vec<String>,
}

impl fmt::Display for LayoutInfo {
    /// "table 3.9-3.10" or "_Py_DebugOffsets", then "; note" for each note.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.table {
            Some(family) => write!(f, "table {family}")?,
            None => f.write_str("_Py_DebugOffsets")?,
        }
        self.notes.iter().try_for_each(|note| write!(f, "; {note}"))
    }
}

/// Where each thread's CPU time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuClock {
    /// perf task clocks: exact at each tick.
    Perf,
    /// schedstat, which moves only at scheduler ticks (coarser classification of runnable
    /// threads), because `perf_event_open` failed with this errno.
    Schedstat { perf_errno: i32 },
}

impl fmt::Display for CpuClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuClock::Perf => f.write_str("perf"),
            CpuClock::Schedstat { perf_errno } => write!(
                f,
                "schedstat (perf_event_open: {})",
                std::io::Error::from_raw_os_error(*perf_errno)
            ),
        }
    }
}

/// How native frames were taken (`--native`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NativeCapture {
    /// Sleeping threads from their system call, runnable ones from perf samples.
    Perf,
    /// Sleeping threads only: `perf_event_open` failed with this errno, so runnable threads
    /// have their Python stacks alone.
    SleepersOnly { perf_errno: i32 },
}

impl fmt::Display for NativeCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NativeCapture::Perf => f.write_str("perf"),
            NativeCapture::SleepersOnly { perf_errno } => write!(
                f,
                "sleeping threads only (perf_event_open: {})",
                std::io::Error::from_raw_os_error(*perf_errno)
            ),
        }
    }
}

/// Whether `--switch-sites` was in effect (docs/ACCURACY.md, point 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchSites {
    /// A perf sample at each context switch of every followed thread.
    Perf,
    /// Asked for and not in effect, with the reason: runnable threads off their CPU were
    /// classified as without the option.
    Unavailable(String),
}

impl fmt::Display for SwitchSites {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchSites::Perf => f.write_str("perf"),
            SwitchSites::Unavailable(why) => write!(f, "unavailable ({why})"),
        }
    }
}

fn as_optional_text<T: fmt::Display, S: Serializer>(
    value: &Option<T>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

/// What was recorded from.
#[derive(Debug, Clone, Serialize)]
pub struct TargetInfo {
    pub pid: i32,
    /// Its pid in its own PID namespace (a container's), where that differs from `pid`;
    /// then its threads have ids of their own there too (`ns_tid`).
    pub ns_pid: Option<i32>,
    #[serde(serialize_with = "as_text")]
    pub python_version: Version,
    /// The ELF file holding the interpreter.
    pub binary: String,
    pub command_line: String,
    /// Which layout table (or `_Py_DebugOffsets`) described the interpreter.
    #[serde(serialize_with = "as_text")]
    pub layout: LayoutInfo,
    /// Threads waiting for the GIL can be told apart on this interpreter. Where they cannot
    /// (2.7, a stripped 3.6) every wait figure is unavailable: null in JSON, "n/a" in text.
    pub wait_measured: bool,
    /// A free-threaded build (3.13t): the GIL may be off, and then threads are attached
    /// (running Python) or detached instead of holding or waiting (docs/COMPATIBILITY.md).
    pub free_threaded: bool,
    /// The main interpreter's `sys.path`, read once: the directories modules were imported
    /// from, which short file names are relative to. Empty where it could not be read.
    pub sys_path: Vec<String>,
}

/// Why the recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// --duration elapsed.
    Duration,
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// The target exited.
    TargetExited,
    /// The target exec'd another program: the Python that was recorded is gone, though the
    /// process lives on.
    TargetExeced,
    /// The target lives but could no longer be read: every tick failed for a long run (a
    /// corrupt thread list), or gilscope ran out of open files. `sampler.unreadable` says why.
    TargetUnreadable,
}

impl EndReason {
    /// Sampling the process is over: it exited, became another program, or could no
    /// longer be read.
    pub fn target_gone(self) -> bool {
        matches!(
            self,
            EndReason::TargetExited | EndReason::TargetExeced | EndReason::TargetUnreadable
        )
    }
}

/// How the sampler did.
#[derive(Debug, Clone, Serialize)]
pub struct SamplerStats {
    pub rate_hz: f64,
    /// Ticks that could not be taken (torn reads of a moving target).
    pub errors: u64,
    /// Ticks that started more than one period late.
    pub late_ticks: u64,
    pub max_lag_s: f64,
    pub mean_lag_s: f64,
    pub ended: EndReason,
    /// Why the target could not be read any more (`ended` is `target_unreadable`).
    pub unreadable: Option<String>,
    /// The sampler ran at real-time priority, so ticks were on time under load.
    pub realtime: bool,
    /// Methods the sampler had to do without for want of a privilege (real-time priority,
    /// perf task clocks), what stood in, and what it costs; empty with every privilege.
    pub degraded: Vec<crate::sample::privileges::Degradation>,
    /// Share of this machine's CPU time the hypervisor gave to other guests during the
    /// recording (null outside a VM or when unknown). Ticks cannot happen while the sampler's
    /// CPU is stolen, so high steal makes every figure less certain.
    pub host_steal: Option<f64>,
    /// Python stacks dropped because they changed while being read (a thread's sample
    /// then counts in its state, without a stack).
    pub stack_errors: u64,
    /// Samples whose stack did not fit, wholly or in part, in the stack table's memory
    /// budget (src/stack.rs): shown as the marker frame instead of what was there.
    pub stacks_over_budget: u64,
    /// Where per-thread CPU time came from.
    #[serde(serialize_with = "as_text")]
    pub cpu_clock: CpuClock,
    /// Native frames were merged into the stacks (`--native`), and how they were taken.
    #[serde(serialize_with = "as_optional_text")]
    pub native: Option<NativeCapture>,
    /// `--switch-sites` was asked for (None: it was not), and whether it was in effect.
    #[serde(serialize_with = "as_optional_text")]
    pub switch_sites: Option<SwitchSites>,
    /// What the ticks cost, phase by phase (`--stats`).
    pub stats: crate::sample::stats::TickStats,
}

/// A finished recording: what every report format renders.
#[derive(Debug, Clone)]
pub struct Recording {
    pub target: TargetInfo,
    pub sampler: SamplerStats,
    pub profile: Profile,
    /// The stacks the profile's samples refer to (None: recorded with --gil-only, or the
    /// interpreter's frames are not known).
    pub stacks: Option<StackTable>,
    /// The sampler's health over the whole recording (all slices).
    pub health: crate::sample::Health,
}

/// A recording of `profile` for tests of the formats: a 3.12 target at 1 kHz, ended by its
/// duration, without errors.
#[cfg(test)]
pub(crate) fn test_recording(profile: Profile, stacks: Option<StackTable>) -> Recording {
    Recording {
        target: TargetInfo {
            pid: 42,
            ns_pid: None,
            python_version: crate::python::version::Version::new(3, 12, 1),
            binary: "python3.12".into(),
            command_line: "python3.12 app.py".into(),
            layout: LayoutInfo::default(),
            wait_measured: true,
            free_threaded: false,
            sys_path: Vec::new(),
        },
        sampler: SamplerStats {
            rate_hz: 1000.0,
            errors: 0,
            late_ticks: 0,
            max_lag_s: 0.0,
            mean_lag_s: 0.0,
            ended: EndReason::Duration,
            unreadable: None,
            realtime: true,
            degraded: Vec::new(),
            host_steal: None,
            stack_errors: 0,
            stacks_over_budget: 0,
            cpu_clock: CpuClock::Perf,
            native: None,
            switch_sites: None,
            stats: Default::default(),
        },
        profile,
        stacks,
        health: Default::default(),
    }
}

/// The classifier's error against the uprobe reference, as measured (docs/ACCURACY.md), in
/// fraction units: stated next to every report's figures.
pub const CLASSIFIER_ERROR: f64 = 0.02;

/// Above this host steal share the classifier bound was not measured to hold
/// (docs/ACCURACY.md): reports warn.
pub const STEAL_WARNING: f64 = 0.05;
