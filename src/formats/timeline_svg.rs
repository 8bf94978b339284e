//! The timeline as a standalone SVG: a row per thread, coloured by its GIL state over time, a
//! pixel showing the state that filled most of its time. Rendering only, from timeline.rs.

use std::collections::HashMap;
use std::fmt::Write;

use super::{flamegraph, xml_text, RenderOptions};
use crate::model::profile::ThreadProfile;
use crate::model::timeline::Span;
use crate::model::Recording;
use crate::sample::ThreadState;
use crate::stack::StackTable;

const WIDTH: usize = 1200;
const LABELS: usize = 230;
const PLOT: usize = WIDTH - LABELS - 20;
const ROW: usize = 18;
const TOP: usize = 76;
const TITLE: &str = "GIL timeline";

fn colour(state: ThreadState) -> String {
    super::palette::state(state).hex()
}

pub fn render(recording: &Recording, options: &RenderOptions) -> String {
    draw(std::slice::from_ref(recording), options, false)
}

/// Several processes on one time axis: each process's name, then its threads' rows.
pub fn render_processes(recordings: &[Recording], options: &RenderOptions) -> String {
    draw(recordings, options, true)
}

/// A row of the picture: a process's heading, or a thread (its row in the process's profile).
enum Line<'a> {
    Process(&'a Recording),
    Thread(&'a Recording, usize, &'a ThreadProfile),
}

fn draw(recordings: &[Recording], options: &RenderOptions, headed: bool) -> String {
    let timed: Vec<&Recording> = recordings
        .iter()
        .filter(|r| r.profile.timeline.is_some() && r.profile.start_ns.is_some())
        .collect();
    let Some(origin) = timed.iter().filter_map(|r| r.profile.start_ns).min() else {
        return flamegraph::empty_svg(TITLE);
    };
    let mut lines = Vec::new();
    let mut spans_of: Vec<HashMap<usize, Vec<Span>>> = Vec::new();
    for recording in &timed {
        let mut by_row: HashMap<usize, Vec<Span>> = HashMap::new();
        if let Some(timeline) = &recording.profile.timeline {
            for span in timeline.spans() {
                by_row.entry(span.row).or_default().push(span);
            }
        }
        let threads = recording.profile.threads_with_rows();
        if by_row.is_empty() || threads.is_empty() {
            continue;
        }
        if headed {
            lines.push(Line::Process(recording));
        }
        lines.extend(
            threads
                .into_iter()
                .map(|(row, thread)| Line::Thread(recording, row, thread)),
        );
        spans_of.push(by_row);
    }
    if spans_of.is_empty() {
        return flamegraph::empty_svg(TITLE);
    }
    let end = timed
        .iter()
        .map(|r| r.profile.end_ns)
        .max()
        .unwrap_or(origin)
        .max(origin + 1);
    let samples: u64 = timed.iter().map(|r| r.profile.samples).sum();
    let ns_per_px = (end - origin) as f64 / PLOT as f64;
    let height = TOP + lines.len() * ROW + 44;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg version=\"1.1\" width=\"{WIDTH}\" \
         height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" \
         xmlns=\"http://www.w3.org/2000/svg\" font-family=\"Verdana, sans-serif\" \
         font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n"
    );
    let states: Vec<&str> = options.states.iter().map(ThreadState::name).collect();
    let first = timed[0];
    let title = if headed {
        format!("{TITLE}: {} Python processes", spans_of.len())
    } else {
        format!(
            "{TITLE}: process {} (Python {})",
            first.target.pid, first.target.python_version
        )
    };
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"17\">{}</text>",
        WIDTH / 2,
        xml_text(&title)
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"44\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
        WIDTH / 2,
        xml_text(&format!(
            "{:.2} s at {} Hz, {} samples; each pixel shows the state that filled most of its \
             {:.1} ms; shown: {}",
            (end - origin) as f64 / 1e9,
            first.sampler.rate_hz,
            samples,
            ns_per_px / 1e6,
            states.join(", ")
        ))
    );
    let mut x = LABELS;
    for &state in &options.states {
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"54\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" \
             y=\"65\">{}</text>",
            colour(state),
            x + 16,
            state.name()
        );
        x += 90;
    }
    // What a blank stretch means: a state not drawn (idle, by default), so that a reader
    // does not take the white for missing samples.
    let free_threaded = timed.iter().any(|r| r.target.free_threaded);
    let hidden: Vec<&str> = super::shown_states(free_threaded, false)
        .into_iter()
        .filter(|state| !options.states.contains(state))
        .map(|state| state.name())
        .collect();
    if !hidden.is_empty() {
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"54\" width=\"12\" height=\"12\" fill=\"#ffffff\" \
             stroke=\"#999\"/><text x=\"{}\" y=\"65\">blank: {}</text>",
            x + 16,
            hidden.join(", ")
        );
    }
    let mut columns = vec![[0u64; ThreadState::COUNT]; PLOT];
    let paths = super::labels::Paths::of(recordings);
    let mut process = 0;
    for (i, line) in lines.iter().enumerate() {
        let y = TOP + i * ROW;
        let (recording, row, thread) = match *line {
            Line::Process(recording) => {
                if i > 0 {
                    process += 1;
                }
                let label = super::collapsed::process_label(&recording.target);
                let _ = writeln!(
                    svg,
                    "<text x=\"8\" y=\"{}\" font-weight=\"bold\">{}</text>",
                    y + 13,
                    xml_text(&label)
                );
                continue;
            }
            Line::Thread(recording, row, thread) => (recording, row, thread),
        };
        if i % 2 == 1 {
            let _ = writeln!(
                svg,
                "<rect x=\"0\" y=\"{y}\" width=\"{WIDTH}\" height=\"{ROW}\" fill=\"#f4f4f4\"/>"
            );
        }
        let mut label = format!("{} ({})", thread.name(), thread.tid);
        if label.chars().count() > 34 {
            label = label.chars().take(33).collect::<String>() + "…";
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            LABELS - 8,
            y + 13,
            xml_text(&label)
        );
        let Some(spans) = spans_of[process].get(&row) else {
            continue;
        };
        for column in columns.iter_mut() {
            *column = [0; ThreadState::COUNT];
        }
        for span in spans {
            spread(span, origin, ns_per_px, &mut columns);
        }
        let spans: Vec<&Span> = spans.iter().collect();
        let row = Row {
            name: thread.name(),
            y,
            columns: &columns,
            spans: &spans,
            paths: &paths,
        };
        draw_row(
            &mut svg,
            &row,
            recording.stacks.as_ref(),
            options,
            origin,
            ns_per_px,
        );
    }
    axis(&mut svg, TOP + lines.len() * ROW + 4, end - origin);
    svg.push_str("</svg>\n");
    svg
}

/// Add a span's time to the pixel columns it covers.
fn spread(span: &Span, origin: u64, ns_per_px: f64, columns: &mut [[u64; ThreadState::COUNT]]) {
    let start = span.start_ns.saturating_sub(origin) as f64;
    let end = span.end_ns.saturating_sub(origin) as f64;
    if end <= start {
        // A one-sample run: give it the width of a sample's share of its pixel.
        let px = ((start / ns_per_px) as usize).min(columns.len() - 1);
        columns[px][span.state.index()] += 1;
        return;
    }
    let first = (start / ns_per_px) as usize;
    let last = ((end / ns_per_px) as usize).min(columns.len() - 1);
    for (px, column) in columns.iter_mut().enumerate().take(last + 1).skip(first) {
        let lo = start.max(px as f64 * ns_per_px);
        let hi = end.min((px + 1) as f64 * ns_per_px);
        if hi > lo {
            column[span.state.index()] += (hi - lo) as u64;
        }
    }
}

/// A thread's row to draw: its pixel columns' time per state, and its spans.
struct Row<'a> {
    name: &'a str,
    y: usize,
    columns: &'a [[u64; ThreadState::COUNT]],
    spans: &'a [&'a Span],
    paths: &'a super::labels::Paths,
}

/// One thread's row: runs of pixels whose dominant state is a shown one, with a tooltip
/// naming the innermost frame of the longest span under it.
fn draw_row(
    svg: &mut String,
    row: &Row,
    table: Option<&StackTable>,
    options: &RenderOptions,
    origin: u64,
    ns_per_px: f64,
) {
    let Row {
        name,
        y,
        columns,
        spans,
        ..
    } = *row;
    let dominant = |c: &[u64; ThreadState::COUNT]| -> Option<ThreadState> {
        // The most time; on a tie, the state listed first.
        let (index, &most) = c
            .iter()
            .enumerate()
            .max_by_key(|&(i, v)| (*v, ThreadState::COUNT - i))?;
        let state = ThreadState::ALL[index];
        (most > 0 && options.states.contains(&state)).then_some(state)
    };
    let mut px = 0;
    while px < columns.len() {
        let Some(state) = dominant(&columns[px]) else {
            px += 1;
            continue;
        };
        let start = px;
        while px < columns.len() && dominant(&columns[px]) == Some(state) {
            px += 1;
        }
        let t0 = origin + (start as f64 * ns_per_px) as u64;
        let t1 = origin + (px as f64 * ns_per_px) as u64;
        let mut tip = format!(
            "{name}: {} from {:.3} s to {:.3} s",
            state.name(),
            (t0 - origin) as f64 / 1e9,
            (t1 - origin) as f64 / 1e9
        );
        let longest = spans
            .iter()
            .filter(|s| s.state == state && s.end_ns >= t0 && s.start_ns <= t1)
            .max_by_key(|s| s.end_ns.min(t1).saturating_sub(s.start_ns.max(t0)));
        let place = longest
            .and_then(|s| s.stack)
            .zip(table)
            .and_then(|(id, table)| Some((table, table.place(id)?)));
        if let Some((table, place)) = place {
            let paths = row.paths;
            let _ = write!(
                tip,
                ", mostly in {}",
                super::labels::place(table, place, Some(paths))
            );
            let file = table
                .frame(place.frame)
                .filter(|f| f.kind == crate::stack::FrameKind::Python)
                .map_or("", |f| &*f.file);
            if paths.short(file) != file {
                let _ = write!(tip, " ({file})");
            }
        }
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{}</title></rect>",
            LABELS + start,
            y + 2,
            px - start,
            ROW - 4,
            colour(state),
            xml_text(&tip)
        );
    }
}

/// Time ticks under the rows, at 1, 2 or 5 times a power of ten seconds.
fn axis(svg: &mut String, y: usize, span_ns: u64) {
    let span_s = span_ns as f64 / 1e9;
    let rough = span_s / 10.0;
    let power = 10f64.powf(rough.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= rough)
        .unwrap_or(power * 10.0);
    let _ = writeln!(
        svg,
        "<line x1=\"{LABELS}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#888\"/>",
        LABELS + PLOT
    );
    let mut tick = 0.0;
    while tick <= span_s + 1e-9 && step > 0.0 {
        let x = LABELS + (tick / span_s * PLOT as f64) as usize;
        let _ = writeln!(
            svg,
            "<line x1=\"{x}\" y1=\"{y}\" x2=\"{x}\" y2=\"{}\" stroke=\"#888\"/><text x=\"{x}\" \
             y=\"{}\" text-anchor=\"middle\" fill=\"#555\">{} s</text>",
            y + 5,
            y + 18,
            format_seconds(tick, step)
        );
        tick += step;
    }
}

fn format_seconds(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{value:.decimals$}")
}

/// This format, for [`super::Format::report`].
pub struct TimelineSvg;

impl super::Report for TimelineSvg {
    fn one(&self, recording: &Recording, options: &RenderOptions) -> Vec<u8> {
        render(recording, options).into_bytes()
    }

    fn several(&self, recordings: &[Recording], options: &RenderOptions) -> Vec<u8> {
        render_processes(recordings, options).into_bytes()
    }
}
