//! The `gilscope dump` outputs: every thread's GIL state and stack at one instant, in text and
//! as JSON (schema `gilscope.dump/4`, docs/DUMP_SCHEMA.md). Rendering only.

use std::fmt::Write;

use serde_json::{json, Value};

use super::printable;
use crate::model::snapshot::Snapshot;
use crate::sample::ThreadState;
use crate::stack::Frame;

pub const SCHEMA: &str = "gilscope.dump/4";
pub const PROCESSES_SCHEMA: &str = "gilscope.dumps/4";

fn state_text(state: ThreadState) -> &'static str {
    match state {
        ThreadState::Hold => "holding the GIL",
        ThreadState::Wait => "waiting for the GIL",
        ThreadState::Running => "running without the GIL",
        ThreadState::Idle => "idle",
        ThreadState::Attached => "attached (running Python, no GIL)",
        ThreadState::Suspended => "suspended (stop-the-world pause)",
        ThreadState::Stopped => "stopped (SIGSTOP, job control or a debugger)",
    }
}

pub fn text(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let t = &snapshot.target;
    let _ = writeln!(
        out,
        "gilscope dump: pid {} - Python {} ({})",
        super::id_with_namespace(t.pid, t.ns_pid),
        t.python_version,
        printable(&t.binary)
    );
    if !t.command_line.is_empty() {
        let _ = writeln!(out, "command: {}", printable(&t.command_line));
    }
    // The main interpreter's GIL; subinterpreters' own GILs get a line each below.
    let holder = snapshot
        .gils
        .first()
        .and_then(|g| g.holder)
        .and_then(|tid| snapshot.threads.iter().find(|t| t.tid == tid));
    let measured = t.wait_measured;
    let wait_percent = |fraction: f64| {
        if measured {
            format!("{:.1}%", 100.0 * fraction)
        } else {
            super::UNAVAILABLE.to_string()
        }
    };
    let all_stopped = !snapshot.threads.is_empty()
        && snapshot
            .threads
            .iter()
            .all(|t| t.state == ThreadState::Stopped);
    let _ = writeln!(
        out,
        "GIL: {}; switch interval {}",
        match holder {
            _ if snapshot.gil_enabled == Some(false) => {
                "no GIL (free-threaded build, GIL disabled)".to_string()
            }
            Some(h) => format!("held by {} ({})", printable(&h.name), h.tid),
            None if snapshot.gil_locked && all_stopped => {
                "locked, and every thread stopped (SIGSTOP, job control or a debugger)".to_string()
            }
            None if snapshot.gil_locked => "locked (being handed over)".to_string(),
            None => "free".to_string(),
        },
        if snapshot.interval_us > 0 {
            format!("{:.1} ms", snapshot.interval_us as f64 / 1e3)
        } else {
            super::UNAVAILABLE.to_string()
        }
    );
    for gil in snapshot.gils.iter().skip(1) {
        let holder = gil
            .holder
            .and_then(|tid| snapshot.threads.iter().find(|t| t.tid == tid));
        let _ = writeln!(
            out,
            "GIL of interpreter {} (its own): {}",
            interpreter_list(&gil.interpreters),
            match holder {
                Some(h) => format!("held by {} ({})", printable(&h.name), h.tid),
                None if gil.locked => "locked (being handed over)".to_string(),
                None => "free".to_string(),
            }
        );
    }
    if snapshot.gil_enabled == Some(false) {
        let _ = writeln!(out, "note: {}", super::NO_GIL);
    } else if !measured {
        let _ = writeln!(out, "note: {}", super::WAIT_UNAVAILABLE);
    }
    let fractions = snapshot.fractions();
    if let Some(recording) = &snapshot.recording {
        let p = &recording.profile;
        let _ = writeln!(
            out,
            "sampled {:.1} s first: GIL held {:.1}%, contended {}, {} samples",
            p.duration_s(),
            100.0 * p.held(),
            wait_percent(p.contended()),
            p.samples
        );
        if let (Some(top), Some(table)) = (p.blame().first(), &recording.stacks) {
            let share = top.waiter_ticks as f64 / p.waiter_ticks().max(1) as f64;
            let place = top
                .stack
                .and_then(|s| table.leaf(s))
                .and_then(|f| table.frame(f))
                .map(|f| printable(&crate::formats::labels::frame(f)))
                .unwrap_or_else(|| "(stack not captured)".into());
            let _ = writeln!(
                out,
                "the others waited most ({:.0}% of waiting) while {} ({}) ran {}",
                100.0 * share,
                printable(top.holder.name()),
                top.holder.tid,
                place
            );
        }
    }
    if let Some(recording) = &snapshot.recording {
        super::text::findings_section(&mut out, recording);
    }
    for thread in &snapshot.threads {
        let _ = writeln!(out);
        let _ = write!(
            out,
            "Thread {} \"{}\"{}: {}",
            super::id_with_namespace(thread.tid, thread.ns_tid),
            printable(&thread.name),
            match (snapshot.gils.len() > 1, thread.interpreter, thread.gil) {
                (true, Some(id), Some(gil)) => format!(" [interpreter {id}, GIL {gil}]"),
                (true, None, Some(gil)) => format!(" [GIL {gil}]"),
                _ => String::new(),
            },
            state_text(thread.state)
        );
        if let Some(f) = fractions.get(&thread.tid) {
            let _ = write!(
                out,
                "  [sampled: hold {:.1}% wait {} running {:.1}% idle {:.1}%]",
                100.0 * f[0],
                wait_percent(f[1]),
                100.0 * f[2],
                100.0 * f[3]
            );
            if t.free_threaded {
                let _ = write!(
                    out,
                    "[attached {:.1}% suspended {:.1}%]",
                    100.0 * f[ThreadState::Attached.index()],
                    100.0 * f[ThreadState::Suspended.index()]
                );
            }
            let stopped = f[ThreadState::Stopped.index()];
            if stopped > 0.0 {
                let _ = write!(out, "[stopped {:.1}%]", 100.0 * stopped);
            }
        }
        let _ = writeln!(out);
        match &thread.stack {
            Some(frames) if frames.is_empty() => {
                let _ = writeln!(out, "    (no Python frame)");
            }
            Some(frames) => {
                for frame in frames {
                    let _ = writeln!(
                        out,
                        "    {}",
                        printable(&crate::formats::labels::frame(frame))
                    );
                }
            }
            None if thread.thread_id.is_none() => {
                let _ = writeln!(out, "    (not a Python thread)");
            }
            None => {
                let _ = writeln!(out, "    (stack changed while being read)");
            }
        }
    }
    out
}

/// "1" or "1, 2"; "?" for ids that could not be read.
fn interpreter_list(ids: &[Option<i64>]) -> String {
    let ids: Vec<String> = ids
        .iter()
        .map(|id| id.map_or("?".to_string(), |id| id.to_string()))
        .collect();
    ids.join(", ")
}

fn frame_json(frame: &Frame) -> Value {
    json!({"function": &*frame.function, "file": &*frame.file, "line": frame.line})
}

/// Several processes (`--subprocesses`): each process's dump after a line for the tree.
pub fn text_processes(snapshots: &[Snapshot]) -> String {
    super::process_sections(snapshots.iter().map(text))
}

/// Several processes: schema `gilscope.dumps/4`, whose `processes` holds a
/// `gilscope.dump/4` document per process.
pub fn json_processes(snapshots: &[Snapshot]) -> String {
    let processes: Vec<Value> = snapshots.iter().map(document).collect();
    let mut out = serde_json::to_string_pretty(&json!({
        "schema": PROCESSES_SCHEMA,
        "processes": processes,
    }))
    .unwrap_or_default();
    out.push('\n');
    out
}

pub fn json(snapshot: &Snapshot) -> String {
    let mut out = serde_json::to_string_pretty(&document(snapshot)).unwrap_or_default();
    out.push('\n');
    out
}

fn document(snapshot: &Snapshot) -> Value {
    let fractions = snapshot.fractions();
    // Null, not 0, where waits cannot be seen (docs/DUMP_SCHEMA.md).
    let measured = snapshot.target.wait_measured;
    let wait_figure = |value: f64| measured.then_some(value);
    let free_threaded = snapshot.target.free_threaded;
    let holder = snapshot.gils.first().and_then(|g| g.holder);
    let threads: Vec<Value> = snapshot
        .threads
        .iter()
        .map(|t| {
            let sampled = fractions.get(&t.tid).map(|f| {
                let ft = |state: ThreadState| free_threaded.then_some(f[state.index()]);
                json!({"hold": f[0], "wait": wait_figure(f[1]), "running": f[2], "idle": f[3],
                       "attached": ft(ThreadState::Attached),
                       "suspended": ft(ThreadState::Suspended),
                       "stopped": f[ThreadState::Stopped.index()]})
            });
            json!({
                "native_id": t.tid,
                "ns_tid": t.ns_tid,
                "thread_id": t.thread_id,
                "name": t.name,
                "os_name": t.os_name,
                "state": t.state.name(),
                "stack_captured": t.stack.is_some(),
                "stack": t.stack.as_deref().unwrap_or(&[]).iter().map(frame_json).collect::<Vec<_>>(),
                "sampled": sampled,
                "interpreter": t.interpreter,
                "gil": t.gil,
            })
        })
        .collect();
    let sample = snapshot.recording.as_ref().map(|r| {
        let p = &r.profile;
        let blame = p.blame().into_iter().next().filter(|_| measured).map(|b| {
            let stack: Vec<Value> = match (&r.stacks, b.stack) {
                (Some(table), Some(id)) => table.frames(id).map(frame_json).collect(),
                _ => Vec::new(),
            };
            json!({
                "holder_native_id": b.holder.tid,
                "holder_name": b.holder.name(),
                "share": super::json::round(b.waiter_ticks as f64 / p.waiter_ticks().max(1) as f64, 4),
                "stack": stack,
            })
        });
        let no_gil = p.gil_ticks().no_gil();
        json!({
            "duration_s": p.duration_s(),
            "samples": p.samples,
            "held": (!no_gil).then_some(p.held()),
            "contended": wait_figure(p.contended()).filter(|_| !no_gil),
            "top_blame": blame,
        })
    });
    json!({
        "schema": SCHEMA,
        "target": snapshot.target,
        "gil": {
            "locked": snapshot.gil_locked,
            "enabled": snapshot.gil_enabled,
            "holder_native_id": holder,
            "interval_s": (snapshot.interval_us > 0).then(|| snapshot.interval_us as f64 / 1e6),
        },
        "gils": snapshot.gils.iter().map(|g| json!({
            "interpreters": g.interpreters,
            "own": g.own,
            "locked": g.locked,
            "holder_native_id": g.holder,
        })).collect::<Vec<_>>(),
        "threads": threads,
        "sample": sample,
    })
}
