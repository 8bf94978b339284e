//! The HTML report: one self-contained file (script, style and data inline; nothing fetched
//! when opened) with the GIL summary, the sortable thread table, GIL latency, the timeline,
//! the flamegraphs by state, the blame view and the findings. Reads the model only.
//!
//! The page's script (html/report.js) draws everything from one JSON document embedded in
//! the page; this module makes that document, in bounded size: the timeline is kept as the
//! dominant state of at most [`TIMELINE_COLUMNS`] columns in all, run-length encoded.

use std::collections::HashMap;
use std::fmt::Write;

use serde::Serialize;
use serde_json::{json, Value};

use super::labels::{self, Paths};
use super::palette::{self, Origin};
use super::RenderOptions;
use crate::model::profile::{Latency, ThreadProfile};
use crate::model::timeline::Span;
use crate::model::Recording;
use crate::sample::ThreadState;
use crate::stack::{FrameId, FrameKind, StackId};

const SCRIPT: &str = include_str!("html/report.js");
const STYLE: &str = include_str!("html/report.css");

/// Timeline columns kept over all threads: the resolution of the timeline, and the bound on
/// its share of the page (a 60 s recording of 100 threads keeps 4,000 columns a thread, 15
/// ms each; a short one of a few threads keeps every sample).
pub const TIMELINE_COLUMNS: usize = 400_000;
/// Columns a thread keeps at most, however few threads there are.
const MAX_COLUMNS_PER_THREAD: usize = 20_000;
/// (thread, state, stack) entries kept for the flamegraphs, the heaviest first: beyond this
/// the lightest are summed without their stack.
pub const MAX_STACK_ENTRIES: usize = 50_000;

/// The letter of each state in the encoded timeline.
fn state_letter(state: ThreadState) -> char {
    match state {
        ThreadState::Hold => 'h',
        ThreadState::Wait => 'w',
        ThreadState::Running => 'r',
        ThreadState::Idle => 'i',
        ThreadState::Attached => 'a',
        ThreadState::Suspended => 's',
        ThreadState::Stopped => 't',
    }
}

pub fn render(recording: &Recording, options: &RenderOptions) -> String {
    page(std::slice::from_ref(recording), options)
}

/// Several processes: one page, a process chosen at a time.
pub fn render_processes(recordings: &[Recording], options: &RenderOptions) -> String {
    page(recordings, options)
}

fn page(recordings: &[Recording], options: &RenderOptions) -> String {
    let processes: Vec<Value> = recordings.iter().map(|r| process(r, options)).collect();
    let document = json!({
        "generator": format!("gilscope {}", env!("CARGO_PKG_VERSION")),
        "processes": processes,
    });
    let data = script_safe(&serde_json::to_string(&document).unwrap_or_default());
    let title = match recordings {
        [one] => format!(
            "gilscope: pid {} (Python {})",
            one.target.pid, one.target.python_version
        ),
        many => format!("gilscope: {} Python processes", many.len()),
    };
    let mut html = String::with_capacity(data.len() + SCRIPT.len() + STYLE.len() + 4096);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; \
         script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:\">\n\
         <title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
         <noscript>This report draws itself with JavaScript; the text report \
         (gilscope record --format text) has the same figures without it.</noscript>\n\
         <div id=\"app\"></div>\n\
         <script type=\"application/json\" id=\"gilscope-data\">{data}</script>\n\
         <script>\n{SCRIPT}</script>\n</body>\n</html>\n",
        super::xml_text(&title)
    );
    html
}

/// JSON text that cannot end the script element it sits in: every `<` (only ever inside
/// a string) becomes its escape, and so do the line separators old parsers choke on.
fn script_safe(json: &str) -> String {
    json.replace('<', "\\u003c")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// A wait distribution for the page: figures in ms, and the buckets holding waits.
#[derive(Serialize)]
struct LatencyData {
    waits: u64,
    p50: Option<f64>,
    p90: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    /// [bucket, waits]; bucket `i` starts at 2^((i - 80) / 8) ms.
    buckets: Vec<[u64; 2]>,
}

fn latency(latency: &Latency) -> LatencyData {
    let ms = |s: Option<f64>| s.map(|s| round(s * 1e3, 3));
    LatencyData {
        waits: latency.episodes,
        p50: ms(latency.quantile(0.5)),
        p90: ms(latency.quantile(0.9)),
        p99: ms(latency.quantile(0.99)),
        max: ms((latency.episodes > 0).then(|| latency.max_ns as f64 / 1e9)),
        mean: ms(latency.mean_s()),
        buckets: latency.buckets().map(|(i, n)| [i as u64, n]).collect(),
    }
}

/// Frames and stacks as the page knows them: each used once, by index.
#[derive(Default)]
struct Tables {
    frames: Vec<Value>,
    frame_index: HashMap<FrameId, usize>,
    stacks: Vec<Vec<usize>>,
    stack_index: HashMap<StackId, usize>,
}

impl Tables {
    fn frame(&mut self, recording: &Recording, paths: &Paths, id: FrameId) -> Option<usize> {
        if let Some(&at) = self.frame_index.get(&id) {
            return Some(at);
        }
        let frame = recording.stacks.as_ref()?.frame(id)?;
        let short = paths.short(&frame.file);
        let origin = match paths.origin(frame) {
            Origin::Program => 0,
            Origin::Stdlib => 1,
            Origin::Package => 2,
            Origin::Native => 3,
            Origin::Gilscope => 4,
        };
        let file = match frame.kind {
            FrameKind::Native if frame.file.is_empty() => labels::short_module(&frame.module),
            _ => short,
        };
        let full = match frame.kind {
            FrameKind::Native if frame.file.is_empty() => &*frame.module,
            _ => &*frame.file,
        };
        // [function, short file, line, full file, origin]
        self.frames.push(json!([
            super::printable(&frame.function),
            super::printable(file),
            frame.line,
            super::printable(full),
            origin
        ]));
        self.frame_index.insert(id, self.frames.len() - 1);
        Some(self.frames.len() - 1)
    }

    /// The page's index of a stack (-1: none read).
    fn stack(&mut self, recording: &Recording, paths: &Paths, id: Option<StackId>) -> i64 {
        let (Some(id), Some(table)) = (id, recording.stacks.as_ref()) else {
            return -1;
        };
        if let Some(&at) = self.stack_index.get(&id) {
            return at as i64;
        }
        let frames: Vec<usize> = table
            .stack(id)
            .iter()
            .filter_map(|&f| self.frame(recording, paths, f))
            .collect();
        self.stacks.push(frames);
        self.stack_index.insert(id, self.stacks.len() - 1);
        (self.stacks.len() - 1) as i64
    }
}

fn process(recording: &Recording, options: &RenderOptions) -> Value {
    let profile = &recording.profile;
    let target = &recording.target;
    let paths = Paths::of(std::slice::from_ref(recording));
    let ticks = profile.gil_ticks();
    let no_gil = ticks.no_gil();
    let measured = target.wait_measured && !no_gil;
    let states = super::with_stopped(super::shown_states(target.free_threaded, no_gil), profile);
    let threads_with_rows = profile.threads_with_rows();
    let index_of_row: HashMap<usize, usize> = threads_with_rows
        .iter()
        .enumerate()
        .map(|(i, (row, _))| (*row, i))
        .collect();
    let mut tables = Tables::default();
    let threads: Vec<Value> = threads_with_rows
        .iter()
        .map(|(_, thread)| thread_value(recording, thread, &states))
        .collect();
    // What each thread waited on most: (holder's index, holder's stack, share of its waits).
    let waited_on: Vec<Value> = threads_with_rows
        .iter()
        .map(|(_, thread)| {
            let total: u64 = thread.waited_on.values().sum();
            let top = thread
                .waited_on
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
            match top {
                Some((&(row, stack), &n)) if total > 0 => match index_of_row.get(&row) {
                    Some(&holder) => json!([
                        holder,
                        tables.stack(recording, &paths, stack),
                        round(n as f64 / total as f64, 4)
                    ]),
                    None => Value::Null,
                },
                _ => Value::Null,
            }
        })
        .collect();
    // (thread, state, stack, samples), heaviest first, for the flamegraphs.
    let mut entries: Vec<(usize, ThreadState, Option<StackId>, u64)> = Vec::new();
    for (i, (_, thread)) in threads_with_rows.iter().enumerate() {
        for &state in &states {
            for (&stack, &n) in &thread.stacks[state.index()] {
                entries.push((i, state, stack, n));
            }
        }
    }
    entries.sort_by(|a, b| b.3.cmp(&a.3).then(a.0.cmp(&b.0)).then(a.2.cmp(&b.2)));
    let mut samples: Vec<Value> = Vec::new();
    let mut unkept: HashMap<(usize, ThreadState), u64> = HashMap::new();
    for (i, (thread, state, stack, n)) in entries.into_iter().enumerate() {
        if i < MAX_STACK_ENTRIES {
            let stack = tables.stack(recording, &paths, stack);
            samples.push(json!([thread, state_letter(state).to_string(), stack, n]));
        } else {
            *unkept.entry((thread, state)).or_default() += n;
        }
    }
    for ((thread, state), n) in unkept {
        samples.push(json!([thread, state_letter(state).to_string(), -1, n]));
    }
    let blame: Vec<Value> = if measured {
        profile
            .blame()
            .into_iter()
            .take(MAX_STACK_ENTRIES)
            .filter_map(|b| {
                let holder = threads_with_rows
                    .iter()
                    .position(|(_, t)| std::ptr::eq(*t, b.holder))?;
                Some(json!([
                    holder,
                    tables.stack(recording, &paths, b.stack),
                    b.waiter_ticks
                ]))
            })
            .collect()
    } else {
        Vec::new()
    };
    let findings: Vec<Value> = super::findings::findings(recording)
        .into_iter()
        .map(|f| {
            json!({
                "text": super::printable(&f.text),
                "threads": f.threads,
                "frame": f.frame.and_then(|id| tables.frame(recording, &paths, id)),
                "state": f.state.map(|s| state_letter(s).to_string()),
            })
        })
        .collect();
    let colours: serde_json::Map<String, Value> = ThreadState::ALL
        .iter()
        .map(|&s| (state_letter(s).to_string(), json!(palette::state(s).hex())))
        .collect();
    let origin_colours: Vec<String> = [
        Origin::Program,
        Origin::Stdlib,
        Origin::Package,
        Origin::Native,
        Origin::Gilscope,
    ]
    .iter()
    .map(|&o| palette::frame(o, "").hex())
    .collect();
    let timeline = timeline(recording, &threads_with_rows);
    let sampler = &recording.sampler;
    json!({
        "pid": target.pid,
        "python": target.python_version.to_string(),
        "binary": super::printable(&target.binary),
        "command": super::printable(&target.command_line),
        "sysPath": target.sys_path.iter().map(|p| super::printable(p)).collect::<Vec<_>>(),
        "duration": round(profile.duration_s(), 6),
        "rate": sampler.rate_hz,
        "samples": profile.samples,
        "tickMs": round(profile.tick_s() * 1e3, 4),
        "waitMeasured": measured,
        "freeThreaded": target.free_threaded,
        "noGil": no_gil,
        "states": states.iter().map(|&s| state_letter(s).to_string()).collect::<Vec<_>>(),
        "stateNames": ThreadState::ALL.iter()
            .map(|&s| (state_letter(s).to_string(), s.name()))
            .collect::<HashMap<_, _>>(),
        "colours": colours,
        "originColours": origin_colours,
        "gil": {
            "held": (!no_gil).then(|| round(profile.held(), 4)),
            "heldMargin": profile.held_margin().filter(|_| !no_gil).map(|m| round(m, 4)),
            "contended": measured.then(|| round(profile.contended(), 4)),
            "contendedMargin": profile.contended_margin().filter(|_| measured)
                .map(|m| round(m, 4)),
            "meanWaiting": measured.then(|| round(profile.mean_waiting(), 3)),
            "switches": profile.switches_per_s().filter(|_| !no_gil).map(|s| round(s, 1)),
            "intervalMs": (profile.interval_us > 0).then(|| profile.interval_us as f64 / 1e3),
            "gils": profile.gils().len().max(1),
        },
        "classifierError": crate::model::CLASSIFIER_ERROR,
        "latency": measured.then(|| latency(&profile.latency())),
        "threads": threads,
        "waitedOn": waited_on,
        "samplesByStack": samples,
        "blame": blame,
        "blameUnheld": profile.blame_unheld,
        "frames": tables.frames,
        "stacks": tables.stacks,
        "findings": findings,
        "timeline": timeline,
        "shownStates": options.states.iter().map(|&s| state_letter(s).to_string())
            .collect::<Vec<_>>(),
        "sampler": {
            "errors": sampler.errors,
            "lateTicks": sampler.late_ticks,
            "maxLagMs": round(sampler.max_lag_s * 1e3, 2),
            "stackErrors": sampler.stack_errors,
            "hostSteal": sampler.host_steal,
            "ended": format!("{:?}", sampler.ended),
        },
    })
}

fn thread_value(recording: &Recording, thread: &ThreadProfile, states: &[ThreadState]) -> Value {
    let measured = recording.target.wait_measured && !recording.profile.gil_ticks().no_gil();
    let shares: Vec<f64> = states
        .iter()
        .map(|&s| round(thread.fraction(s), 4))
        .collect();
    json!({
        "tid": thread.tid,
        "name": super::printable(thread.name()),
        "osName": super::printable(&thread.os_name),
        "python": thread.thread_id.is_some(),
        "samples": thread.counts.total(),
        "shares": shares,
        "margin": thread.worst_margin().map(|m| round(m, 4)),
        "latency": measured.then(|| latency(&thread.latency)),
    })
}

/// The timeline: each thread's dominant state in each of its columns, run-length encoded
/// ("h12w3i200": 12 columns holding, 3 waiting, 200 idle; "-" where it was not seen).
fn timeline(recording: &Recording, threads: &[(usize, &ThreadProfile)]) -> Value {
    let profile = &recording.profile;
    let (Some(timeline), Some(start)) = (&profile.timeline, profile.start_ns) else {
        return Value::Null;
    };
    if threads.is_empty() {
        return Value::Null;
    }
    let end = profile.end_ns.max(start + 1);
    let columns = (TIMELINE_COLUMNS / threads.len())
        .min(MAX_COLUMNS_PER_THREAD)
        .min(profile.samples.max(1) as usize)
        .max(1);
    let ns_per_column = (end - start) as f64 / columns as f64;
    let mut by_row: HashMap<usize, Vec<Span>> = HashMap::new();
    for span in timeline.spans() {
        by_row.entry(span.row).or_default().push(span);
    }
    let mut time = vec![[0u64; ThreadState::COUNT]; columns];
    let rows: Vec<String> = threads
        .iter()
        .map(|(row, _)| {
            for column in time.iter_mut() {
                *column = [0; ThreadState::COUNT];
            }
            for span in by_row.get(row).map(Vec::as_slice).unwrap_or(&[]) {
                spread(span, start, ns_per_column, &mut time);
            }
            let mut encoded = String::new();
            let mut run: Option<(char, usize)> = None;
            for column in &time {
                let letter = column
                    .iter()
                    .enumerate()
                    .filter(|(_, &t)| t > 0)
                    .max_by_key(|&(i, &t)| (t, ThreadState::COUNT - i))
                    .map_or('-', |(i, _)| state_letter(ThreadState::ALL[i]));
                run = match run {
                    Some((l, n)) if l == letter => Some((l, n + 1)),
                    Some((l, n)) => {
                        let _ = write!(encoded, "{l}{n}");
                        Some((letter, 1))
                    }
                    None => Some((letter, 1)),
                };
            }
            if let Some((l, n)) = run {
                let _ = write!(encoded, "{l}{n}");
            }
            encoded
        })
        .collect();
    json!({
        "columns": columns,
        "msPerColumn": round(ns_per_column / 1e6, 6),
        "rows": rows,
        "dropped": timeline.dropped,
    })
}

/// Add a span's time to the columns it covers (a one-sample span counts in its column).
fn spread(span: &Span, origin: u64, ns_per_column: f64, columns: &mut [[u64; ThreadState::COUNT]]) {
    let last_column = columns.len() - 1;
    let start = span.start_ns.saturating_sub(origin) as f64;
    let end = span.end_ns.saturating_sub(origin) as f64;
    if end <= start {
        let at = ((start / ns_per_column) as usize).min(last_column);
        columns[at][span.state.index()] += 1;
        return;
    }
    let first = ((start / ns_per_column) as usize).min(last_column);
    let last = ((end / ns_per_column) as usize).min(last_column);
    for (at, column) in columns.iter_mut().enumerate().take(last + 1).skip(first) {
        let lo = start.max(at as f64 * ns_per_column);
        let hi = end.min((at + 1) as f64 * ns_per_column);
        if hi > lo {
            column[span.state.index()] += (hi - lo) as u64;
        }
    }
}

/// This format, for [`super::Format::report`].
pub struct Html;

impl super::Report for Html {
    fn one(&self, recording: &Recording, options: &RenderOptions) -> Vec<u8> {
        render(recording, options).into_bytes()
    }

    fn several(&self, recordings: &[Recording], options: &RenderOptions) -> Vec<u8> {
        render_processes(recordings, options).into_bytes()
    }
}
