//! Flamegraph SVGs, drawn by inferno from the folded stacks: every thread with its states
//! and stacks, or the blame view. Rendering only; the stacks come from collapsed.rs.

use super::{collapsed, Recording, RenderOptions, View};

pub fn render(recording: &Recording, options: &RenderOptions) -> String {
    let subtitle = format!(
        "process {} (Python {}), {:.1} s at {} Hz, {} samples",
        recording.target.pid,
        recording.target.python_version,
        recording.profile.duration_s(),
        recording.sampler.rate_hz,
        recording.profile.samples
    );
    draw(&collapsed::render(recording, options), options, subtitle)
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
    let states: Vec<&str> = options.states.iter().map(|s| s.name()).collect();
    let (title, count_name) = match options.view {
        View::Threads => (
            format!("GIL by thread and state ({})", states.join(", ")),
            "samples",
        ),
        View::Blame => (
            "What the GIL holder ran while others waited".to_string(),
            "waiter-samples",
        ),
    };
    inferno.title = title;
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
    format!(
        "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"1200\" \
         height=\"60\" xmlns=\"http://www.w3.org/2000/svg\"><text x=\"600\" y=\"24\" \
         text-anchor=\"middle\">{}</text><text x=\"600\" y=\"48\" text-anchor=\"middle\">no \
         samples in this view</text></svg>\n",
        super::xml_text(title)
    )
}
