//! Views over a finished recording: text, JSON and the other formats, as strings.
//! Reports read `Recording`s only; they never touch the target or write files (output.rs does).

pub mod chrometrace;
pub mod collapsed;
pub mod dump;
pub mod findings;
pub mod flamegraph;
pub mod json;
pub mod live;
pub mod metrics;
pub mod profile;
pub mod speedscope;
pub mod text;
pub mod timeline;
pub mod timeline_svg;

use std::path::Path;

use serde::Serialize;

pub use profile::Profile;

use crate::python::stack::StackTable;
use crate::sample::ThreadState;

/// What was recorded from.
#[derive(Debug, Clone, Serialize)]
pub struct TargetInfo {
    pub pid: i32,
    pub python_version: String,
    /// The ELF file holding the interpreter.
    pub binary: String,
    pub command_line: String,
    /// Which layout table (or `_Py_DebugOffsets`) described the interpreter.
    pub layout: String,
    /// Threads waiting for the GIL can be told apart on this interpreter. Where they cannot
    /// (2.7, a stripped 3.6) every wait figure is unavailable: null in JSON, "n/a" in text.
    pub wait_measured: bool,
    /// A free-threaded build (3.13t): the GIL may be off, and then threads are attached
    /// (running Python) or detached instead of holding or waiting (docs/COMPATIBILITY.md).
    pub free_threaded: bool,
}

/// What reports show for a figure that cannot be measured on the target's interpreter.
pub const UNAVAILABLE: &str = "n/a";

/// The sentence reports give where waiting cannot be measured.
pub const WAIT_UNAVAILABLE: &str = "waiting for the GIL cannot be measured on this interpreter \
     (Python 2.7, or a libpython stripped of its GIL variables): wait figures are n/a, and a \
     thread spinning for the GIL counts as running, one asleep on it as idle \
     (docs/COMPATIBILITY.md)";

/// The sentence reports give where a free-threaded build ran without a GIL.
pub const NO_GIL: &str = "no GIL: this free-threaded build ran without one, so threads run \
     Python in parallel; attached = running Python, running = native code, idle = asleep, \
     suspended = stopped by a stop-the-world pause; GIL figures are n/a \
     (docs/COMPATIBILITY.md)";

/// The thread states a report shows as columns: the four GIL states; on a free-threaded
/// build that never had its GIL on, the no-GIL states; on one that had it on, both.
pub fn shown_states(free_threaded: bool, no_gil: bool) -> Vec<ThreadState> {
    match (free_threaded, no_gil) {
        (false, _) => ThreadState::WITH_GIL.to_vec(),
        (true, true) => vec![
            ThreadState::Attached,
            ThreadState::Running,
            ThreadState::Idle,
            ThreadState::Suspended,
        ],
        (true, false) => ThreadState::ALL.to_vec(),
    }
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
}

impl EndReason {
    /// The recorded Python is gone: the process exited or became another program.
    pub fn target_gone(self) -> bool {
        matches!(self, EndReason::TargetExited | EndReason::TargetExeced)
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
    /// The sampler ran at real-time priority, so ticks were on time under load.
    pub realtime: bool,
    /// Share of this machine's CPU time the hypervisor gave to other guests during the
    /// recording (null outside a VM or when unknown). Ticks cannot happen while the sampler's
    /// CPU is stolen, so high steal makes every figure less certain.
    pub host_steal: Option<f64>,
    /// Python stacks dropped because they changed while being read (a thread's sample
    /// then counts in its state, without a stack).
    pub stack_errors: u64,
    /// Where per-thread CPU time came from: "perf" (exact at each tick) or "schedstat"
    /// (advances only at scheduler ticks: coarser classification of runnable threads).
    pub cpu_clock: String,
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

/// The classifier's error against the uprobe reference, as measured (docs/ACCURACY.md), in
/// fraction units: stated next to every report's figures.
pub const CLASSIFIER_ERROR: f64 = 0.02;

/// Above this host steal share the classifier bound was not measured to hold
/// (docs/ACCURACY.md): reports warn.
pub const STEAL_WARNING: f64 = 0.05;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Per-thread table, GIL figures and top locations
    Text,
    /// Everything, as documented in docs/JSON_SCHEMA.md
    Json,
    /// An SVG flamegraph (inferno)
    Flamegraph,
    /// Folded stacks ("a;b;c count"), for flamegraph.pl, inferno or speedscope
    Collapsed,
    /// speedscope's JSON file format, one profile per thread
    Speedscope,
    /// Chrome trace events (Perfetto, chrome://tracing): a span per run of one GIL state
    Chrometrace,
    /// An SVG timeline: a row per thread, coloured by GIL state over time
    Timeline,
}

/// Which stacks a stack format shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum View {
    /// Each thread's stacks under its state at each sample
    #[default]
    Threads,
    /// The GIL holder's stack whenever threads waited, weighted by the number of waiters
    Blame,
}

/// What the stack formats show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    pub view: View,
    /// States shown in the threads view, in this order.
    pub states: Vec<ThreadState>,
}

impl RenderOptions {
    /// The default states for `recordings`: where one is of a free-threaded build, also
    /// attached, where such a build without a GIL runs Python (hold's counterpart).
    pub fn with_states_of(mut self, recordings: &[Recording]) -> RenderOptions {
        let free_threaded = recordings.iter().any(|r| r.target.free_threaded);
        if free_threaded && !self.states.contains(&ThreadState::Attached) {
            self.states.push(ThreadState::Attached);
        }
        self
    }
}

impl Default for RenderOptions {
    fn default() -> RenderOptions {
        RenderOptions {
            view: View::Threads,
            states: vec![ThreadState::Hold, ThreadState::Wait, ThreadState::Running],
        }
    }
}

impl Format {
    /// The format an output path implies, if its extension names one.
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        if name.ends_with(".speedscope.json") {
            return Some(Format::Speedscope);
        }
        if name == "trace.json" || name.ends_with(".trace.json") {
            return Some(Format::Chrometrace);
        }
        if name == "timeline.svg" || name.ends_with(".timeline.svg") {
            return Some(Format::Timeline);
        }
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "txt" => Some(Format::Text),
            "svg" => Some(Format::Flamegraph),
            "folded" | "collapsed" => Some(Format::Collapsed),
            _ => None,
        }
    }

    /// Does this format show stacks (and so need them recorded)?
    pub fn shows_stacks(&self) -> bool {
        matches!(
            self,
            Format::Flamegraph
                | Format::Collapsed
                | Format::Speedscope
                | Format::Chrometrace
                | Format::Timeline
        )
    }

    /// Does this format draw the recording in time order (and so need its timeline kept)?
    pub fn needs_timeline(&self) -> bool {
        matches!(self, Format::Chrometrace | Format::Timeline)
    }

    pub fn render(&self, recording: &Recording, options: &RenderOptions) -> String {
        match self {
            Format::Text => text::render(recording),
            Format::Json => json::render(recording),
            Format::Flamegraph => flamegraph::render(recording, options),
            Format::Collapsed => collapsed::render(recording, options),
            Format::Speedscope => speedscope::render(recording, options),
            Format::Chrometrace => chrometrace::render(recording, options),
            Format::Timeline => timeline_svg::render(recording, options),
        }
    }

    /// Several processes (`--subprocesses`): each process's threads under it.
    pub fn render_processes(&self, recordings: &[Recording], options: &RenderOptions) -> String {
        match self {
            Format::Text => text::render_processes(recordings),
            Format::Json => json::render_processes(recordings),
            Format::Flamegraph => flamegraph::render_processes(recordings, options),
            Format::Collapsed => collapsed::render_processes(recordings, options),
            Format::Speedscope => speedscope::render_processes(recordings, options),
            Format::Chrometrace => chrometrace::render_processes(recordings, options),
            Format::Timeline => timeline_svg::render_processes(recordings, options),
        }
    }
}

/// Several processes' text reports under a line that counts them (`--subprocesses`).
pub fn process_sections(sections: impl ExactSizeIterator<Item = String>) -> String {
    let count = sections.len();
    let mut out = format!(
        "gilscope: {count} Python process{}\n",
        if count == 1 { "" } else { "es" }
    );
    for section in sections {
        out.push('\n');
        out.push_str(&section);
    }
    out
}

/// Text from the target (names, code) with control characters escaped, so that it can
/// never move a terminal's cursor or break a line.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Text from the target made safe inside XML text and attribute values.
pub fn xml_text(text: &str) -> String {
    printable(text)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(Format::from_path(Path::new("a/b.json")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("b.txt")), Some(Format::Text));
        assert_eq!(Format::from_path(Path::new("b")), None);
        assert_eq!(
            Format::from_path(Path::new("x/gil.svg")),
            Some(Format::Flamegraph)
        );
        assert_eq!(
            Format::from_path(Path::new("gil.folded")),
            Some(Format::Collapsed)
        );
        assert_eq!(
            Format::from_path(Path::new("gil.speedscope.json")),
            Some(Format::Speedscope)
        );
        assert_eq!(
            Format::from_path(Path::new("/tmp/trace.json")),
            Some(Format::Chrometrace)
        );
        assert_eq!(
            Format::from_path(Path::new("run-2.trace.json")),
            Some(Format::Chrometrace)
        );
        assert_eq!(
            Format::from_path(Path::new("contrace.json")),
            Some(Format::Json)
        );
        assert_eq!(
            Format::from_path(Path::new("Timeline.svg")),
            Some(Format::Timeline)
        );
    }
}
