//! The `gilscope dump` outputs: every thread's GIL state and stack at one instant, in text and
//! as JSON (schema `gilscope.dump/4`, docs/DUMP_SCHEMA.md). Rendering only.

use std::fmt::Write;

use serde_json::{json, Value};

use super::{hangs, printable, values};
use crate::model::snapshot::{FrameVariables, Locals, Snapshot, Value as SnapshotValue, Variable};
use crate::sample::ThreadState;
use crate::stack::{Frame, FrameKind};

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
        if let Some(crate::model::SwitchSites::Unavailable(why)) = &recording.sampler.switch_sites {
            let lost = crate::sample::privileges::without_switch_sites(why);
            let _ = writeln!(
                out,
                "degraded: without {}, {}",
                printable(&lost.missing),
                lost.fallback
            );
        }
        if let (Some(top), Some(table)) = (p.blame().first(), &recording.stacks) {
            let share = top.waiter_ticks as f64 / p.waiter_ticks().max(1) as f64;
            let place = top
                .stack
                .and_then(|s| table.place(s))
                .map(|p| printable(&crate::formats::labels::place(table, p, None)))
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
    findings_section(&mut out, snapshot);
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
                let variables = match &thread.locals {
                    Locals::Read(variables) => Some(variables),
                    _ => None,
                };
                let ordinals = python_ordinals(frames);
                for (i, frame) in frames.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "    {}",
                        printable(&crate::formats::labels::frame_in_full(frame))
                    );
                    let Some(k) = ordinals[i] else {
                        continue;
                    };
                    match variables.map(|v| (v.get(k), v.len())) {
                        Some((Some(frame), _)) => frame_variables(&mut out, frame),
                        Some((None, read)) if k == read => {
                            let outer = frames[i..]
                                .iter()
                                .filter(|f| f.kind != FrameKind::Native)
                                .count();
                            let _ = writeln!(
                                out,
                                "        (variables of the {outer} outer frames not read)"
                            );
                        }
                        _ => {}
                    }
                }
            }
            None if thread.thread_id.is_none() => {
                let _ = writeln!(out, "    (not a Python thread)");
            }
            None => {
                let _ = writeln!(out, "    (stack changed while being read)");
            }
        }
        match thread.locals {
            Locals::Moved => {
                let _ = writeln!(
                    out,
                    "    (variables not read: the stack changed under every read)"
                );
            }
            Locals::Unsupported => {
                let _ = writeln!(
                    out,
                    "    (variables cannot be read on Python {})",
                    t.python_version
                );
            }
            Locals::NotAsked | Locals::Read(_) => {}
        }
    }
    out
}

/// A frame's variables, a line each: its kind, its name and its value.
fn frame_variables(out: &mut String, frame: &FrameVariables) {
    if frame.unreadable {
        let _ = writeln!(out, "        (variables not readable)");
    }
    for variable in &frame.variables {
        let _ = writeln!(
            out,
            "        {:<8} {} = {}",
            variable.kind.name(),
            values::escaped(&variable.name),
            values::repr(&variable.value)
        );
    }
    if frame.not_read > 0 {
        let _ = writeln!(out, "        ({} more variables not read)", frame.not_read);
    }
}

/// Findings about stuck threads first, then those of the sample's figures.
fn findings_section(out: &mut String, snapshot: &Snapshot) {
    let Some(recording) = &snapshot.recording else {
        return;
    };
    let mut findings: Vec<String> = hangs::hangs(snapshot)
        .into_iter()
        .map(|hang| hang.text)
        .collect();
    findings.extend(
        super::findings::findings(recording)
            .iter()
            .map(|finding| printable(&finding.text)),
    );
    if findings.is_empty() {
        return;
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Findings:");
    for finding in findings {
        let _ = writeln!(out, "- {finding}");
    }
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
    json!({
        "kind": frame.kind.name(),
        "function": &*frame.function,
        "file": &*frame.file,
        "line": frame.line,
        "module": (frame.kind == FrameKind::Native).then_some(&*frame.module),
    })
}

/// Which Python frame of `frames` each one is (0: the innermost), the index of its variables
/// in [`Locals::Read`]: native frames (`--native`) have none, nor do markers.
fn python_ordinals(frames: &[Frame]) -> Vec<Option<usize>> {
    let mut next = 0;
    frames
        .iter()
        .map(|f| {
            (f.kind == FrameKind::Python).then(|| {
                next += 1;
                next - 1
            })
        })
        .collect()
}

/// A frame of a thread's stack, with its variables where they were read.
fn stack_frame_json(frame: &Frame, variables: Option<&FrameVariables>) -> Value {
    let mut value = frame_json(frame);
    let readable = variables.filter(|v| !v.unreadable);
    value["variables"] = match readable {
        Some(v) => v.variables.iter().map(variable_json).collect(),
        None => Value::Null,
    };
    value["variables_not_read"] = json!(readable.map(|v| v.not_read));
    value
}

fn variable_json(variable: &Variable) -> Value {
    let value = &variable.value;
    let (length, address) = match *value {
        SnapshotValue::Str { length, .. } | SnapshotValue::Bytes { length, .. } => {
            (Some(length), None)
        }
        SnapshotValue::Sequence { length, addr, .. } | SnapshotValue::Dict { length, addr, .. } => {
            (Some(length), Some(addr))
        }
        SnapshotValue::Object { addr, .. } | SnapshotValue::Recursive { addr, .. } => {
            (None, Some(addr))
        }
        _ => (None, None),
    };
    json!({
        "name": &*variable.name,
        "kind": variable.kind.name(),
        "type": value.type_name(),
        "repr": values::repr(value),
        "length": length,
        "address": address.map(|a| format!("{a:#x}")),
        "changed": matches!(value, SnapshotValue::Changed),
    })
}

/// The findings about stuck threads, for JSON.
fn hangs_json(snapshot: &Snapshot) -> Vec<Value> {
    hangs::hangs(snapshot)
        .iter()
        .map(|hang| {
            let threads: Vec<Value> = hang
                .threads
                .iter()
                .map(|named| {
                    let t = named.thread;
                    let condition = t.condition.as_ref();
                    json!({
                        "native_id": t.tid,
                        "name": t.name,
                        "role": named.role.name(),
                        "share": named.share,
                        "frame": t.stack.as_deref().and_then(<[_]>::first).map(frame_json),
                        "os_state": condition.map(|c| c.state.to_string()),
                        "syscall": condition.and_then(|c| c.syscall).map(hangs::syscall_text),
                        "sampled_cpu_s": t.sampled_cpu_s,
                    })
                })
                .collect();
            json!({"kind": hang.kind.name(), "text": hang.text, "threads": threads})
        })
        .collect()
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
            let variables = match &t.locals {
                Locals::Read(variables) => Some(variables),
                _ => None,
            };
            let frames = t.stack.as_deref().unwrap_or(&[]);
            let stack: Vec<Value> = frames
                .iter()
                .zip(python_ordinals(frames))
                .map(|(frame, k)| {
                    stack_frame_json(frame, variables.zip(k).and_then(|(v, k)| v.get(k)))
                })
                .collect();
            json!({
                "native_id": t.tid,
                "ns_tid": t.ns_tid,
                "thread_id": t.thread_id,
                "name": t.name,
                "os_name": t.os_name,
                "state": t.state.name(),
                "stack_captured": t.stack.is_some(),
                "stack": stack,
                "variables": match t.locals {
                    Locals::NotAsked => None,
                    Locals::Unsupported => Some("unsupported"),
                    Locals::Moved => Some("moved"),
                    Locals::Read(_) => Some("read"),
                },
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
            "switch_sites": r.sampler.switch_sites.as_ref().map(|s| s.to_string()),
            "findings": hangs_json(snapshot),
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
