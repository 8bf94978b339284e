//! speedscope's JSON file format (https://www.speedscope.app/file-format-schema.json): one
//! sampled profile per thread (or per holder, in the blame view), states as root frames.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::{collapsed, RenderOptions, View};
use crate::model::Recording;

pub fn render(recording: &Recording, options: &RenderOptions) -> String {
    let name = format!(
        "process {} (Python {})",
        recording.target.pid, recording.target.python_version
    );
    document(
        collapsed::folded(recording, options),
        &frames_by_label(std::slice::from_ref(recording)),
        options,
        &name,
        1,
    )
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
        &frames_by_label(recordings),
        options,
        &name,
        2,
    )
}

/// The speedscope document of folded stacks, a profile per distinct first `roots` frames.
fn document(
    folded: std::collections::BTreeMap<Vec<String>, u64>,
    by_label: &HashMap<String, Value>,
    options: &RenderOptions,
    name: &str,
    roots: usize,
) -> String {
    let mut frames: Vec<Value> = Vec::new();
    let mut frame_index: HashMap<String, usize> = HashMap::new();
    // Profiles by their root (the thread or holder), in first-seen order.
    let mut profiles: Vec<(String, Vec<Vec<usize>>, Vec<u64>)> = Vec::new();
    let mut profile_index: HashMap<String, usize> = HashMap::new();
    for (path, count) in folded {
        if path.len() < roots {
            continue;
        }
        let (root, rest) = path.split_at(roots);
        let root = root.join(" / ");
        let stack: Vec<usize> = rest
            .iter()
            .map(|label| {
                *frame_index.entry(label.clone()).or_insert_with(|| {
                    frames.push(
                        by_label
                            .get(label)
                            .cloned()
                            .unwrap_or_else(|| json!({ "name": label })),
                    );
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

/// Each Python frame's speedscope frame by its folded label. The label cannot be split back
/// into function and file: either may hold " (" and ":". Frames with no file (the marker of a
/// truncated stack) and pseudo-frames (threads, states) are not here: they have a name only.
fn frames_by_label(recordings: &[Recording]) -> HashMap<String, Value> {
    let mut frames = HashMap::new();
    for table in recordings.iter().filter_map(|r| r.stacks.as_ref()) {
        for frame in (0..).map_while(|id| table.frame(id)) {
            if frame.file.is_empty() {
                continue;
            }
            frames
                .entry(collapsed::clean(&crate::formats::labels::frame(frame)))
                .or_insert_with(|| {
                    json!({
                        "name": collapsed::clean(&frame.function),
                        "file": collapsed::clean(&frame.file),
                        "line": frame.line,
                    })
                });
        }
    }
    frames
}

/// This format, for [`super::Format::report`].
pub struct Speedscope;

impl super::Report for Speedscope {
    fn one(&self, recording: &Recording, options: &RenderOptions) -> String {
        render(recording, options)
    }

    fn several(&self, recordings: &[Recording], options: &RenderOptions) -> String {
        render_processes(recordings, options)
    }
}
