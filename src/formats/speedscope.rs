//! speedscope's JSON file format (https://www.speedscope.app/file-format-schema.json): one
//! sampled profile per thread (or per holder, in the blame view), states as root frames.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::collapsed::{self, Folded, Node};
use super::labels::Paths;
use super::{RenderOptions, View};
use crate::model::Recording;
use crate::stack::FrameKind;

pub fn render(recording: &Recording, options: &RenderOptions) -> String {
    let name = format!(
        "process {} (Python {})",
        recording.target.pid, recording.target.python_version
    );
    document(collapsed::folded(recording, options), options, &name)
}

/// Several processes: a profile per thread of each process, named after both.
pub fn render_processes(recordings: &[Recording], options: &RenderOptions) -> String {
    let pids: Vec<String> = recordings
        .iter()
        .map(|r| r.target.pid.to_string())
        .collect();
    let name = format!("processes {}", pids.join(", "));
    document(
        collapsed::folded_processes(recordings, options),
        options,
        &name,
    )
}

/// A node as a speedscope frame: a stack frame with its file and line, anything else by name.
fn frame_value(node: &Node) -> Value {
    match node {
        Node::Frame(frame) if !frame.file.is_empty() => json!({
            "name": collapsed::clean(&frame.function),
            "file": collapsed::clean(&frame.file),
            "line": frame.line,
        }),
        Node::Frame(frame) if frame.kind == FrameKind::Native => json!({
            "name": collapsed::clean(&frame.function),
            "file": collapsed::clean(&frame.module),
        }),
        other => json!({ "name": other.label(&Paths::default()) }),
    }
}

/// How many nodes of a path name its profile: up to its thread (with the process and GIL
/// above it), or the whole path where there is no thread (waiters while nobody held the GIL).
fn root_len(path: &[Node]) -> usize {
    path.iter()
        .position(|n| matches!(n, Node::Thread(_)))
        .map_or(path.len(), |at| at + 1)
}

/// The speedscope document of folded stacks: a profile per thread (with its process and GIL).
fn document(folded: Folded, options: &RenderOptions, name: &str) -> String {
    let mut frames: Vec<Value> = Vec::new();
    let mut frame_index: HashMap<Node, usize> = HashMap::new();
    // Profiles by their root (the thread or holder), in first-seen order.
    let mut profiles: Vec<(String, Vec<Vec<usize>>, Vec<u64>)> = Vec::new();
    let mut profile_index: HashMap<String, usize> = HashMap::new();
    for (path, count) in folded {
        let (root, rest) = path.split_at(root_len(&path));
        let root: Vec<String> = root.iter().map(|n| n.label(&Paths::default())).collect();
        let root = root.join(" / ");
        let stack: Vec<usize> = rest
            .iter()
            .map(|node| {
                *frame_index.entry(node.clone()).or_insert_with(|| {
                    frames.push(frame_value(node));
                    frames.len() - 1
                })
            })
            .collect();
        let i = *profile_index.entry(root.clone()).or_insert_with(|| {
            profiles.push((root.clone(), Vec::new(), Vec::new()));
            profiles.len() - 1
        });
        profiles[i].1.push(stack);
        profiles[i].2.push(count);
    }
    let unit = match options.view {
        View::Threads => "samples",
        View::Blame => "waiter-samples",
    };
    let profiles: Vec<Value> = profiles
        .into_iter()
        .map(|(name, samples, weights)| {
            let total: u64 = weights.iter().sum();
            json!({
                "type": "sampled",
                "name": name,
                "unit": "none",
                "startValue": 0,
                "endValue": total,
                "samples": samples,
                "weights": weights,
            })
        })
        .collect();
    let document = json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": format!("gilscope {}", env!("CARGO_PKG_VERSION")),
        "name": format!("gilscope {unit}: {name}"),
        "activeProfileIndex": 0,
        "shared": { "frames": frames },
        "profiles": profiles,
    });
    let mut out = serde_json::to_string(&document).unwrap_or_default();
    out.push('\n');
    out
}

/// This format, for [`super::Format::report`].
pub struct Speedscope;

impl super::Report for Speedscope {
    fn one(&self, recording: &Recording, options: &RenderOptions) -> Vec<u8> {
        render(recording, options).into_bytes()
    }

    fn several(&self, recordings: &[Recording], options: &RenderOptions) -> Vec<u8> {
        render_processes(recordings, options).into_bytes()
    }
}
