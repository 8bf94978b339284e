//! The live view of `gilscope top`: the moving averages of model/live.rs shown on a screen
//! or as one plain line per second. Never reads the target.

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::printable;
use crate::model::live::*;
use crate::model::TargetInfo;
use crate::sample::ThreadState;
use crate::stack::{Frame, FrameKind};

/// Width of a percentage column ("100.0%" and a space).
const COLUMN: usize = 7;
const TID_COLUMN: usize = 7;
const MIN_NAME: usize = 12;
const MAX_NAME: usize = 24;

/// A GIL figure, or "n/a" where there was no GIL.
fn gil_figure(figures: &ProcessFigures, text: String) -> String {
    if figures.no_gil {
        super::UNAVAILABLE.to_string()
    } else {
        text
    }
}

/// Most GILs `top` gives a line of their own; the rest are counted.
const MAX_GIL_LINES: usize = 6;

fn gil_label(gil: &GilFigures) -> String {
    let ids: Vec<String> = gil
        .interpreters
        .iter()
        .map(|id| id.map_or_else(|| "?".to_string(), |id| id.to_string()))
        .collect();
    format!(
        "{} GIL, interpreter{} {}",
        if gil.own { "own" } else { "main" },
        if ids.len() == 1 { "" } else { "s" },
        ids.join(" ")
    )
}

/// The state threads are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortBy {
    Hold,
    Wait,
}

impl SortBy {
    fn state(self) -> ThreadState {
        match self {
            SortBy::Hold => ThreadState::Hold,
            SortBy::Wait => ThreadState::Wait,
        }
    }
}

/// What the user chose to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewState {
    pub sort: SortBy,
    pub show_idle: bool,
    /// Stacks are read (no --gil-only).
    pub stacks: bool,
}

/// The rows to show, in order, and how many idle threads were left out.
fn visible_rows(history: &History, view: &ViewState) -> (Vec<ThreadRow>, usize) {
    let steady = steady_index();
    let state = view.sort.state();
    let mut rows = history.threads();
    let all = rows.len();
    if !view.show_idle {
        rows.retain(|r| !r.is_idle());
    }
    let hidden = all - rows.len();
    rows.sort_by(|a, b| {
        b.fraction(steady, state)
            .total_cmp(&a.fraction(steady, state))
            .then(a.tid.cmp(&b.tid))
    });
    (rows, hidden)
}

fn percent(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

fn window_label(history: &History, n: usize) -> String {
    format!("{} s", history.covered(n).max(1))
}

fn blame_text(history: &History, view: &ViewState, target: &TargetInfo) -> String {
    let wait_measured = target.wait_measured;
    let paths = super::labels::Paths::new(target.sys_path.iter().map(String::as_str));
    let label = window_label(history, STEADY);
    if !wait_measured {
        return format!("waited on: {}", super::UNAVAILABLE);
    }
    if !view.stacks {
        return "waited on: stacks are not read (--gil-only)".to_string();
    }
    match history.top_blame(STEADY) {
        Some(b) => format!(
            "waited on most (last {label}): {} in {}, {} of waiting",
            b.holder,
            location(b.frame.as_ref(), b.caller.as_ref(), &paths, true),
            percent(b.share)
        ),
        None => format!("waited on most (last {label}): nobody waited for the GIL"),
    }
}

/// Where a holder was, as "function (file:line)", or for native code "symbol (module) called
/// from function (file:line)", a file named from its `sys.path` entry; `short`, a Python file
/// under none keeps its last two path components, which is what fits on a screen line.
fn location(
    frame: Option<&Frame>,
    caller: Option<&Frame>,
    paths: &super::labels::Paths,
    short: bool,
) -> String {
    let Some(frame) = frame else {
        return "(stack not captured)".into();
    };
    let one = |frame: &Frame| {
        let named = super::labels::short(frame, paths);
        let python = frame.kind == FrameKind::Python;
        if !short || !python || frame.file.is_empty() || paths.short(&frame.file) != &*frame.file {
            return named;
        }
        let parts: Vec<&str> = frame.file.rsplitn(3, '/').collect();
        let file = if parts.len() == 3 {
            format!(".../{}/{}", parts[1], parts[0])
        } else {
            frame.file.to_string()
        };
        format!("{} ({}:{})", frame.function, file, frame.line)
    };
    match caller {
        Some(caller) => format!("{} called from {}", one(frame), one(caller)),
        None => one(frame),
    }
}

/// `text` cut to at most `width` terminal columns.
fn fit(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            break;
        }
        used += w;
        out.push(c);
    }
    out
}

/// `text` cut or padded to exactly `width` terminal columns.
fn pad(text: &str, width: usize) -> String {
    let mut out = fit(text, width);
    let used = out.width();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(used)));
    out
}

/// "N idle thread(s)".
fn idle_threads(n: usize) -> String {
    format!("{n} idle thread{}", if n == 1 { "" } else { "s" })
}

/// The first line: what is being watched, for how long, and how well; the longest of its
/// forms that fits `width`, so that a narrow terminal still shows the whole of one.
fn title(
    watched: &str,
    rate_hz: f64,
    samples: u64,
    elapsed_s: f64,
    warning: &str,
    width: usize,
) -> String {
    let secs = elapsed_s.max(0.0) as u64;
    let clock = format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let forms = [
        format!(
            "gilscope top - {watched} - {clock} - {samples} samples in the last second at \
             {rate_hz} Hz{warning}"
        ),
        format!("gilscope top - {watched} - {clock} - {samples}/s at {rate_hz} Hz{warning}"),
        format!("{watched} - {clock} - {samples}/s at {rate_hz} Hz{warning}"),
        format!("{watched} - {clock}"),
    ];
    let last = forms.len() - 1;
    forms
        .into_iter()
        .enumerate()
        .find(|(i, form)| form.width() <= width || *i == last)
        .map(|(_, form)| form)
        .unwrap_or_default()
}

/// A warning when the hypervisor took enough of the last second to make its figures less
/// exact than stated (docs/ACCURACY.md), and when `--switch-sites` was asked for and is not
/// in effect (docs/ACCURACY.md, point 11).
fn steal_warning(history: &History) -> String {
    let mut warning = match history.latest_host_steal() {
        Some(steal) if steal > crate::model::STEAL_WARNING => {
            format!(" - host steal {}: figures less exact", percent(steal))
        }
        _ => String::new(),
    };
    if let Some(crate::model::SwitchSites::Unavailable(why)) = history.latest_switch_sites() {
        warning.push_str(&format!(" - without switch sites ({why})"));
    }
    warning
}

/// The whole screen, `height` lines of at most `width` columns each.
pub fn screen(
    target: &TargetInfo,
    rate_hz: f64,
    elapsed_s: f64,
    history: &History,
    view: &ViewState,
    width: usize,
    height: usize,
) -> Vec<String> {
    let mut lines = vec![
        title(
            &format!(
                "pid {} - Python {}",
                super::id_with_namespace(target.pid, target.ns_pid),
                target.python_version
            ),
            rate_hz,
            history.process(1).samples,
            elapsed_s,
            &steal_warning(history),
            width,
        ),
        format!(
            "keys: q quit  h sort by hold  w sort by wait  i {} idle threads",
            if view.show_idle { "hide" } else { "show" }
        ),
        String::new(),
    ];
    if history.is_empty() {
        lines.push("measuring the first second...".into());
        return finish(lines, width, height);
    }
    let windows: Vec<ProcessFigures> = WINDOWS.iter().map(|&n| history.process(n)).collect();
    let steady = history.process(STEADY);
    let mut head = format!("{:<13}", if steady.no_gil { "no GIL" } else { "GIL" });
    let mut held = format!("{:<13}", "  held");
    let mut contended = format!("{:<13}", "  contended");
    let mut switches = format!("{:<13}", "  switches/s");
    for (&n, figures) in WINDOWS.iter().zip(&windows) {
        head.push_str(&format!("{:>9}", window_label(history, n)));
        held.push_str(&format!(
            "{:>9}",
            gil_figure(figures, percent(figures.held))
        ));
        contended.push_str(&format!(
            "{:>9}",
            gil_figure(
                figures,
                wait_figure(percent(figures.contended), target.wait_measured)
            )
        ));
        switches.push_str(&format!(
            "{:>9}",
            gil_figure(
                figures,
                figures
                    .switches_per_s
                    .map(|s| format!("{s:.0}"))
                    .unwrap_or_else(|| "-".into())
            )
        ));
    }
    lines.extend([head, held, contended, switches, String::new()]);
    let gils = history.gils(STEADY);
    if !gils.is_empty() {
        lines.push(format!(
            "{:<34}{:>9}{:>11}",
            format!(
                "{} GILs, over the last {}",
                gils.len(),
                window_label(history, STEADY)
            ),
            "held",
            "contended"
        ));
        for gil in gils.iter().take(MAX_GIL_LINES) {
            lines.push(format!(
                "  {:<32}{:>9}{:>11}",
                gil_label(gil),
                percent(gil.held),
                wait_figure(percent(gil.contended), target.wait_measured)
            ));
        }
        if gils.len() > MAX_GIL_LINES {
            lines.push(format!("  ... {} more GILs", gils.len() - MAX_GIL_LINES));
        }
        lines.push(String::new());
    }
    if steady.no_gil {
        lines.push(
            "no GIL: free-threaded build running without one; ATTACHED = running Python".into(),
        );
    } else {
        lines.push(printable(&blame_text(history, view, target)));
    }
    lines.push(String::new());

    let (rows, hidden) = visible_rows(history, view);
    let (groups, name_width) = plan_columns(history, width);
    lines.extend(column_heads(&groups, name_width));
    // On a short terminal, the keys line, the blank lines and the line over the column
    // names make room for threads.
    let wanted = lines.len() + rows.len().min(3) + 1;
    if height < wanted {
        let over = lines.len() - 2;
        lines = lines
            .into_iter()
            .enumerate()
            .filter(|(i, l)| *i != 1 && *i != over && !l.is_empty())
            .map(|(_, l)| l)
            .collect();
    }
    let footer = {
        let mut parts = vec![format!(
            "sorted by {} over the last {}",
            view.sort.state().name(),
            window_label(history, STEADY)
        )];
        if hidden > 0 {
            parts.push(format!("{} hidden (i shows them)", idle_threads(hidden)));
        }
        parts.join("; ")
    };
    let room = height.saturating_sub(lines.len() + 1);
    let shown = if rows.len() > room {
        room.saturating_sub(1)
    } else {
        rows.len()
    };
    for row in &rows[..shown] {
        lines.push(row_line(row, &groups, name_width, target.wait_measured));
    }
    if shown < rows.len() {
        lines.push(format!("... {} more threads", rows.len() - shown));
    }
    lines.push(footer);
    finish(lines, width, height)
}

/// A wait figure, or "n/a" where waits are not measured.
fn wait_figure(text: String, wait_measured: bool) -> String {
    if wait_measured {
        text
    } else {
        super::UNAVAILABLE.to_string()
    }
}

/// A thread's line of the table.
fn row_line(row: &ThreadRow, groups: &[Group], name_width: usize, wait_measured: bool) -> String {
    let mut line = format!(
        "{:>TID_COLUMN$} {}",
        row.tid,
        pad(&printable(&row.name), name_width)
    );
    for group in groups {
        line.push_str("  ");
        for column in &group.columns {
            let share = percent(row.fraction(column.window, column.state));
            let figure = match column.state {
                ThreadState::Wait => wait_figure(share, wait_measured),
                _ => share,
            };
            line.push_str(&format!("{figure:>COLUMN$}"));
        }
    }
    line
}

/// The column headings over the thread table: window titles, then state names.
fn column_heads(groups: &[Group], name_width: usize) -> [String; 2] {
    let mut over = format!("{:>w$}", "", w = TID_COLUMN + 1 + name_width);
    let mut columns = format!("{:>TID_COLUMN$} {}", "TID", pad("NAME", name_width));
    for group in groups {
        over.push_str(&format!(
            "  {:>w$}",
            group.title,
            w = group.columns.len() * COLUMN
        ));
        columns.push_str("  ");
        for column in &group.columns {
            columns.push_str(&format!("{:>COLUMN$}", column.label));
        }
    }
    [over, columns]
}

/// The screen of several processes (`top --subprocesses`): one thread table, each process's
/// threads under a line with its pid, command and GIL figures; the processes whose GIL was
/// held most over the steady window first.
pub fn screen_processes(
    root: i32,
    processes: &[(&TargetInfo, &History)],
    rate_hz: f64,
    elapsed_s: f64,
    view: &ViewState,
    width: usize,
    height: usize,
) -> Vec<String> {
    let samples: u64 = processes.iter().map(|(_, h)| h.process(1).samples).sum();
    let mut lines = vec![
        title(
            &format!(
                "pid {root} and below: {} Python process{}",
                processes.len(),
                if processes.len() == 1 { "" } else { "es" },
            ),
            rate_hz,
            samples,
            elapsed_s,
            "",
            width,
        ),
        format!(
            "keys: q quit  h sort by hold  w sort by wait  i {} idle threads",
            if view.show_idle { "hide" } else { "show" }
        ),
        String::new(),
    ];
    let longest = processes
        .iter()
        .map(|(_, h)| *h)
        .max_by_key(|h| h.covered(STEADY));
    let Some(longest) = longest.filter(|h| !h.is_empty()) else {
        lines.push("measuring the first second...".into());
        return finish(lines, width, height);
    };
    let (groups, name_width) = plan_columns(longest, width);
    lines.extend(column_heads(&groups, name_width));
    let mut order: Vec<&(&TargetInfo, &History)> = processes.iter().collect();
    order.sort_by(|a, b| {
        let held = |h: &History| h.process(STEADY).held;
        held(b.1).total_cmp(&held(a.1)).then(a.0.pid.cmp(&b.0.pid))
    });
    let mut body = Vec::new();
    let mut hidden_threads = 0;
    for (target, history) in order {
        let figures = history.process(STEADY);
        body.push(format!(
            "pid {} - Python {} - held {} contended {} switches {}/s over {} - {}",
            super::id_with_namespace(target.pid, target.ns_pid),
            target.python_version,
            gil_figure(&figures, percent(figures.held)),
            gil_figure(
                &figures,
                wait_figure(percent(figures.contended), target.wait_measured)
            ),
            gil_figure(
                &figures,
                figures
                    .switches_per_s
                    .map(|s| format!("{s:.0}"))
                    .unwrap_or_else(|| "-".into())
            ),
            window_label(history, STEADY),
            printable(&target.command_line)
        ));
        let (rows, hidden) = visible_rows(history, view);
        hidden_threads += hidden;
        body.extend(
            rows.iter()
                .map(|row| row_line(row, &groups, name_width, target.wait_measured)),
        );
    }
    let mut footer = format!(
        "sorted by {} over the last {}",
        view.sort.state().name(),
        window_label(longest, STEADY)
    );
    if hidden_threads > 0 {
        footer.push_str(&format!(
            "; {} hidden (i shows them)",
            idle_threads(hidden_threads)
        ));
    }
    let room = height.saturating_sub(lines.len() + 1);
    if body.len() > room {
        let cut = body.len() - room.saturating_sub(1);
        body.truncate(room.saturating_sub(1));
        body.push(format!("... {cut} more lines"));
    }
    lines.extend(body);
    lines.push(footer);
    finish(lines, width, height)
}

/// One figure column of the thread table.
struct Column {
    state: ThreadState,
    /// Index into `WINDOWS`.
    window: usize,
    label: String,
}

/// Columns under one title.
struct Group {
    title: String,
    columns: Vec<Column>,
}

fn state_label(state: ThreadState) -> String {
    match state {
        ThreadState::Running => "RUN".into(),
        ThreadState::Attached => "ATTACH".into(),
        ThreadState::Suspended => "SUSP".into(),
        other => other.name().to_uppercase(),
    }
}

/// The line of column names with each state's name in its colour (the palette every
/// picture uses), for a terminal; any other line as it is. The colours add no width.
pub fn coloured(line: &str) -> String {
    let heads = line.trim_start().starts_with("TID ");
    if !heads {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len() + 64);
    let mut rest = line;
    while !rest.is_empty() {
        let word_end = rest.find(' ').unwrap_or(rest.len());
        let (word, after) = rest.split_at(word_end);
        match ThreadState::ALL.iter().find(|&&s| state_label(s) == word) {
            Some(&state) => {
                out.push_str(&super::palette::ansi_foreground(state));
                out.push_str(word);
                out.push_str(super::palette::ANSI_RESET);
            }
            None => out.push_str(word),
        }
        let spaces = after.len() - after.trim_start_matches(' ').len();
        out.push_str(&after[..spaces]);
        rest = &after[spaces..];
    }
    out
}

/// The richest thread table that fits `width` with a readable name, and the name's width:
/// every state over every window; else every state over the last second and hold and wait
/// over the longer windows; else every state over the last second.
fn plan_columns(history: &History, width: usize) -> (Vec<Group>, usize) {
    let whole = history.process(usize::MAX);
    let states = super::shown_states(whole.free_threaded, whole.no_gil);
    let last_second = || Group {
        title: format!("last {}", window_label(history, 1)),
        columns: states
            .iter()
            .map(|&state| Column {
                state,
                window: 0,
                label: state_label(state),
            })
            .collect(),
    };
    let windows = |state: ThreadState, from: usize| Group {
        title: state_label(state).to_lowercase(),
        columns: (from..WINDOWS.len())
            .map(|window| Column {
                state,
                window,
                label: window_label(history, WINDOWS[window]),
            })
            .collect(),
    };
    let every: Vec<Group> = states.iter().map(|&s| windows(s, 0)).collect();
    let mut some = vec![last_second()];
    // Hold and wait, or without a GIL attached and running.
    some.extend([states[0], states[1]].map(|s| windows(s, 1)));
    let needed = |groups: &[Group]| {
        TID_COLUMN
            + 1
            + groups
                .iter()
                .map(|g| 2 + g.columns.len() * COLUMN)
                .sum::<usize>()
    };
    for groups in [every, some, vec![last_second()]] {
        let fixed = needed(&groups);
        if width >= fixed + MIN_NAME {
            return (groups, (width - fixed).min(MAX_NAME));
        }
    }
    let groups = vec![last_second()];
    (groups, MIN_NAME)
}

fn finish(mut lines: Vec<String>, width: usize, height: usize) -> Vec<String> {
    lines.truncate(height);
    lines.iter().map(|l| fit(l, width)).collect()
}

/// One plain line of the last second's figures (for a pipe).
pub fn plain_line(
    elapsed_s: f64,
    history: &History,
    view: &ViewState,
    wait_measured: bool,
) -> String {
    let p = history.process(1);
    let mut line = format!(
        "{elapsed_s:.1} s: {}held {} contended {} switches {}/s samples {}",
        if p.no_gil { "no GIL: " } else { "" },
        gil_figure(&p, percent(p.held)),
        gil_figure(&p, wait_figure(percent(p.contended), wait_measured)),
        gil_figure(
            &p,
            p.switches_per_s
                .map(|s| format!("{s:.0}"))
                .unwrap_or_else(|| "-".into())
        ),
        p.samples
    );
    for gil in history.gils(1) {
        line.push_str(&format!(
            " | {} held {} contended {}",
            gil_label(&gil),
            percent(gil.held),
            wait_figure(percent(gil.contended), wait_measured)
        ));
    }
    if view.stacks {
        if let Some(b) = history.top_blame(1) {
            line.push_str(&format!(
                "; waited on {} in {} ({})",
                b.holder,
                location(
                    b.frame.as_ref(),
                    b.caller.as_ref(),
                    &super::labels::Paths::default(),
                    false
                ),
                percent(b.share)
            ));
        }
    }
    let (rows, hidden) = visible_rows(history, view);
    for row in rows {
        line.push_str(&format!(" | {} ({})", row.name, row.tid));
        for state in super::shown_states(p.free_threaded, p.no_gil) {
            let share = percent(row.fraction(0, state));
            let figure = match state {
                ThreadState::Wait => wait_figure(share, wait_measured),
                _ => share,
            };
            line.push_str(&format!(" {} {figure}", state.name()));
        }
    }
    if hidden > 0 {
        line.push_str(&format!(" | {}", idle_threads(hidden)));
    }
    line.push_str(&steal_warning(history).replace(" - ", " | "));
    printable(&line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::profile::GilTicks;
    use std::sync::Arc;

    fn thread(tid: i32, thread_id: u64, name: &str, counts: [u64; 4]) -> ThreadSlice {
        let mut all = [0; ThreadState::COUNT];
        all[..4].copy_from_slice(&counts);
        ThreadSlice {
            tid,
            thread_id: Some(thread_id),
            name: name.into(),
            counts: all,
        }
    }

    /// Second `i` of a recording at 1000 Hz: `held` ticks held, switch counter at `switches`.
    fn slice(i: u64, held: u64, switches: u64, threads: Vec<ThreadSlice>) -> Slice {
        let start = i * 1_000_000_000;
        let end = start + 999_000_000;
        Slice {
            start_ns: start,
            end_ns: end,
            gil: GilTicks {
                ticks: 1000,
                held,
                contended: held / 2,
                waiters: held / 2,
                ..GilTicks::default()
            },
            switches: Some(((start, switches), (end, switches + 100))),
            threads,
            blame: Vec::new(),
            host_steal: Some(0.0),
            gils: Vec::new(),
            switch_sites: None,
        }
    }

    fn target() -> TargetInfo {
        TargetInfo {
            pid: 42,
            ns_pid: None,
            python_version: crate::python::version::Version::new(3, 12, 1),
            binary: String::new(),
            command_line: String::new(),
            layout: crate::model::LayoutInfo::default(),
            wait_measured: true,
            free_threaded: false,
            sys_path: Vec::new(),
        }
    }

    #[test]
    fn windows_average_over_the_seconds_they_cover() {
        let mut history = History::new();
        for i in 0..12 {
            // Held all of the last two seconds, none before.
            let held = if i >= 10 { 1000 } else { 0 };
            history.push(slice(i, held, i * 1000, vec![]));
        }
        assert_eq!(history.process(1).held, 1.0);
        assert!((history.process(10).held - 0.2).abs() < 1e-9);
        assert!((history.process(60).held - 2.0 / 12.0).abs() < 1e-9);
        assert_eq!(history.covered(60), 12);
        // Switches counted across slice borders: from second 10's last reading (10100) to
        // second 11's (11100) in 1.0 s.
        let rate = history.process(1).switches_per_s.unwrap();
        assert!((rate - 1000.0).abs() < 1e-6, "{rate}");
    }

    #[test]
    fn a_minute_is_kept_and_no_more() {
        let mut history = History::new();
        for i in 0..75 {
            history.push(slice(i, 500, i * 1000, vec![]));
        }
        assert_eq!(history.covered(1000), 60);
        // Seconds 15-74 are kept: the oldest switch reading is second 15's.
        let first = history.window(60).next().unwrap();
        assert_eq!(first.start_ns, 15_000_000_000);
    }

    #[test]
    fn a_reused_tid_is_a_new_thread() {
        let mut history = History::new();
        history.push(slice(0, 0, 0, vec![thread(7, 1, "old", [1000, 0, 0, 0])]));
        history.push(slice(1, 0, 0, vec![thread(7, 2, "new", [0, 1000, 0, 0])]));
        let rows = history.threads();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, "new");
        assert_eq!(rows[0].fraction(1, ThreadState::Hold), 0.0);
        assert_eq!(rows[0].fraction(1, ThreadState::Wait), 1.0);
    }

    #[test]
    fn the_title_keeps_a_whole_form_on_a_narrow_terminal() {
        let watched = "pid 4194304 - Python 3.12.1";
        for width in [200, 80, 60, 40] {
            let line = title(watched, 1000.0, 996, 42.0, "", width);
            assert!(line.width() <= width.max(40), "{width}: {line}");
            assert!(
                line.contains("pid 4194304") && line.contains("0:00:42"),
                "{line}"
            );
        }
        assert!(title(watched, 1000.0, 996, 42.0, "", 80).ends_with("at 1000 Hz"));
    }

    #[test]
    fn top_blame_sums_each_holders_code_over_the_window() {
        let frame = |function: &str, line| {
            Frame::python(
                Arc::from(function),
                Arc::from("/srv/app/handlers/parse.py"),
                line,
            )
        };
        let mut history = History::new();
        for (i, (f, ticks)) in [("parse", 300), ("render", 200), ("render", 200)]
            .into_iter()
            .enumerate()
        {
            let mut s = slice(i as u64, 1000, 0, vec![]);
            s.gil.waiters = 1000;
            s.blame = vec![BlameSlice {
                holder: "worker (9)".into(),
                frame: Some(frame(f, 40)),
                caller: None,
                waiter_ticks: ticks,
            }];
            history.push(s);
        }
        let top = history.top_blame(STEADY).unwrap();
        assert_eq!(top.frame.unwrap().function.as_ref(), "render");
        assert!((top.share - 400.0 / 3000.0).abs() < 1e-9);
        // Over the last second only, the same.
        assert!((history.top_blame(1).unwrap().share - 0.2).abs() < 1e-9);
        let view = ViewState {
            sort: SortBy::Hold,
            show_idle: false,
            stacks: true,
        };
        let text = blame_text(&history, &view, &target());
        assert!(
            text.contains("worker (9) in render (.../handlers/parse.py:40)"),
            "{text}"
        );
    }

    fn busy_history() -> History {
        let mut history = History::new();
        for i in 0..3 {
            history.push(slice(
                i,
                990,
                0,
                vec![
                    thread(10, 1, "MainThread", [0, 0, 0, 1000]),
                    thread(11, 2, "holder", [900, 100, 0, 0]),
                    thread(12, 3, "waiter-计算", [90, 900, 10, 0]),
                ],
            ));
        }
        history
    }

    fn row_tids(lines: &[String]) -> Vec<i32> {
        lines
            .iter()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    #[test]
    fn rows_follow_the_sort_and_the_idle_switch() {
        let history = busy_history();
        let mut view = ViewState {
            sort: SortBy::Hold,
            show_idle: false,
            stacks: true,
        };
        let lines = screen(&target(), 1000.0, 3.0, &history, &view, 100, 40);
        assert_eq!(row_tids(&lines), vec![11, 12]);
        assert!(lines.iter().any(|l| l.contains("1 idle thread hidden")));
        view.sort = SortBy::Wait;
        view.show_idle = true;
        let lines = screen(&target(), 1000.0, 3.0, &history, &view, 100, 40);
        assert_eq!(row_tids(&lines), vec![12, 11, 10]);
        assert!(!lines.iter().any(|l| l.contains("hidden")));
        let plain = plain_line(3.0, &history, &view, true);
        assert!(
            plain.contains("| waiter-计算 (12) hold 9.0% wait 90.0% running 1.0% idle 0.0% |"),
            "{plain}"
        );
    }

    #[test]
    fn each_gil_of_a_process_with_several_gets_its_figures() {
        let gil = |base: u64, ids: &[i64], own: bool, held: u64, contended: u64| GilSlice {
            base,
            interpreters: ids.iter().map(|&i| Some(i)).collect(),
            own,
            ticks: GilTicks {
                ticks: 1000,
                held,
                contended,
                ..GilTicks::default()
            },
        };
        let mut history = History::new();
        for i in 0..10 {
            let mut s = slice(
                i,
                500,
                i * 100,
                vec![thread(11, 1, "main", [500, 0, 0, 500])],
            );
            // The subinterpreter's GIL is held all through the second half only.
            let own_held = if i >= 5 { 1000 } else { 0 };
            s.gils = vec![
                gil(0x1000, &[0, 2], false, 500, 250),
                gil(0x2000, &[1], true, own_held, 0),
            ];
            history.push(s);
        }
        let gils = history.gils(10);
        assert_eq!(gils.len(), 2);
        assert_eq!(gil_label(&gils[0]), "main GIL, interpreters 0 2");
        assert_eq!((gils[0].held, gils[0].contended), (0.5, 0.25));
        assert_eq!(gil_label(&gils[1]), "own GIL, interpreter 1");
        assert_eq!(gils[1].held, 0.5);
        assert_eq!(history.gils(1)[1].held, 1.0);
        let view = ViewState {
            sort: SortBy::Hold,
            show_idle: true,
            stacks: false,
        };
        let lines = screen(&target(), 1000.0, 10.0, &history, &view, 100, 30);
        let line = |label: &str| {
            lines
                .iter()
                .find(|l| l.contains(label))
                .unwrap_or_else(|| panic!("no {label} in {lines:?}"))
                .clone()
        };
        assert!(line("2 GILs, over the last 10 s").contains("contended"));
        let own = line("own GIL, interpreter 1");
        assert_eq!(
            own.split_whitespace().rev().take(2).collect::<Vec<_>>(),
            ["0.0%", "50.0%"]
        );
        let plain = plain_line(10.0, &history, &view, true);
        assert!(
            plain.contains("| own GIL, interpreter 1 held 100.0% contended 0.0%"),
            "{plain}"
        );
        // One GIL: no GIL lines.
        let mut single = History::new();
        single.push(slice(0, 500, 0, vec![]));
        assert!(single.gils(10).is_empty());
        let lines = screen(&target(), 1000.0, 1.0, &single, &view, 100, 30);
        assert!(!lines.iter().any(|l| l.contains("GILs, over")), "{lines:?}");
    }

    #[test]
    fn the_screen_fits_any_terminal() {
        let history = busy_history();
        let view = ViewState {
            sort: SortBy::Hold,
            show_idle: true,
            stacks: true,
        };
        for (width, height) in [(200, 60), (100, 30), (80, 24), (60, 12), (20, 5), (1, 1)] {
            let lines = screen(&target(), 1000.0, 3.0, &history, &view, width, height);
            assert!(lines.len() <= height, "{width}x{height}: {lines:?}");
            for line in &lines {
                assert!(line.width() <= width, "{width}x{height}: {line:?}");
            }
        }
        // Wide enough: the 10 s and 60 s columns; narrow: not.
        let wide = screen(&target(), 1000.0, 3.0, &history, &view, 100, 30);
        let narrow = screen(&target(), 1000.0, 3.0, &history, &view, 60, 30);
        let header = |lines: &[String]| lines.iter().find(|l| l.contains("TID")).cloned();
        assert!(header(&wide).unwrap().trim_end().ends_with("3 s"));
        // Wider still: every state over every window.
        let widest = screen(&target(), 1000.0, 3.0, &history, &view, 200, 30);
        let labels = header(&widest).unwrap().matches(" s").count();
        assert_eq!(labels, 12, "{widest:?}");
        let row = widest
            .iter()
            .find(|l| l.trim_start().starts_with("11 "))
            .unwrap();
        assert_eq!(row.matches('%').count(), 12, "{row}");
        assert!(header(&narrow).unwrap().trim_end().ends_with("IDLE"));
        // Short: every thread still shown, the decoration goes.
        let short = screen(&target(), 1000.0, 3.0, &history, &view, 100, 14);
        assert_eq!(row_tids(&short).len(), 3, "{short:?}");
        // The wide name is padded by its display width: the figures line up.
        let rows: Vec<&String> = wide
            .iter()
            .filter(|l| l.trim_start().starts_with("1"))
            .collect();
        assert_eq!(rows.len(), 3);
        let ends: Vec<usize> = rows.iter().map(|l| l.trim_end().width()).collect();
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{rows:?}");
    }

    #[test]
    fn names_from_the_target_cannot_move_the_cursor() {
        let mut history = History::new();
        history.push(slice(
            0,
            1000,
            0,
            vec![thread(5, 1, "evil\x1b[2J\r", [1000, 0, 0, 0])],
        ));
        let view = ViewState {
            sort: SortBy::Hold,
            show_idle: true,
            stacks: false,
        };
        let lines = screen(&target(), 1000.0, 1.0, &history, &view, 100, 30);
        assert!(lines
            .iter()
            .all(|l| !l.contains('\x1b') && !l.contains('\r')));
        assert!(!plain_line(1.0, &history, &view, true).contains('\x1b'));
    }

    #[test]
    fn state_names_in_the_column_heads_take_their_colours_and_nothing_else_does() {
        let heads = "    TID NAME            HOLD   WAIT    RUN   IDLE";
        let painted = coloured(heads);
        assert!(painted.contains(&format!(
            "{}HOLD{}",
            crate::formats::palette::ansi_foreground(ThreadState::Hold),
            crate::formats::palette::ANSI_RESET
        )));
        let plain: String = painted
            .split('\x1b')
            .enumerate()
            .map(|(i, part)| {
                if i == 0 {
                    part
                } else {
                    &part[part.find('m').unwrap() + 1..]
                }
            })
            .collect();
        assert_eq!(plain, heads);
        let row = "   4242 HOLD            50.0%";
        assert_eq!(coloured(row), row);
    }

    #[test]
    fn steal_is_warned_about() {
        let mut history = busy_history();
        let mut s = slice(3, 990, 0, vec![]);
        s.host_steal = Some(0.3);
        history.push(s);
        let view = ViewState {
            sort: SortBy::Hold,
            show_idle: false,
            stacks: true,
        };
        let lines = screen(&target(), 1000.0, 4.0, &history, &view, 200, 30);
        assert!(lines[0].contains("host steal 30.0%"), "{}", lines[0]);
        assert!(plain_line(4.0, &history, &view, true)
            .ends_with("| host steal 30.0%: figures less exact"));
    }

    #[test]
    fn switch_sites_not_in_effect_are_said_and_in_effect_are_not() {
        let view = ViewState {
            sort: SortBy::Hold,
            show_idle: false,
            stacks: true,
        };
        let mut history = busy_history();
        let mut s = slice(3, 990, 0, vec![]);
        s.switch_sites = Some(crate::model::SwitchSites::Perf);
        history.push(s);
        let lines = screen(&target(), 1000.0, 4.0, &history, &view, 200, 30);
        assert!(!lines[0].contains("switch sites"), "{}", lines[0]);
        let mut s = slice(4, 990, 0, vec![]);
        s.switch_sites = Some(crate::model::SwitchSites::Unavailable("no take_gil".into()));
        history.push(s);
        let lines = screen(&target(), 1000.0, 5.0, &history, &view, 200, 30);
        assert!(
            lines[0].ends_with(" - without switch sites (no take_gil)"),
            "{}",
            lines[0]
        );
        assert!(plain_line(5.0, &history, &view, true)
            .ends_with("| without switch sites (no take_gil)"));
    }
}
