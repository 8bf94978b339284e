//! The Chrome trace event format (Perfetto, chrome://tracing): a track per thread with a span
//! for each run of one GIL state, its stack at the start, and a counter of waiting threads.

use serde_json::{json, Value};

use super::{printable, RenderOptions};
use crate::model::Recording;
use crate::sample::ThreadState;
use crate::stack::StackId;

pub const SCHEMA: &str = "gilscope.chrometrace/1";

pub fn render(recording: &Recording, options: &RenderOptions) -> String {
    render_processes(std::slice::from_ref(recording), options)
}

/// Several processes on one time axis (the sampler's clock), each its own process track.
pub fn render_processes(recordings: &[Recording], options: &RenderOptions) -> String {
    let origin = recordings
        .iter()
        .filter_map(|r| r.profile.start_ns)
        .min()
        .unwrap_or(0);
    let mut events = Vec::new();
    let mut dropped = 0;
    for (index, recording) in recordings.iter().enumerate() {
        dropped += process_events(recording, options, origin, index, &mut events);
    }
    let first = recordings.first();
    let end = recordings
        .iter()
        .map(|r| r.profile.end_ns)
        .max()
        .unwrap_or(origin);
    let states: Vec<&str> = options.states.iter().map(ThreadState::name).collect();
    let pids: Vec<i32> = recordings.iter().map(|r| r.target.pid).collect();
    let document = json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "schema": SCHEMA,
            "pid": first.map(|r| r.target.pid),
            "pids": pids,
            "python_version": first.map(|r| r.target.python_version.to_string()),
            "rate_hz": first.map(|r| r.sampler.rate_hz),
            "duration_s": end.saturating_sub(origin) as f64 / 1e9,
            "samples": recordings.iter().map(|r| r.profile.samples).sum::<u64>(),
            "states": states,
            "spans_dropped": dropped,
        },
    });
    let mut out = serde_json::to_string(&document).unwrap_or_default();
    out.push('\n');
    out
}

/// The events of one process, timed from `origin`; the number of spans it dropped.
fn process_events(
    recording: &Recording,
    options: &RenderOptions,
    origin: u64,
    index: usize,
    events: &mut Vec<Value>,
) -> u64 {
    let profile = &recording.profile;
    let pid = recording.target.pid;
    let micros = |ns: u64| ns.saturating_sub(origin) as f64 / 1e3;
    events.push(json!({
        "ph": "M", "pid": pid, "name": "process_name",
        "args": {"name": format!("{} (pid {pid})", printable(&recording.target.command_line))},
    }));
    events.push(json!({
        "ph": "M", "pid": pid, "name": "process_sort_index", "args": {"sort_index": index},
    }));
    for (index, thread) in profile.threads().into_iter().enumerate() {
        events.push(json!({
            "ph": "M", "pid": pid, "tid": thread.tid, "name": "thread_name",
            "args": {"name": printable(thread.name())},
        }));
        events.push(json!({
            "ph": "M", "pid": pid, "tid": thread.tid, "name": "thread_sort_index",
            "args": {"sort_index": index},
        }));
    }
    let stack = |id: Option<StackId>| -> Value {
        let (Some(id), Some(table)) = (id, recording.stacks.as_ref()) else {
            return Value::Null;
        };
        let mut frames: Vec<String> = table
            .frames(id)
            .map(|f| printable(&crate::formats::labels::frame(f)))
            .collect();
        frames.reverse();
        json!(frames)
    };
    let mut dropped = 0;
    if let Some(timeline) = &profile.timeline {
        dropped = timeline.dropped;
        for span in timeline.spans() {
            if !options.states.contains(&span.state) {
                continue;
            }
            let Some(thread) = profile.thread_at(span.row) else {
                continue;
            };
            events.push(json!({
                "ph": "X", "pid": pid, "tid": thread.tid, "cat": "gil",
                "name": span.state.name(),
                "ts": micros(span.start_ns),
                "dur": span.end_ns.saturating_sub(span.start_ns) as f64 / 1e3,
                "args": {"samples": span.samples, "stack": stack(span.stack)},
            }));
        }
        for &(time_ns, waiting) in timeline.waiters() {
            events.push(json!({
                "ph": "C", "pid": pid, "name": "GIL waiters", "ts": micros(time_ns),
                "args": {"waiting": waiting},
            }));
        }
    }
    dropped
}

/// This format, for [`super::Format::report`].
pub struct Chrometrace;

impl super::Report for Chrometrace {
    fn one(&self, recording: &Recording, options: &RenderOptions) -> Vec<u8> {
        render(recording, options).into_bytes()
    }

    fn several(&self, recordings: &[Recording], options: &RenderOptions) -> Vec<u8> {
        render_processes(recordings, options).into_bytes()
    }
}
