//! Flamegraph SVGs, drawn by inferno from the folded stacks: every thread with its states
//! and stacks, or the blame view. Rendering only; the stacks come from collapsed.rs, the
//! colours from palette.rs (state frames in their state's colour), the labels from labels.rs
//! (short file names, cut at their end; the full path in each frame's tooltip).

use std::collections::HashMap;

use inferno::flamegraph::color::{BackgroundColor, Color, PaletteMap};

use super::collapsed::{self, Folded, Node};
use super::labels::Paths;
use super::palette::{self, Origin, Rgb};
use super::{RenderOptions, View};
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
    let paths = Paths::of(std::slice::from_ref(recording));
    draw(
        collapsed::folded(recording, options),
        &paths,
        options,
        subtitle,
    )
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
        collapsed::folded_processes(recordings, options),
        &Paths::of(recordings),
        options,
        subtitle,
    )
}

/// A node's colour: a state's own, else a pale tint of where its code comes from.
pub fn node_colour(node: &Node, paths: &Paths, label: &str) -> Rgb {
    match node {
        Node::State(state) => palette::state(*state),
        Node::Frame(frame) => palette::frame(paths.origin(frame), label),
        Node::Unheld => palette::state(crate::sample::ThreadState::Wait),
        Node::Process(_) | Node::Gil(_) | Node::Thread(_) => {
            palette::frame(Origin::Gilscope, label)
        }
    }
}

fn draw(folded: Folded, paths: &Paths, options: &RenderOptions, subtitle: String) -> String {
    let mut colours = PaletteMap::default();
    // The full path of each frame whose label names its file short, for its tooltip.
    let mut files: HashMap<String, String> = HashMap::new();
    for node in folded.keys().flatten() {
        let label = node.label(paths);
        if colours.get(&label).is_none() {
            let Rgb(r, g, b) = node_colour(node, paths, &label);
            colours.insert(&label, Color { r, g, b });
        }
        if let Node::Frame(frame) = node {
            if node.full_label(paths).is_some() && !frame.file.contains(['(', ')']) {
                files
                    .entry(super::xml_text(&label))
                    .or_insert_with(|| super::xml_text(&collapsed::clean(&frame.file)));
            }
        }
    }
    let folded = collapsed::lines(folded, paths);
    let lines: Vec<&str> = folded.lines().collect();
    let mut inferno = inferno::flamegraph::Options::default();
    inferno.palette_map = Some(&mut colours);
    // The function comes first in a label: a frame too narrow for all of it keeps that.
    inferno.text_truncate_direction = inferno::flamegraph::TextTruncateDirection::Right;
    inferno.bgcolors = Some(BackgroundColor::Flat(Color {
        r: 0xff,
        g: 0xff,
        b: 0xff,
    }));
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
        Ok(()) => with_files_in_tooltips(&String::from_utf8_lossy(&svg), &files),
        Err(_) => empty_svg(&inferno.title),
    }
}

/// Add each frame's full file name to its tooltip: "spin (demo.py:28) (120 samples, 5%;
/// /srv/app/demo.py)". inferno's script takes a frame's text from its tooltip less the last
/// parenthesis, so the file goes inside that one (file names with parentheses are left out).
fn with_files_in_tooltips(svg: &str, files: &HashMap<String, String>) -> String {
    const OPEN: &str = "<title>";
    const CLOSE: &str = ")</title>";
    let mut out = String::with_capacity(svg.len() + files.len() * 64);
    let mut rest = svg;
    while let Some(at) = rest.find(OPEN) {
        let (before, title) = rest.split_at(at + OPEN.len());
        out.push_str(before);
        let Some(end) = title.find(CLOSE) else {
            rest = title;
            continue;
        };
        let text = &title[..end];
        match text
            .rsplit_once(" (")
            .and_then(|(label, _)| files.get(label))
        {
            Some(file) => {
                out.push_str(text);
                out.push_str("; ");
                out.push_str(file);
            }
            None => out.push_str(text),
        }
        rest = &title[end..];
    }
    out.push_str(rest);
    out
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
    fn one(&self, recording: &Recording, options: &RenderOptions) -> Vec<u8> {
        render(recording, options).into_bytes()
    }

    fn several(&self, recordings: &[Recording], options: &RenderOptions) -> Vec<u8> {
        render_processes(recordings, options).into_bytes()
    }
}

#[cfg(all(test, feature = "dev"))]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_function_first_and_the_file_short_with_the_full_path_in_the_tooltip() {
        let recording = crate::dev::synthetic::recording(6, 1.0, 200.0);
        let svg = render(&recording, &RenderOptions::default());
        // Narrow frames keep the start of their label, the function.
        assert!(svg.contains("truncate_text_right = true"), "{svg}");
        let title = svg
            .split("<title>")
            .find(|t| t.starts_with("serve_0 (worker.py:10) ("))
            .expect("a frame labelled with its short file name");
        assert!(title.contains("; /srv/app/worker.py)</title>"), "{title}");
        // State frames take the palette's colours.
        let Rgb(r, g, b) = palette::state(crate::sample::ThreadState::Hold);
        let hold = svg
            .split("<g>")
            .find(|g| g.contains("<title>[hold] ("))
            .expect("a hold frame");
        assert!(
            hold.contains(&format!("fill=\"rgb({r},{g},{b})\"")),
            "{hold}"
        );
        let dtd = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        roxmltree::Document::parse_with_options(&svg, dtd).expect("well-formed SVG");
    }

    #[test]
    fn files_join_tooltips_only_where_the_label_names_them_short() {
        let mut files = HashMap::new();
        files.insert("f (a.py:1)".to_string(), "/x/a.py".to_string());
        let svg = "<g><title>f (a.py:1) (3 samples, 1.00%)</title></g>\
                   <g><title>g (b.py:2) (1 samples, 0.50%)</title></g><title>all</title>";
        assert_eq!(
            with_files_in_tooltips(svg, &files),
            "<g><title>f (a.py:1) (3 samples, 1.00%; /x/a.py)</title></g>\
             <g><title>g (b.py:2) (1 samples, 0.50%)</title></g><title>all</title>"
        );
    }
}
