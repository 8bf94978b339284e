//! The JSON report: schema `gilscope.report/6` (and `gilscope.processes/5` around several),
//! documented in docs/JSON_SCHEMA.md.
//! Field names and meanings are a contract: add fields, never change or remove them.

use serde::Serialize;

use crate::model::profile::{Latency, ThreadProfile};
use crate::model::Recording;
use crate::sample::ThreadState;
use crate::stack::{FrameId, FrameKind, StackTable};

pub const SCHEMA: &str = "gilscope.report/6";
pub const PROCESSES_SCHEMA: &str = "gilscope.processes/5";

/// Locations listed per thread and state, and blame stacks listed for the process.
pub const TOP_LOCATIONS: usize = 5;
pub const TOP_BLAME: usize = 10;

#[derive(Serialize)]
struct Report<'a> {
    schema: &'static str,
    target: &'a crate::model::TargetInfo,
    duration_s: f64,
    rate_hz: f64,
    samples: u64,
    /// Wall time the kernel had the whole process stopped (SIGSTOP, a debugger).
    stopped_s: f64,
    window: Window,
    gil: Gil,
    gils: Vec<GilEntry>,
    threads: Vec<Thread>,
    /// None where waiting is not measured: there is nothing to blame.
    blame: Option<Blame>,
    sampler: &'a crate::model::SamplerStats,
    error: ErrorBounds,
    /// What the figures call for, in the words of the text report's findings.
    findings: Vec<String>,
}

#[derive(Serialize)]
struct Frame {
    /// "python", "native" (`--native`) or "marker".
    kind: &'static str,
    function: String,
    /// "" where not known (a native frame without debug information).
    file: String,
    line: u32,
    /// The shared object or executable of a native frame (null for others).
    module: Option<String>,
}

#[derive(Serialize)]
struct Location {
    #[serde(flatten)]
    frame: Frame,
    /// For a native frame, the innermost Python frame it was called from (else null).
    called_from: Option<Frame>,
    fraction: f64,
    samples: u64,
}

#[derive(Serialize)]
struct Blame {
    stacks_recorded: bool,
    waiter_samples: u64,
    unheld: f64,
    top: Vec<BlameStack>,
}

#[derive(Serialize)]
struct BlameStack {
    holder_native_id: i32,
    holder_name: String,
    share: f64,
    waiter_samples: u64,
    captured: bool,
    stack: Vec<Frame>,
}

#[derive(Serialize)]
struct Window {
    start_monotonic_ns: Option<u64>,
    end_monotonic_ns: u64,
}

#[derive(Serialize)]
struct Gil {
    /// "gil", "no_gil" or "switching" (free-threaded builds whose GIL went on or off).
    mode: &'static str,
    enabled: Option<f64>,
    held: Option<f64>,
    contended: Option<f64>,
    mean_waiting: Option<f64>,
    switches_per_s: Option<f64>,
    interval_s: Option<f64>,
    held_margin: Option<f64>,
    contended_margin: Option<f64>,
    /// Every thread's waits together (null: waits not measured).
    latency: Option<LatencyEntry>,
}

/// The distribution of waits for the GIL (episodes), in seconds.
#[derive(Serialize)]
struct LatencyEntry {
    waits: u64,
    mean_s: Option<f64>,
    p50_s: Option<f64>,
    p90_s: Option<f64>,
    p99_s: Option<f64>,
    max_s: Option<f64>,
    /// The buckets holding waits, shortest first.
    buckets: Vec<LatencyBucket>,
}

#[derive(Serialize)]
struct LatencyBucket {
    start_s: f64,
    end_s: f64,
    waits: u64,
}

fn latency_entry(latency: &Latency) -> LatencyEntry {
    let some = latency.episodes > 0;
    let s = |v: Option<f64>| v.map(|v| round(v, 7));
    LatencyEntry {
        waits: latency.episodes,
        mean_s: s(latency.mean_s()),
        p50_s: s(latency.quantile(0.5)),
        p90_s: s(latency.quantile(0.9)),
        p99_s: s(latency.quantile(0.99)),
        max_s: s(some.then(|| latency.max_ns as f64 / 1e9)),
        buckets: latency
            .buckets()
            .map(|(i, n)| LatencyBucket {
                start_s: round(Latency::bucket_start_s(i), 9),
                end_s: round(Latency::bucket_start_s(i + 1), 9),
                waits: n,
            })
            .collect(),
    }
}

/// One GIL and the interpreters and threads on it.
#[derive(Serialize)]
struct GilEntry {
    interpreters: Vec<Option<i64>>,
    own: bool,
    held: Option<f64>,
    contended: Option<f64>,
    mean_waiting: Option<f64>,
    switches_per_s: Option<f64>,
    threads: Vec<i32>,
}

#[derive(Serialize)]
struct Thread {
    native_id: i32,
    ns_tid: Option<i32>,
    thread_id: Option<u64>,
    name: String,
    os_name: String,
    python: bool,
    interpreter: Option<i64>,
    gil: Option<usize>,
    hold: Option<f64>,
    wait: Option<f64>,
    running: f64,
    idle: f64,
    attached: Option<f64>,
    suspended: Option<f64>,
    stopped: f64,
    samples: u64,
    margin: Option<f64>,
    top_hold: Vec<Location>,
    top_wait: Option<Vec<Location>>,
    top_running: Vec<Location>,
    top_idle: Vec<Location>,
    top_attached: Option<Vec<Location>>,
    /// Its waits for the GIL (null: waits not measured).
    gil_latency: Option<LatencyEntry>,
    /// Times it woke from something else and then had to wait for the GIL (None where
    /// waiting is not measured).
    wakeups: Option<u64>,
    /// Its mean wait for the GIL after such a wake-up, in seconds (None without one).
    wait_after_wakeup_s: Option<f64>,
}

#[derive(Serialize)]
struct ErrorBounds {
    classifier: f64,
    confidence: f64,
}

pub fn render(recording: &Recording) -> String {
    finish(serde_json::to_string_pretty(&report(recording)))
}

/// Several processes (`--subprocesses`): schema `gilscope.processes/5`, whose `processes`
/// holds a `gilscope.report/6` document per process, in the order they were found.
pub fn render_processes(recordings: &[Recording]) -> String {
    let processes: Vec<serde_json::Value> = recordings
        .iter()
        .filter_map(|r| serde_json::to_value(report(r)).ok())
        .collect();
    finish(serde_json::to_string_pretty(&serde_json::json!({
        "schema": PROCESSES_SCHEMA,
        "processes": processes,
    })))
}

fn finish(document: serde_json::Result<String>) -> String {
    let mut text = document.unwrap_or_else(|e| {
        format!("{{\"schema\": \"{SCHEMA}\", \"error\": \"cannot serialise: {e}\"}}")
    });
    text.push('\n');
    text
}

fn report(recording: &Recording) -> Report<'_> {
    let profile = &recording.profile;
    // Where waits cannot be seen, every figure about them is null, never a 0 that would
    // read as "nobody waited".
    // Without a GIL at any tick, nothing held or waited: GIL figures are null, as are
    // waits on interpreters where they cannot be seen.
    let ticks = profile.gil_ticks();
    let no_gil = ticks.no_gil();
    let measured = recording.target.wait_measured && !no_gil;
    let wait_figure = |value: f64| measured.then_some(value);
    let gil_figure = |value: f64| (!no_gil).then_some(value);
    let free_threaded = recording.target.free_threaded;
    let ft_figure = |value: f64| free_threaded.then_some(value);
    Report {
        schema: SCHEMA,
        target: &recording.target,
        duration_s: round(profile.duration_s(), 6),
        rate_hz: recording.sampler.rate_hz,
        samples: profile.samples,
        stopped_s: round(profile.stopped_s(), 6),
        window: Window {
            start_monotonic_ns: profile.start_ns,
            end_monotonic_ns: profile.end_ns,
        },
        gil: Gil {
            mode: match (no_gil, ticks.off > 0) {
                (true, _) => "no_gil",
                (false, true) => "switching",
                (false, false) => "gil",
            },
            enabled: ticks.enabled_share().map(|e| round(e, 4)),
            held: gil_figure(round(profile.held(), 4)),
            contended: wait_figure(round(profile.contended(), 4)),
            mean_waiting: wait_figure(round(profile.mean_waiting(), 4)),
            switches_per_s: profile
                .switches_per_s()
                .filter(|_| !no_gil)
                .map(|s| round(s, 2)),
            interval_s: (profile.interval_us > 0).then(|| profile.interval_us as f64 / 1e6),
            held_margin: profile
                .held_margin()
                .filter(|_| !no_gil)
                .map(|m| round(m, 4)),
            contended_margin: profile
                .contended_margin()
                .filter(|_| measured)
                .map(|m| round(m, 4)),
            latency: measured.then(|| latency_entry(&profile.latency())),
        },
        gils: gils(recording),
        threads: profile
            .threads()
            .into_iter()
            .map(|t| {
                let [hold, wait, running, idle, attached, suspended, stopped] =
                    t.counts.fractions_summing_to_one();
                let (interpreter, gil) = thread_gil(profile, t);
                Thread {
                    native_id: t.tid,
                    ns_tid: t.ns_tid,
                    thread_id: t.thread_id,
                    name: t.name().to_string(),
                    os_name: t.os_name.clone(),
                    python: t.thread_id.is_some(),
                    interpreter,
                    gil,
                    hold: gil_figure(hold),
                    wait: wait_figure(wait),
                    running,
                    idle,
                    attached: ft_figure(attached),
                    suspended: ft_figure(suspended),
                    stopped,
                    samples: t.counts.total(),
                    margin: t.worst_margin().map(|m| round(m, 4)),
                    top_hold: locations(recording, t, ThreadState::Hold),
                    top_wait: measured.then(|| locations(recording, t, ThreadState::Wait)),
                    top_running: locations(recording, t, ThreadState::Running),
                    top_idle: locations(recording, t, ThreadState::Idle),
                    top_attached: free_threaded
                        .then(|| locations(recording, t, ThreadState::Attached)),
                    gil_latency: measured.then(|| latency_entry(&t.latency)),
                    wakeups: measured.then_some(t.wakeups),
                    wait_after_wakeup_s: (measured && t.wakeups > 0).then(|| {
                        round(
                            t.wakeup_wait_ticks as f64 / t.wakeups as f64 * profile.tick_s(),
                            6,
                        )
                    }),
                }
            })
            .collect(),
        blame: measured.then(|| blame(recording)),
        sampler: &recording.sampler,
        error: ErrorBounds {
            classifier: crate::model::CLASSIFIER_ERROR,
            confidence: 0.95,
        },
        findings: super::findings::findings(recording)
            .into_iter()
            .map(|f| f.text)
            .collect(),
    }
}

/// A thread's interpreter id and GIL (an index into `gils`). With one interpreter, every
/// Python thread is the main interpreter's (id 0) and on the one GIL.
fn thread_gil(
    profile: &crate::model::profile::Profile,
    thread: &ThreadProfile,
) -> (Option<i64>, Option<usize>) {
    if thread.thread_id.is_none() {
        return (None, None);
    }
    if profile.gils().is_empty() {
        return (Some(0), Some(0));
    }
    match thread.gil {
        Some((base, interpreter)) => (
            interpreter,
            profile.gils().iter().position(|g| g.base == base),
        ),
        None => (None, None),
    }
}

/// Every GIL, the main interpreter's first. With one interpreter there is one GIL, whose
/// figures are the process's.
fn gils(recording: &Recording) -> Vec<GilEntry> {
    let profile = &recording.profile;
    let no_gil = profile.gil_ticks().no_gil();
    let measured = recording.target.wait_measured && !no_gil;
    let wait_figure = |value: f64| measured.then_some(round(value, 4));
    let held_figure = |value: f64| (!no_gil).then_some(round(value, 4));
    let threads = profile.threads();
    if profile.gils().is_empty() {
        return vec![GilEntry {
            interpreters: vec![Some(0)],
            own: false,
            held: held_figure(profile.held()),
            contended: wait_figure(profile.contended()),
            mean_waiting: wait_figure(profile.mean_waiting()),
            switches_per_s: profile
                .switches_per_s()
                .filter(|_| !no_gil)
                .map(|s| round(s, 2)),
            threads: threads
                .iter()
                .filter(|t| t.thread_id.is_some())
                .map(|t| t.tid)
                .collect(),
        }];
    }
    profile
        .gils()
        .iter()
        .map(|gil| GilEntry {
            interpreters: {
                let mut ids = gil.interpreters.clone();
                ids.sort_by_key(|id| id.unwrap_or(i64::MAX));
                ids
            },
            own: gil.own,
            held: held_figure(gil.held()),
            contended: wait_figure(gil.contended()),
            mean_waiting: wait_figure(gil.mean_waiting()),
            switches_per_s: gil.switches_per_s().map(|s| round(s, 2)),
            threads: threads
                .iter()
                .filter(|t| t.thread_id.is_some() && t.gil.is_some_and(|(b, _)| b == gil.base))
                .map(|t| t.tid)
                .collect(),
        })
        .collect()
}

fn frame(table: &StackTable, id: FrameId) -> Option<Frame> {
    let f = table.frame(id)?;
    Some(Frame {
        kind: f.kind.name(),
        function: f.function.to_string(),
        file: f.file.to_string(),
        line: f.line,
        module: (f.kind == FrameKind::Native).then(|| f.module.to_string()),
    })
}

fn locations(recording: &Recording, thread: &ThreadProfile, state: ThreadState) -> Vec<Location> {
    let Some(table) = &recording.stacks else {
        return Vec::new();
    };
    thread
        .top_locations(state, table, TOP_LOCATIONS)
        .into_iter()
        .filter_map(|l| {
            Some(Location {
                frame: frame(table, l.frame)?,
                called_from: l.caller.and_then(|c| frame(table, c)),
                fraction: round(l.fraction, 4),
                samples: l.samples,
            })
        })
        .collect()
}

fn blame(recording: &Recording) -> Blame {
    let profile = &recording.profile;
    let total = profile.waiter_ticks();
    let share = |n: u64| {
        if total == 0 {
            0.0
        } else {
            round(n as f64 / total as f64, 4)
        }
    };
    let top = profile
        .blame()
        .into_iter()
        .take(TOP_BLAME)
        .map(|b| BlameStack {
            holder_native_id: b.holder.tid,
            holder_name: b.holder.name().to_string(),
            share: share(b.waiter_ticks),
            waiter_samples: b.waiter_ticks,
            captured: b.stack.is_some(),
            stack: match (&recording.stacks, b.stack) {
                (Some(table), Some(id)) => table
                    .stack(id)
                    .iter()
                    .filter_map(|&f| frame(table, f))
                    .collect(),
                _ => Vec::new(),
            },
        })
        .collect();
    Blame {
        stacks_recorded: recording.stacks.is_some(),
        waiter_samples: total,
        unheld: share(profile.blame_unheld),
        top,
    }
}

/// `value` rounded to `digits` decimals, as every figure of the report is.
pub(super) fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// This format, for [`super::Format::report`].
pub struct Json;

impl super::Report for Json {
    fn one(&self, recording: &Recording, _: &super::RenderOptions) -> Vec<u8> {
        render(recording).into_bytes()
    }

    fn several(&self, recordings: &[Recording], _: &super::RenderOptions) -> Vec<u8> {
        render_processes(recordings).into_bytes()
    }
}
