//! Flamegraph SVGs, drawn by inferno from the folded stacks: every thread with its states
//! and stacks, or the blame view. Rendering only; the stacks come from collapsed.rs.

use super::{collapsed, RenderOptions, View};
use crate::model::Recording;
use crate::sample::ThreadState;

pub fn render(recording: &Recording, options: &RenderOptions) -> String {
    let mut subtitle = format!(
        "process {} (Python {}), {:.1} s at {} Hz, {} samples",
        recording.target.pid,
        recording.target.python_version,
        recording.profile.duration_s(),
        recording.sampler.rate_hz,
        recording.profile.samples
    );
    if !recording.target.wait_measured {
        // An empty "waiting" graph would say nobody waited; say why there is none instead.
        let only_waiting =
            options.view == View::Blame || options.states.iter().all(|&s| s == ThreadState::Wait);
        if only_waiting {
            return message_svg(&title(options), super::WAIT_UNAVAILABLE);
        }
        subtitle.push_str(", waiting not measured on this interpreter");
    }
    draw(&collapsed::render(recording, options), options, subtitle)
}

fn title(options: &RenderOptions) -> String {
    let states: Vec<&str> = options.states.iter().map(|s| s.name()).collect();
    match options.view {
        View::Threads => format!("GIL by thread and state ({})", states.join(", ")),
        View::Blame => "What the GIL holder ran while others waited".to_string(),
    }
}

/// Several processes in one flamegraph, each process a root frame.
pub fn render_processes(recordings: &[Recording], options: &RenderOptions) -> String {
    let pids: Vec<String> = recordings
        .iter()
        .map(|r| r.target.pid.to_string())
        .collect();
    let samples: u64 = recordings.iter().map(|r| r.profile.samples).sum();
    let rate = recordings.first().map_or(0.0, |r| r.sampler.rate_hz);
    let subtitle = format!(
        "{} processes (pids {}) at {rate} Hz, {samples} samples",
        recordings.len(),
        pids.join(", ")
    );
    draw(
        &collapsed::render_processes(recordings, options),
        options,
        subtitle,
    )
}

fn draw(folded: &str, options: &RenderOptions, subtitle: String) -> String {
    let lines: Vec<&str> = folded.lines().collect();
    let mut inferno = inferno::flamegraph::Options::default();
    let count_name = match options.view {
        View::Threads => "samples",
        View::Blame => "waiter-samples",
    };
    inferno.title = title(options);
    inferno.count_name = count_name.to_string();
    inferno.subtitle = Some(subtitle);
    inferno.deterministic = true;
    let mut svg = Vec::new();
    if lines.is_empty() {
        return empty_svg(&inferno.title);
    }
    match inferno::flamegraph::from_lines(&mut inferno, lines.iter().copied(), &mut svg) {
        Ok(()) => String::from_utf8_lossy(&svg).into_owned(),
        Err(_) => empty_svg(&inferno.title),
    }
}

/// A valid SVG that says there was nothing to draw (inferno refuses empty input).
pub(super) fn empty_svg(title: &str) -> String {
    message_svg(title, "no samples in this view")
}

/// A valid SVG with a title and one line of explanation instead of a graph.
fn message_svg(title: &str, message: &str) -> String {
    // About 7 px per character at 12 px: wide enough that the line is not cut.
    let width = (message.chars().count() * 7).max(1200);
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"{width}\" \
         height=\"60\" xmlns=\"http://www.w3.org/2000/svg\"><text x=\"{}\" y=\"24\" \
         text-anchor=\"middle\">{}</text><text x=\"{}\" y=\"48\" text-anchor=\"middle\" \
         font-size=\"12\">{}</text></svg>\n",
        width / 2,
        super::xml_text(title),
        width / 2,
        super::xml_text(message)
    )
}

/// This format, for [`super::Format::report`].
pub struct Flamegraph;

impl super::Report for Flamegraph {
    fn one(&self, recording: &Recording, options: &RenderOptions) -> String {
        render(recording, options)
    }

    fn several(&self, recordings: &[Recording], options: &RenderOptions) -> String {
        render_processes(recordings, options)
    }
}
