//! Formats: every way a recording, a snapshot or the live figures are shown (text, JSON,
//! flamegraphs, folded stacks, speedscope, traces, timelines, metrics, the live view). They
//! read the model only; they never touch the target and never write files themselves.

pub(crate) mod chrometrace;
pub mod collapsed;
pub(crate) mod dump;
pub(crate) mod findings;
pub(crate) mod flamegraph;
pub(crate) mod hangs;
pub(crate) mod html;
pub(crate) mod json;
pub(crate) mod labels;
pub(crate) mod live;
pub(crate) mod metrics;
pub(crate) mod palette;
pub(crate) mod pprof;
pub(crate) mod speedscope;
pub(crate) mod text;
pub(crate) mod timeline_svg;
pub(crate) mod values;

use std::path::Path;

use crate::model::Recording;
use crate::sample::ThreadState;

/// A process or thread id as reports show it: ours, and the one it has in its own PID
/// namespace (a container's) where that differs: "10423 (2 in its namespace)".
pub fn id_with_namespace(id: i32, ns_id: Option<i32>) -> String {
    match ns_id {
        Some(own) if own != id => format!("{id} ({own} in its namespace)"),
        _ => id.to_string(),
    }
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
/// build that never had its GIL on, the no-GIL states; on one that had it on, both. Stopped
/// threads (SIGSTOP, a debugger) are a column of their own where there were any
/// ([`with_stopped`]).
pub fn shown_states(free_threaded: bool, no_gil: bool) -> Vec<ThreadState> {
    match (free_threaded, no_gil) {
        (false, _) => ThreadState::WITH_GIL.to_vec(),
        (true, true) => vec![
            ThreadState::Attached,
            ThreadState::Running,
            ThreadState::Idle,
            ThreadState::Suspended,
        ],
        (true, false) => ThreadState::ALL
            .into_iter()
            .filter(|&s| s != ThreadState::Stopped)
            .collect(),
    }
}

/// `states` and, if some thread of `profile` was ever stopped, the stopped column.
pub fn with_stopped(
    mut states: Vec<ThreadState>,
    profile: &crate::model::profile::Profile,
) -> Vec<ThreadState> {
    let any = profile
        .threads()
        .iter()
        .any(|t| t.counts.get(ThreadState::Stopped) > 0);
    if any {
        states.push(ThreadState::Stopped);
    }
    states
}

/// The sentence reports give where the kernel stopped the whole process for a while.
pub fn stopped_sentence(profile: &crate::model::profile::Profile) -> Option<String> {
    let share = profile.stopped_share();
    (share > 0.0).then(|| {
        format!(
            "the process was stopped (SIGSTOP, job control or a debugger) for {:.2} s, {:.1}% \
             of the recording: nothing ran then, and the GIL figures cover the rest",
            profile.stopped_s(),
            share * 100.0
        )
    })
}

/// A report format: what every format module offers (`record`'s `--format`). Reports are
/// bytes: most are text, pprof's is a gzip-compressed protobuf.
pub trait Report {
    /// The report of one process's recording.
    fn one(&self, recording: &Recording, options: &RenderOptions) -> Vec<u8>;
    /// The report of several processes (`--subprocesses`), each process's threads under it.
    fn several(&self, recordings: &[Recording], options: &RenderOptions) -> Vec<u8>;
}

/// The report formats of `record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Per-thread table, GIL figures and top locations.
    Text,
    /// Everything, as documented in docs/JSON_SCHEMA.md.
    Json,
    /// An SVG flamegraph (inferno).
    Flamegraph,
    /// Folded stacks ("a;b;c count").
    Collapsed,
    /// speedscope's JSON file format, one profile per thread.
    Speedscope,
    /// Chrome trace events: a span per run of one GIL state.
    Chrometrace,
    /// An SVG timeline: a row per thread, coloured by GIL state over time.
    Timeline,
    /// One self-contained HTML page: summary, threads, latency, timeline, flamegraphs.
    Html,
    /// pprof's gzip-compressed protobuf profile, a sample type per state.
    Pprof,
}

/// Which stacks a stack format shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum View {
    /// Each thread's stacks under its state at each sample.
    #[default]
    Threads,
    /// The GIL holder's stack whenever threads waited, weighted by the number of waiters.
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
        if name.ends_with(".pb.gz") || name.ends_with(".pprof.gz") {
            return Some(Format::Pprof);
        }
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "json" => Some(Format::Json),
            "txt" => Some(Format::Text),
            "svg" => Some(Format::Flamegraph),
            "folded" | "collapsed" => Some(Format::Collapsed),
            "html" | "htm" => Some(Format::Html),
            "pprof" => Some(Format::Pprof),
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
                | Format::Html
                | Format::Pprof
        )
    }

    /// Does this format show the stacks `--state` and `--idle` choose? pprof has a sample
    /// type for every state, whatever was chosen.
    pub fn chooses_states(&self) -> bool {
        self.shows_stacks() && *self != Format::Pprof
    }

    /// Does this format show the one view `--view` chooses? The HTML report has both.
    pub fn chooses_view(&self) -> bool {
        self.chooses_states() && *self != Format::Html
    }

    /// Does this format draw the recording in time order (and so need its timeline kept)?
    pub fn needs_timeline(&self) -> bool {
        matches!(self, Format::Chrometrace | Format::Timeline | Format::Html)
    }

    /// The file names that ask for a format, as help and errors list them.
    pub const EXTENSIONS: &'static [&'static str] = &[
        ".txt",
        ".json",
        ".svg",
        ".folded",
        ".collapsed",
        ".speedscope.json",
        "trace.json",
        "timeline.svg",
        ".html",
        ".pb.gz",
    ];

    /// The format's name, as `--format` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Flamegraph => "flamegraph",
            Format::Collapsed => "collapsed",
            Format::Speedscope => "speedscope",
            Format::Chrometrace => "chrometrace",
            Format::Timeline => "timeline",
            Format::Html => "html",
            Format::Pprof => "pprof",
        }
    }

    /// The module that writes this format.
    pub fn report(&self) -> &'static dyn Report {
        match self {
            Format::Text => &text::Text,
            Format::Json => &json::Json,
            Format::Flamegraph => &flamegraph::Flamegraph,
            Format::Collapsed => &collapsed::Collapsed,
            Format::Speedscope => &speedscope::Speedscope,
            Format::Chrometrace => &chrometrace::Chrometrace,
            Format::Timeline => &timeline_svg::TimelineSvg,
            Format::Html => &html::Html,
            Format::Pprof => &pprof::Pprof,
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
/// never move a terminal's cursor or break a line; and with the characters that reorder or
/// break what follows them escaped too: bidirectional overrides and isolates (U+202E turns
/// the rest of a line around, so that a name can pass for another) and the Unicode line and
/// paragraph separators (U+2028, U+2029), which some terminals and editors break lines at.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else if reorders_or_breaks(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Bidirectional formatting characters and the line and paragraph separators.
fn reorders_or_breaks(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
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
    fn bidirectional_overrides_and_line_separators_are_escaped() {
        assert_eq!(
            printable("evil\u{202e}fdp.exe\u{2028}next\u{2029}\u{2066}x\u{2069}"),
            "evil\\u{202e}fdp.exe\\u{2028}next\\u{2029}\\u{2066}x\\u{2069}"
        );
        assert_eq!(printable("tab\tesc\u{1b}"), "tab\\tesc\\u{1b}");
        // Letters of right-to-left scripts, and joiners within emoji, are text: kept.
        assert_eq!(printable("שלום 👩\u{200d}💻"), "שלום 👩\u{200d}💻");
    }

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
        assert_eq!(
            Format::from_path(Path::new("report.html")),
            Some(Format::Html)
        );
        assert_eq!(
            Format::from_path(Path::new("/tmp/profile.pb.gz")),
            Some(Format::Pprof)
        );
        assert_eq!(Format::from_path(Path::new("x.pprof")), Some(Format::Pprof));
        assert_eq!(Format::from_path(Path::new("x.gz")), None);
    }
}
